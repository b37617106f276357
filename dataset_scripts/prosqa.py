"""ProsQA-style examples: random concept DAGs and "Is <person> a <A> or <B>?" questions.

ProsQA is the logical-reasoning benchmark of Coconut (Hao et al. 2024, arXiv 2412.06769). Only its valid and
test splits are public, so training data is generated here by a process whose output matches them
(``notes/prosqa.md`` lists the published figures, ``benchmarks/prosqa_data.py`` compares)::

    Every gerpus is a terpus. Sally is a boompus. ... Bob is a lempus. Is Sally a hilpus or sterpus?
    steps:  ["Sally is a scrompus.", "Every scrompus is a rempus.", "Every rempus is a sterpus."]
    answer: "Sally is a sterpus."

How a graph grows, node by node (the process, its probabilities and weights and the root rule were inferred from
the 800 published graphs, by likelihood and by matching their statistics):

1. Nodes 0 and 1 are the two persons a question can be about. Each new node draws a Poisson(1.5) number of
   parents among the earlier nodes: with probability 0.35 among the nodes only person 0 reaches, else with
   probability 0.7 among those only person 1 reaches, else among all nodes. Keeping most nodes on one side
   is what gives each person leaves the other cannot reach.
2. Parents are drawn without replacement with weight 1 + 1.5 d, d the candidate's distance from the nearest
   person, so chains grow deep.
3. A node that draws no parent is a new person. Only the "all nodes" draws can pick it, so most stay alone;
   those are dropped and the rest renumbered (28 grown nodes leave 14-28, 22.8 on average).
4. The root is whichever of persons 0 and 1 has the farther exclusive leaf (a leaf it reaches and the other
   does not; a random one on a tie), the target a random one of its farthest exclusive leaves, and the wrong
   option a uniform pick among the other person's exclusive leaves. Graphs with no such leaves, or whose
   shortest root -> target distance falls outside ``path_lengths``, are redrawn.

Examples are in the published JSON schema: ``question``, ``answer``, ``steps``, ``idx_to_symbol``, ``edges``
([parent, child] pairs sorted by child), ``root``, ``target`` and ``neg_target`` (node indices).

Run as a script to write a JSON list::

    python dataset_scripts/prosqa.py --out prosqa_train.json --n 20000 --seed 0
    python dataset_scripts/prosqa.py --out prosqa_deep.json --n 500 --seed 1 --path_lengths 7 8 --num_nodes 34 40
"""

import argparse
import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

CONCEPTS = (
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus", "grimpus",
    "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus", "numpus", "quimpus",
    "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus", "terpus", "timpus", "tumpus",
    "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus", "zhorpus", "zumpus",
)
PERSONS = (
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly", "Rex", "Sally",
    "Sam", "Stella", "Tom", "Wren",
)

NUM_NODES = 28  # nodes grown per published graph: the largest published count, none are over it
PATH_LENGTHS = (3, 6)  # shortest root -> target distance of every published example
# Deeper than published: 7-8 steps (about 86% of 7, the process's own mix). 28 grown nodes give them too, but
# rarely (33 ms per example); 34-40 grown nodes (23-38 kept, within the 38 concept names) take 13 ms.
DEEP_OPTIONS = {"path_lengths": (7, 8), "num_nodes": (34, 40)}

MEAN_PARENTS = 1.5  # Poisson mean of a new node's parent count
DEPTH_WEIGHT = 1.5  # a candidate parent at distance d from a person is drawn with weight 1 + 1.5 d
# Two separate draws choose the candidate parents, so person 1's side is picked with probability
# 0.65 * 0.7 = 0.455 against 0.35 for person 0's. The published data has that imbalance: about 1.3 times more
# nodes only person 1 reaches, and person 1 is the root in 63% of the examples.
SIDE_0_ONLY = 0.35
SIDE_1_ONLY = 0.7
MAX_TRIES = 10_000  # graphs drawn for one example before its options are declared impossible


# ---------------------------------------------------------------------------------------------------------
# Graph growth
# ---------------------------------------------------------------------------------------------------------


def _poisson(rng: random.Random, mean: float) -> int:
    """Draw a Poisson variate as Knuth does, by multiplying uniforms (fine for small means)."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _weighted_sample(rng: random.Random, items: list[int], weights: list[float], k: int) -> list[int]:
    """Draw ``k`` distinct items, each draw proportional to the weights of those left, in draw order."""
    items, weights = list(items), list(weights)
    chosen = []
    for _ in range(k):
        index = rng.choices(range(len(items)), weights=weights)[0]
        chosen.append(items.pop(index))
        weights.pop(index)
    return chosen


def _grow_graph(rng: random.Random, num_nodes: int) -> list[list[int]]:
    """Grow a DAG of ``num_nodes`` nodes in creation order (steps 1-2 of the module docstring).

    Returns each node's parents, in the order drawn. ``side[n]`` says which persons reach node ``n`` (bit 1:
    person 0, bit 2: person 1, 0: neither, only other persons) and ``depth[n]`` is its distance from the
    nearest person.
    """
    parents, side, depth = [[], []], [1, 2], [0, 0]
    for node in range(2, num_nodes):
        if rng.random() < SIDE_0_ONLY:
            allowed = (1,)
        elif rng.random() < SIDE_1_ONLY:
            allowed = (2,)
        else:
            allowed = (0, 1, 2, 3)
        candidates = [earlier for earlier in range(node) if side[earlier] in allowed]
        count = min(_poisson(rng, MEAN_PARENTS), len(candidates))
        weights = [1 + DEPTH_WEIGHT * depth[earlier] for earlier in candidates]
        chosen = _weighted_sample(rng, candidates, weights, count)
        parents.append(chosen)
        side.append(_union_of_sides(side, chosen))
        depth.append(1 + min(depth[parent] for parent in chosen) if chosen else 0)
    return parents


def _union_of_sides(side: list[int], chosen: list[int]) -> int:
    """The persons reaching a node are those reaching any of its parents."""
    result = 0
    for parent in chosen:
        result |= side[parent]
    return result


def _drop_lonely_persons(parents: list[list[int]]) -> list[list[int]] | None:
    """Drop the persons after 0 and 1 that have no child and renumber (step 3 of the module docstring).

    Returns the parents of the kept nodes, or None when person 0 or 1 has no child (no question possible).
    """
    has_child = {parent for chosen in parents for parent in chosen}
    if 0 not in has_child or 1 not in has_child:
        return None
    kept = [node for node, chosen in enumerate(parents) if chosen or node in has_child]
    new_index = {old: new for new, old in enumerate(kept)}
    return [[new_index[parent] for parent in parents[old]] for old in kept]


# ---------------------------------------------------------------------------------------------------------
# Graph queries, on child lists (so they serve grown graphs and JSON examples alike)
# ---------------------------------------------------------------------------------------------------------


def _children_lists(num_nodes: int, edges) -> list[list[int]]:
    """Children of every node, from [parent, child] pairs."""
    children = [[] for _ in range(num_nodes)]
    for parent, child in edges:
        children[parent].append(child)
    return children


def _reverse(children: list[list[int]]) -> list[list[int]]:
    """Parent lists from child lists."""
    parents = [[] for _ in children]
    for parent, kids in enumerate(children):
        for child in kids:
            parents[child].append(parent)
    return parents


def _distances(children: list[list[int]], source: int) -> dict[int, int]:
    """Shortest distance (in edges) from ``source`` to every node it reaches, itself included."""
    distance, frontier = {source: 0}, [source]
    for node in frontier:  # breadth first: `frontier` grows while it is read
        for child in children[node]:
            if child not in distance:
                distance[child] = distance[node] + 1
                frontier.append(child)
    return distance


def _shortest_index_paths(children: list[list[int]], source: int, target: int) -> list[list[int]]:
    """Every shortest source -> target path, as node indices from ``source`` to ``target``."""
    to_target = _distances(_reverse(children), target)
    if source not in to_target:
        return []

    def extend(node):
        if node == target:
            return [[target]]
        closer = [child for child in children[node] if to_target.get(child) == to_target[node] - 1]
        return [[node] + rest for child in closer for rest in extend(child)]

    return extend(source)


def _count_all_paths(children: list[list[int]], source: int, target: int) -> int:
    """Number of source -> target paths of any length."""
    ways = [0] * len(children)
    ways[target] = 1
    # Every edge goes to a higher index (creation order), so one sweep downwards counts them.
    for node in range(target - 1, source - 1, -1):
        ways[node] = sum(ways[child] for child in children[node])
    return ways[source]


# ---------------------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------------------


def _pick_question(rng: random.Random, children: list[list[int]]) -> tuple[int, int, int] | None:
    """Choose ``(root, target, neg_target)`` (step 4 of the module docstring), or None if there is none."""
    distances = [_distances(children, 0), _distances(children, 1)]
    leaves = [node for node, kids in enumerate(children) if not kids]
    exclusive = [
        [leaf for leaf in leaves if leaf in distances[person] and leaf not in distances[1 - person]]
        for person in (0, 1)
    ]
    if not exclusive[0] or not exclusive[1]:
        return None
    deepest = [max(distances[person][leaf] for leaf in exclusive[person]) for person in (0, 1)]
    # The deeper side, not a random person: then the other person never has a deeper exclusive leaf (true of
    # every published example), and since person 1's side grows larger it is the root 62% of the time (63%).
    root = rng.randrange(2) if deepest[0] == deepest[1] else int(deepest[1] > deepest[0])
    target = rng.choice([leaf for leaf in exclusive[root] if distances[root][leaf] == deepest[root]])
    return root, target, rng.choice(exclusive[1 - root])


def _sentence(names: list[str], parent: int, child: int) -> str:
    """One edge as a statement: a person is one of a concept, a concept part of another (always "a")."""
    if names[parent][0].isupper():
        return f"{names[parent]} is a {names[child]}."
    return f"Every {names[parent]} is a {names[child]}."


def _write_example(rng: random.Random, parents: list[list[int]], root: int, target: int, neg_target: int) -> dict:
    """Name the nodes, then write the question (statements in random order), steps and answer."""
    persons = [node for node, chosen in enumerate(parents) if not chosen]
    person_names = iter(rng.sample(PERSONS, len(persons)))
    concept_names = iter(rng.sample(CONCEPTS, len(parents) - len(persons)))
    names = [next(concept_names) if chosen else next(person_names) for chosen in parents]
    edges = [[parent, child] for child, chosen in enumerate(parents) for parent in chosen]

    statements = [_sentence(names, parent, child) for parent, child in edges]
    rng.shuffle(statements)
    options = [names[target], names[neg_target]]
    rng.shuffle(options)
    path = rng.choice(_shortest_index_paths(_children_lists(len(names), edges), root, target))
    return {
        "question": " ".join(statements) + f" Is {names[root]} a {options[0]} or {options[1]}?",
        "answer": f"{names[root]} is a {names[target]}.",
        "steps": [_sentence(names, parent, child) for parent, child in zip(path, path[1:])],
        "idx_to_symbol": names,
        "edges": edges,
        "root": root,
        "target": target,
        "neg_target": neg_target,
    }


def _as_range(name: str, value, minimum: int) -> tuple[int, int]:
    """Normalise an int or an inclusive ``(lo, hi)`` pair, checking ``minimum <= lo <= hi``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(bound, int) and not isinstance(bound, bool) for bound in value)
    ):
        raise ValueError(f"{name} must be an int or an inclusive (lo, hi) pair of ints, got {value!r}")
    if not minimum <= value[0] <= value[1]:
        raise ValueError(f"{name} must satisfy {minimum} <= lo <= hi, got {value!r}")
    return tuple(value)


def make_prosqa_example(rng: random.Random, path_lengths=PATH_LENGTHS, num_nodes=NUM_NODES) -> dict:
    """Draw one ProsQA example, redrawing graphs until one meets the options.

    Args:
        rng: source of randomness.
        path_lengths: allowed shortest root -> target distance, an int or inclusive ``(lo, hi)``. Within the
            range lengths come in the growth process's own mix: the default (3, 6) gives 3/4/5/6 in about
            42/42/14/2% as published. Lengths past 6 need more nodes (see ``DEEP_OPTIONS``).
        num_nodes: nodes grown, an int or inclusive ``(lo, hi)`` drawn uniformly per graph. Persons left
            with no child are dropped afterwards, so examples have fewer: the default 28 gives the published
            14-28 (22.8 on average); ``num_nodes=(4, 6), path_lengths=(1, 2)`` gives 4-6 node graphs for a
            curriculum.

    Returns:
        A dict in the published schema: ``question``, ``answer``, ``steps``, ``idx_to_symbol``, ``edges``,
        ``root``, ``target`` and ``neg_target``.
    """
    min_length, max_length = _as_range("path_lengths", path_lengths, minimum=1)
    min_nodes, max_nodes = _as_range("num_nodes", num_nodes, minimum=4)
    if max_nodes < min_length + 3:
        raise ValueError(
            f"num_nodes={num_nodes!r} is too small for path_lengths={path_lengths!r}: a path of {min_length} "
            f"steps needs {min_length + 1} nodes plus the other person and its leaf"
        )
    for _ in range(MAX_TRIES):
        parents = _drop_lonely_persons(_grow_graph(rng, rng.randint(min_nodes, max_nodes)))
        if parents is None:
            continue
        num_persons = sum(not chosen for chosen in parents)
        if num_persons > len(PERSONS) or len(parents) - num_persons > len(CONCEPTS):
            continue  # more nodes than names
        children = _children_lists(len(parents), [(p, c) for c, chosen in enumerate(parents) for p in chosen])
        question = _pick_question(rng, children)
        if question is None:
            continue
        root, target, neg_target = question
        if min_length <= _distances(children, root)[target] <= max_length:
            return _write_example(rng, parents, root, target, neg_target)
    raise ValueError(
        f"no graph of num_nodes={num_nodes!r} gave a question with path_lengths={path_lengths!r} in "
        f"{MAX_TRIES} tries; longer paths need more nodes"
    )


def generate_prosqa(n: int, seed: int = 0, **options) -> list[dict]:
    """Generate ``n`` examples, deterministically in ``seed``; ``options`` go to :func:`make_prosqa_example`."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    rng = random.Random(seed)
    return [make_prosqa_example(rng, **options) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------
# Loop supervision: a ProsQA example in the package's format, and a curriculum over graph size
# ---------------------------------------------------------------------------------------------------------

SUPERVISIONS = ("frontier", "frontier_walk", "reachable", "path", "steps")
# Words of every ProsQA question and answer: the word-level tokenizer's vocabulary for this task.
VOCABULARY = ("Every", "is", "a", ".", "Is", "or", "?") + PERSONS + CONCEPTS
# Curriculum stages (the trainer's `max_hops` is the stage): (nodes grown, shortest path lengths). Small graphs with
# short paths first, as the hop task needed its hop curriculum; the last stage is the published distribution.
CURRICULUM = (
    ((4, 6), (1, 1)), ((4, 6), (1, 2)), ((5, 9), (1, 3)), ((8, 12), (2, 4)), ((11, 16), (2, 5)), ((14, 20), (3, 6)),
    (NUM_NODES, PATH_LENGTHS),
)
# Larger graphs than published, up to the deep test's 40 grown nodes, for the last stage's `large` share: the deep
# test grows 34-40 nodes to reach its 7-8 steps, so a model that saw 28 only meets two shifts there, size and depth.
LARGE_NUM_NODES = (NUM_NODES + 1, DEEP_OPTIONS["num_nodes"][1])


def to_example(example: dict, supervision: str = "frontier") -> dict:
    """A ProsQA example (published schema) in the package's format: the question and answer as they stand, and a
    trace of sets (`recursive_latent.examples`):

    - ``"path"``: one loop per step of the shortest path; loop k's target is every concept at step k of some shortest
      root -> target path (any of them will do: ``loop_set_loss="any"``), the last the target;
    - ``"frontier"``: loop k holds every concept at distance k from the root, the breadth-first frontier, up to the
      target's distance d (the whole set: ``loop_set_loss="all"``); loop d + 1 names the target, the reached option.
      Its ``steps`` are the path's sentences and then the answer sentence, one per loop;
    - ``"frontier_walk"``: as ``"frontier"``, then the loops walk one shortest path back from the target to the
      root's child, one concept per loop (at each step back the alphabetically first parent that lies on a shortest
      path, so the walk is one rule, not a guess between paths), and the last loop names the target again: 2d + 1
      loops, whose walk read backwards is the path the answer came by (``benchmarks/prosqa.py``'s path validity).
      A probe of 3,000 steps did not learn the walk and lost accuracy (``docs/experiments.md``, ProsQA);
    - ``"reachable"``: as ``"frontier"``, but loop k holds every concept within k steps of the root (the frontiers
      so far, together): each loop adds the children of what it holds, with nothing to take away;
    - ``"steps"``: the published steps as they stand, one word per loop (the concepts of one shortest path, drawn at
      random where there are several), as a chain-of-thought model writes them.
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    names, root = example["idx_to_symbol"], example["root"]
    children = _example_children(example)
    target = names[example["target"]]
    if supervision == "steps":
        trace = [step.split()[-1].rstrip(".") for step in example["steps"]]
        steps = list(example["steps"])
    elif supervision == "path":
        layers = [sorted({path[k] for path in shortest_paths(example)}) for k in range(len(example["steps"]))]
        trace = layers[:-1] + [target]
        steps = list(example["steps"])
    else:
        distances = _distances(children, root)
        depth = distances[example["target"]]
        within = (lambda d, k: 1 <= d <= k) if supervision == "reachable" else (lambda d, k: d == k)
        trace = [sorted(names[node] for node, d in distances.items() if within(d, k)) for k in range(1, depth + 1)]
        trace.append(target)
        steps = list(example["steps"]) + [example["answer"]]
        if supervision == "frontier_walk":
            path = min(shortest_paths(example), key=lambda names_after_root: names_after_root[::-1])
            walk = path[-2::-1]  # the target's parent back to the root's child
            trace += walk + [target]
            steps += [f"Every {parent} is a {child}." for parent, child in zip(walk, path[::-1])] + [example["answer"]]
    return {"question": example["question"], "steps": steps, "answer": example["answer"], "trace": trace,
            "hops": len(example["steps"])}


def trace_length(path_length: int, supervision: str) -> int:
    """Loops of :func:`to_example`'s trace for a shortest path of `path_length` steps (``<HALT>`` not counted)."""
    if supervision == "frontier_walk":
        return 2 * path_length + 1  # d frontiers, the target, d - 1 concepts back, the target again
    return path_length + (supervision in ("frontier", "reachable"))  # + the loop that names the reached option


def curriculum_example(rng: random.Random, stage: int, replay: float = 0.25, supervision: str = "frontier",
                       large: float = 0.0, even_depths: float = 0.0) -> dict:
    """A training example at curriculum `stage` (1-based, up to ``len(CURRICULUM)``): a `replay` share is drawn from
    an earlier stage, so that small graphs are not forgotten. At the last stage a `large` share grows
    ``LARGE_NUM_NODES`` nodes, at the published path lengths, and an `even_depths` share draws its path length
    uniformly from the published 3-6 steps (which otherwise come as about 42/42/14/2%)."""
    if stage > 1 and rng.random() < replay:
        stage = rng.randint(1, stage - 1)
    num_nodes, path_lengths = CURRICULUM[min(stage, len(CURRICULUM)) - 1]
    last = stage >= len(CURRICULUM)
    if large and last and rng.random() < large:  # no draw when off: old streams stay the same
        num_nodes = LARGE_NUM_NODES
    if even_depths and last and rng.random() < even_depths:
        path_lengths = rng.randint(*PATH_LENGTHS)
    return to_example(make_prosqa_example(rng, path_lengths=path_lengths, num_nodes=num_nodes), supervision)


# ---------------------------------------------------------------------------------------------------------
# Paths and statistics, from the JSON fields alone (published and generated examples alike)
# ---------------------------------------------------------------------------------------------------------


def _example_children(example: dict) -> list[list[int]]:
    return _children_lists(len(example["idx_to_symbol"]), example["edges"])


def shortest_paths(example: dict) -> list[list[str]]:
    """Every shortest root -> target path, as the names after the root.

    For the example of the module docstring: ``[["gerpus", "yimpus", "sterpus"], ["scrompus", "rempus",
    "sterpus"]]``; its ``steps`` follow the second.
    """
    paths = _shortest_index_paths(_example_children(example), example["root"], example["target"])
    return [[example["idx_to_symbol"][node] for node in path[1:]] for path in paths]


def is_valid_path(example: dict, names: Sequence[str]) -> bool:
    """Whether the concept names ``c1 .. ck`` are a path from the root to the target.

    That is: root -> c1 and every c_i -> c_(i+1) are edges, and ck is the target. The root itself is not
    listed, and the path need not be a shortest one (every list of :func:`shortest_paths` is valid).
    """
    index = {name: node for node, name in enumerate(example["idx_to_symbol"])}
    if not names or any(name not in index for name in names):
        return False
    edges = {tuple(edge) for edge in example["edges"]}
    nodes = [example["root"]] + [index[name] for name in names]
    return nodes[-1] == example["target"] and all(step in edges for step in zip(nodes, nodes[1:]))


def _summary(values: list) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _shares(values: list) -> dict:
    """Fraction of each value, keyed by the value as a string (as JSON keys are), in increasing order."""
    counts = Counter(values)
    return {str(value): counts[value] / len(values) for value in sorted(counts)}


def _example_measures(example: dict) -> dict:
    """The per-example measures that :func:`prosqa_statistics` averages."""
    names, root, target = example["idx_to_symbol"], example["root"], example["target"]
    children = _example_children(example)
    in_degree = Counter(child for _, child in example["edges"])
    from_root = _distances(children, root)
    options = example["question"].rsplit(" Is ", 1)[1].split(" a ", 1)[1]  # "<A> or <B>?"
    return {
        "nodes": len(names),
        "edges": len(example["edges"]),
        "words": len(example["question"].split()),
        "persons": sum(in_degree[node] == 0 for node in range(len(names))),
        "distance": from_root[target],
        "shortest_paths": len(_shortest_index_paths(children, root, target)),
        "all_paths": _count_all_paths(children, root, target),
        "root_out_degree": len(children[root]),
        "root_children_to_target": sum(target in _distances(children, child) for child in children[root]),
        "reachable_from_root": len(from_root) - 1,  # the root itself not counted
        "neg_distance": _distances(children, 1 - root)[example["neg_target"]],
        "target_in_degree": in_degree[target],
        "neg_target_in_degree": in_degree[example["neg_target"]],
        "target_first": options.startswith(names[target] + " or "),
        "root_is_1": root == 1,
    }


def prosqa_statistics(examples: Sequence[dict]) -> dict:
    """The measures of the statistics table of ``notes/prosqa.md``, from the JSON fields alone.

    ``nodes``, ``edges``, ``words`` (per question), ``distance`` (shortest root -> target), ``shortest_paths``
    and ``all_paths`` (root -> target) are ``{"mean", "min", "max"}``; the other measures are means over
    examples, ``*_shares`` fractions of examples per value, and ``in_degree_shares``, ``out_degree`` and
    ``leaf_share`` are over nodes (``in_degree_shares`` over the nodes that are not persons).
    """
    if not examples:
        raise ValueError("prosqa_statistics needs at least one example")
    rows = [_example_measures(example) for example in examples]
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    result = {"examples": len(examples)}
    for key, values in columns.items():
        summarise = key in ("nodes", "edges", "words", "distance", "shortest_paths", "all_paths")
        result[key] = _summary(values) if summarise else statistics.fmean(values)
    for key in ("persons", "distance", "shortest_paths"):
        result[f"{key}_shares"] = _shares(columns[key])

    in_degrees, out_degrees = [], []
    for example in examples:
        degree = Counter(child for _, child in example["edges"])
        in_degrees += [degree[node] for node in range(len(example["idx_to_symbol"])) if degree[node]]
        out_degrees += [len(kids) for kids in _example_children(example)]
    result["in_degree_shares"] = _shares(in_degrees)
    result["out_degree"] = statistics.fmean(out_degrees)
    result["leaf_share"] = sum(degree == 0 for degree in out_degrees) / len(out_degrees)
    return result


def _int_range(values: list[int]):
    """A ``--path_lengths``/``--num_nodes`` value: one int, or an inclusive (lo, hi) pair."""
    return values[0] if len(values) == 1 else tuple(values)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate ProsQA-style examples as a JSON list.")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument("--n", type=int, default=1000, help="number of examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path_lengths", type=int, nargs="+", metavar="L", default=list(PATH_LENGTHS),
                        help="shortest root -> target distance: L or LO HI (default: 3 6, as published)")
    parser.add_argument("--num_nodes", type=int, nargs="+", metavar="N", default=[NUM_NODES],
                        help="nodes grown per graph: N or LO HI (default: 28, as published; 34 40 for 7-8 steps)")
    args = parser.parse_args(argv)
    if len(args.path_lengths) > 2 or len(args.num_nodes) > 2:
        parser.error("--path_lengths and --num_nodes take one value or two (LO HI)")
    try:
        examples = generate_prosqa(args.n, seed=args.seed, path_lengths=_int_range(args.path_lengths),
                                   num_nodes=_int_range(args.num_nodes))
    except ValueError as error:
        parser.error(str(error))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(examples))
    print(f"wrote {len(examples)} examples to {args.out}")


if __name__ == "__main__":
    main()
