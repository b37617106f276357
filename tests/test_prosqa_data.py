"""ProsQA generator: every structural rule of notes/prosqa.md, options, and statistics against the published splits."""

import json
import random
import re
from pathlib import Path

import pytest

from dataset_scripts.prosqa import (
    CONCEPTS,
    DEEP_OPTIONS,
    PERSONS,
    generate_prosqa,
    is_valid_path,
    main,
    make_prosqa_example,
    prosqa_statistics,
    shortest_paths,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "prosqa"
KEYS = {"question", "answer", "steps", "idx_to_symbol", "edges", "root", "target", "neg_target"}


def load_split(split):
    path = DATA_DIR / f"prosqa_{split}.json"
    if not path.exists():
        pytest.skip(f"published ProsQA split not found at {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def test_split():
    return load_split("test")


@pytest.fixture(scope="module")
def valid_split():
    return load_split("valid")


@pytest.fixture(scope="module")
def generated():
    return generate_prosqa(200, seed=0)


def reach(example, source):
    """Shortest distance from `source` to every node it reaches."""
    children = {}
    for parent, child in example["edges"]:
        children.setdefault(parent, []).append(child)
    distance, frontier = {source: 0}, [source]
    for node in frontier:
        for child in children.get(node, []):
            if child not in distance:
                distance[child] = distance[node] + 1
                frontier.append(child)
    return distance


def sentence(names, parent, child):
    subject = names[parent] if names[parent][0].isupper() else f"Every {names[parent]}"
    return f"{subject} is a {names[child]}."


def check_structure(example, path_lengths=(3, 6)):
    """Assert every invariant notes/prosqa.md states for the published examples."""
    assert set(example) == KEYS
    names, edges = example["idx_to_symbol"], example["edges"]
    root, target, neg = example["root"], example["target"], example["neg_target"]
    assert all(isinstance(example[key], str) for key in ("question", "answer"))
    assert all(isinstance(step, str) for step in example["steps"])
    assert all(isinstance(example[key], int) for key in ("root", "target", "neg_target"))
    assert all(isinstance(edge, list) and len(edge) == 2 and all(isinstance(i, int) for i in edge) for edge in edges)

    # Names: unique, persons capitalised from PERSONS, concepts from CONCEPTS.
    assert len(set(names)) == len(names)
    assert all(name in (PERSONS if name[0].isupper() else CONCEPTS) for name in names)

    # A DAG in creation order, edges sorted by child, no duplicates, no isolated node.
    assert all(parent < child for parent, child in edges)
    assert [child for _, child in edges] == sorted(child for _, child in edges)
    assert len({tuple(edge) for edge in edges}) == len(edges)
    assert {node for edge in edges for node in edge} == set(range(len(names)))
    has_parent = {child for _, child in edges}
    persons = [node for node in range(len(names)) if node not in has_parent]
    assert persons == [node for node, name in enumerate(names) if name[0].isupper()]
    assert persons[:2] == [0, 1]

    # Root, target and the wrong option.
    assert root in (0, 1)
    from_root, from_other = reach(example, root), reach(example, 1 - root)
    leaves = set(range(len(names))) - {parent for parent, _ in edges}
    own = [leaf for leaf in leaves if leaf in from_root and leaf not in from_other]
    theirs = [leaf for leaf in leaves if leaf in from_other and leaf not in from_root]
    assert target in own and neg in theirs
    assert from_root[target] == max(from_root[leaf] for leaf in own)
    assert max(from_other[leaf] for leaf in theirs) <= from_root[target]
    assert path_lengths[0] <= from_root[target] <= path_lengths[1]

    # Steps: one sentence per edge of a shortest root -> target path.
    path = [example["steps"][0].split()[0]] + [step.rstrip(".").split()[-1] for step in example["steps"]]
    nodes = [names.index(name) for name in path]
    assert nodes[0] == root and nodes[-1] == target and len(set(nodes)) == len(nodes)
    assert len(example["steps"]) == from_root[target]
    assert example["steps"] == [sentence(names, a, b) for a, b in zip(nodes, nodes[1:])]
    assert path[1:] in shortest_paths(example)
    assert example["answer"] == f"{names[root]} is a {names[target]}."

    # Question: every edge once as a sentence, single spaces, then the two options.
    parts = re.findall(r"[^.?]+[.?]", example["question"])
    assert " ".join(part.strip() for part in parts) == example["question"]
    statements, question = [part.strip() for part in parts[:-1]], parts[-1].strip()
    assert sorted(statements) == sorted(sentence(names, parent, child) for parent, child in edges)
    match = re.fullmatch(rf"Is {names[root]} a (\w+) or (\w+)\?", question)
    assert match and {match[1], match[2]} == {names[target], names[neg]}


def test_published_examples_follow_the_rules(test_split, valid_split):
    # The checker itself is right: the published examples pass it.
    for example in test_split + valid_split:
        check_structure(example)


def test_generated_examples_follow_the_rules(generated):
    for example in generated:
        check_structure(example)


def test_generated_json_round_trip(generated):
    assert json.loads(json.dumps(generated)) == generated


def test_deterministic_in_seed():
    assert generate_prosqa(20, seed=3) == generate_prosqa(20, seed=3)
    assert generate_prosqa(20, seed=3) != generate_prosqa(20, seed=4)
    rng_a, rng_b = random.Random(7), random.Random(7)
    assert make_prosqa_example(rng_a) == make_prosqa_example(rng_b)


def test_deep_option_gives_7_to_8_steps():
    for example in generate_prosqa(10, seed=1, **DEEP_OPTIONS):
        check_structure(example, path_lengths=(7, 8))


@pytest.mark.parametrize("path_lengths", [(1, 2), 1, 2])
def test_small_graphs(path_lengths):
    examples = generate_prosqa(50, seed=2, num_nodes=(4, 6), path_lengths=path_lengths)
    bounds = (path_lengths, path_lengths) if isinstance(path_lengths, int) else path_lengths
    for example in examples:
        check_structure(example, path_lengths=bounds)
        assert 4 <= len(example["idx_to_symbol"]) <= 6
    if path_lengths == (1, 2):
        assert {len(example["steps"]) for example in examples} == {1, 2}


@pytest.mark.parametrize(
    "options",
    [{"path_lengths": (0, 2)}, {"path_lengths": (5, 3)}, {"num_nodes": 3}, {"num_nodes": (6, 6), "path_lengths": 4},
     {"path_lengths": "3"}],
)
def test_bad_options_raise(options):
    with pytest.raises(ValueError):
        make_prosqa_example(random.Random(0), **options)


def test_statistics_match_published(test_split):
    ours, theirs = prosqa_statistics(generate_prosqa(1000, seed=0)), prosqa_statistics(test_split)
    assert abs(ours["nodes"]["mean"] - theirs["nodes"]["mean"]) < 1.5
    assert abs(ours["edges"]["mean"] - theirs["edges"]["mean"]) < 3
    assert abs(ours["words"]["mean"] - theirs["words"]["mean"]) < 15
    assert abs(ours["persons"] - theirs["persons"]) < 0.3
    assert abs(ours["distance"]["mean"] - theirs["distance"]["mean"]) < 0.25
    assert set(ours["distance_shares"]) == set(theirs["distance_shares"]) == {"3", "4", "5", "6"}
    for length, share in theirs["distance_shares"].items():
        assert abs(ours["distance_shares"][length] - share) < 0.08
    assert abs(ours["shortest_paths"]["mean"] - theirs["shortest_paths"]["mean"]) < 0.3
    assert abs(ours["root_out_degree"] - theirs["root_out_degree"]) < 0.4
    assert abs(ours["root_children_to_target"] - theirs["root_children_to_target"]) < 0.3
    assert abs(ours["reachable_from_root"] - theirs["reachable_from_root"]) < 1.5
    assert abs(ours["neg_distance"] - theirs["neg_distance"]) < 0.3
    assert abs(ours["target_in_degree"] - theirs["target_in_degree"]) < 0.3
    assert abs(ours["neg_target_in_degree"] - theirs["neg_target_in_degree"]) < 0.3
    assert abs(ours["root_is_1"] - theirs["root_is_1"]) < 0.08
    assert abs(ours["target_first"] - 0.5) < 0.06


def test_statistics_of_published_test_split(test_split):
    # Figures of notes/prosqa.md.
    stats = prosqa_statistics(test_split)
    assert stats["examples"] == 500
    assert round(stats["nodes"]["mean"], 2) == 22.80 and (stats["nodes"]["min"], stats["nodes"]["max"]) == (14, 28)
    assert round(stats["edges"]["mean"], 2) == 35.84 and (stats["edges"]["min"], stats["edges"]["max"]) == (16, 54)
    assert round(stats["words"]["mean"], 1) == 178.3
    assert round(stats["persons"], 2) == 2.58
    counts = {length: round(share * 500) for length, share in stats["distance_shares"].items()}
    assert counts == {"3": 202, "4": 217, "5": 69, "6": 12}
    assert round(stats["distance"]["mean"], 2) == 3.78
    assert round(stats["shortest_paths"]["mean"], 2) == 1.57 and stats["shortest_paths"]["max"] == 6
    assert round(stats["all_paths"]["mean"], 1) == 5.3 and stats["all_paths"]["max"] == 69
    assert round(stats["root_out_degree"], 2) == 2.96
    assert round(stats["root_children_to_target"], 2) == 1.77
    assert round(stats["reachable_from_root"], 1) == 12.4
    assert round(stats["neg_distance"], 2) == 2.13
    assert (round(stats["target_in_degree"], 2), round(stats["neg_target_in_degree"], 2)) == (1.47, 2.10)
    assert round(stats["target_first"] * 500) == 260 and round(stats["root_is_1"] * 500) == 314


def test_is_valid_path(test_split, generated):
    for example in test_split + generated:
        names = [step.rstrip(".").split()[-1] for step in example["steps"]]
        assert is_valid_path(example, names)
        assert all(is_valid_path(example, path) for path in shortest_paths(example))
        symbols = example["idx_to_symbol"]
        assert not is_valid_path(example, names[1:])  # does not start at a child of the root
        assert not is_valid_path(example, names[:-1])  # stops short of the target
        assert not is_valid_path(example, names[:-1] + [symbols[example["neg_target"]]])
        assert not is_valid_path(example, [])
        assert not is_valid_path(example, names[:-1] + ["notaword"])


def test_shortest_paths_lists_every_one():
    example = {  # root 0 -> {2, 3} -> 4 -> 5; two shortest paths and one longer one (0 -> 2 -> 3 -> 4 -> 5)
        "idx_to_symbol": ["Alex", "Bob", "a", "b", "c", "d", "e"],
        "edges": [[0, 2], [0, 3], [2, 3], [2, 4], [3, 4], [4, 5], [1, 6]],
        "root": 0, "target": 5, "neg_target": 6,
    }
    assert sorted(shortest_paths(example)) == [["a", "c", "d"], ["b", "c", "d"]]
    assert is_valid_path(example, ["a", "b", "c", "d"])  # valid, though not a shortest one


def test_cli_writes_a_json_list(tmp_path):
    out = tmp_path / "prosqa.json"
    main(["--out", str(out), "--n", "5", "--seed", "1", "--path_lengths", "1", "2", "--num_nodes", "4", "6"])
    examples = json.loads(out.read_text())
    assert examples == generate_prosqa(5, seed=1, path_lengths=(1, 2), num_nodes=(4, 6))
