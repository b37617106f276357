"""ProsQA end to end: loop targets from a published example, a short training run on generated graphs, the benchmark."""

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dataset_scripts.prosqa import (
    CURRICULUM, SUPERVISIONS, VOCABULARY, curriculum_example, generate_prosqa, is_valid_path, make_prosqa_example,
    shortest_paths, to_example, trace_length,
)
from dataset_scripts.tokenizer import build_tokenizer
from recursive_latent.examples import HALT_TOKEN, normalize_example
from recursive_latent.modeling_recursive import RecursiveLatentForCausalLM
from tests.test_trainer import ROOT

PROSQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prosqa"
TINY_PROSQA = """
task: prosqa
backbone_hidden_size: 32
backbone_max_positions: 512
model: {backbone_mode: full, max_loops: 8}
max_steps: 12
per_device_train_batch_size: 8
learning_rate: 0.003
warmup_steps: 0
eval_strategy: steps
eval_steps: 12
eval_size: 6
save_strategy: 'no'
curriculum_window: 4
use_cpu: true
report_to: none
seed: 0
"""


def distances_from_root(example):
    """Breadth-first distances from the root person, written here independently of the generator's own."""
    children = {}
    for parent, child in example["edges"]:
        children.setdefault(parent, []).append(child)
    distances, frontier, depth = {example["root"]: 0}, [example["root"]], 0
    while frontier:
        depth += 1
        frontier = list(dict.fromkeys(c for node in frontier for c in children.get(node, []) if c not in distances))
        distances.update((node, depth) for node in frontier)
    return distances


def test_loop_targets_of_each_supervision():
    example = make_prosqa_example(random.Random(3))
    names, depth = example["idx_to_symbol"], len(example["steps"])
    target = names[example["target"]]
    by_distance = {}
    for node, distance in distances_from_root(example).items():
        by_distance.setdefault(distance, set()).add(names[node])
    frontier = normalize_example(to_example(example, "frontier"))
    assert [set(step) for step in frontier["trace"][:-1]] == [by_distance[k] for k in range(1, depth + 1)]
    assert frontier["trace"][-1] == target and len(frontier["steps"]) == depth + 1
    reachable = to_example(example, "reachable")["trace"]
    assert all(set(reachable[k - 1]) == set().union(*(by_distance[j] for j in range(1, k + 1)))
               for k in range(1, depth + 1))
    path = to_example(example, "path")["trace"]
    assert [set(layer) for layer in path[:-1]] == [{p[k] for p in shortest_paths(example)} for k in range(depth - 1)]
    steps = to_example(example, "steps")["trace"]
    assert is_valid_path(example, steps) and len(steps) == depth
    walk = normalize_example(to_example(example, "frontier_walk"))
    assert walk["trace"][: depth + 1] == frontier["trace"] and walk["trace"][-1] == target
    assert len(walk["trace"]) == len(walk["steps"]) == trace_length(depth, "frontier_walk") == 2 * depth + 1
    assert walk["trace"][depth + 1:-1][::-1] + [target] in shortest_paths(example)  # the walk back, read forward
    for supervision in SUPERVISIONS:  # every form is a valid example of the package's format
        converted = normalize_example(to_example(example, supervision))
        assert converted["answer"] == example["answer"]
        assert len(converted["trace"]) == trace_length(depth, supervision)


def test_the_walk_back_takes_the_alphabetically_first_parent_where_shortest_paths_part():
    rng = random.Random(0)
    for _ in range(500):  # a graph whose shortest paths reach the target through different parents
        example = make_prosqa_example(rng)
        parents = {path[-2] for path in shortest_paths(example) if len(path) > 1}
        if len(parents) > 1:
            break
    assert len(parents) > 1
    depth, target = len(example["steps"]), example["idx_to_symbol"][example["target"]]
    walk = to_example(example, "frontier_walk")["trace"][depth + 1:-1]
    assert walk[0] == min(parents) and walk[::-1] + [target] in shortest_paths(example)


def test_the_benchmark_reads_a_walking_model_s_path_backwards():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prosqa import read_path

    # 2 steps, person -> wumpus -> zhorpus: frontiers, the target, the walk back, the target again, then <HALT>
    trace = ["wumpus", "zhorpus", "zhorpus", "wumpus", "zhorpus", HALT_TOKEN]
    prediction = {"trace": trace, "loops": 6}
    assert read_path(prediction, "zhorpus", "frontier_walk") == ["wumpus", "zhorpus"]
    assert read_path(prediction, "zhorpus", "frontier") == ["wumpus", "zhorpus", "zhorpus", "wumpus", "zhorpus"]


def test_the_curriculum_grows_graphs_and_paths():
    rng = random.Random(0)
    first = [curriculum_example(rng, 1, replay=0.0) for _ in range(50)]
    last = [curriculum_example(rng, len(CURRICULUM), replay=0.0) for _ in range(50)]
    assert {example["hops"] for example in first} == {1}
    assert {example["hops"] for example in last} <= {3, 4, 5, 6}
    assert sum(len(e["question"]) for e in last) > 4 * sum(len(e["question"]) for e in first)


def test_the_large_share_grows_larger_graphs_at_the_published_depths_in_the_last_stage_only():
    def draw(stage, large):
        rng = random.Random(1)
        return [curriculum_example(rng, stage, replay=0.0, large=large) for _ in range(60)]

    def statements(examples):
        return sum(example["question"].count(".") for example in examples) / len(examples)

    published, large = draw(len(CURRICULUM), 0.0), draw(len(CURRICULUM), 1.0)
    assert {example["hops"] for example in large} <= {3, 4, 5, 6}
    assert statements(large) > 1.2 * statements(published)  # 29-40 grown nodes against 28
    assert draw(1, 1.0) == draw(1, 0.0)  # earlier stages keep their sizes, and their streams


def test_the_even_depths_share_draws_the_published_path_lengths_uniformly_in_the_last_stage_only():
    def depths(stage, even_depths):
        rng = random.Random(2)
        return Counter(curriculum_example(rng, stage, replay=0.0, even_depths=even_depths)["hops"] for _ in range(200))

    published, even = depths(len(CURRICULUM), 0.0), depths(len(CURRICULUM), 1.0)
    assert set(even) == {3, 4, 5, 6} and min(even.values()) >= 30  # about 50 each
    assert published[6] <= 15  # about 2% as published
    assert depths(len(CURRICULUM) - 1, 1.0) == depths(len(CURRICULUM) - 1, 0.0)  # earlier stages as they were


@pytest.mark.slow
@pytest.mark.skipif(not (PROSQA / "prosqa_valid.json").is_file(), reason="the published ProsQA files are not beside the repo")
def test_a_short_run_trains_on_generated_graphs_and_the_benchmark_scores_it(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_PROSQA)
    valid = json.loads((PROSQA / "prosqa_valid.json").read_text())[:12]
    (tmp_path / "valid.json").write_text(json.dumps(valid))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "trainers" / "rlf.py"), "--config", "tiny.yaml", "--validation_file",
               "valid.json", "--output_dir", "run"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[eval] step 12" in result.stdout  # validated on the published examples
    final = tmp_path / "run" / "final"

    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(final)
    question = valid[0]["question"]  # the published string as it stands is the prompt
    assert tokenizer.unk_token_id not in tokenizer(question)["input_ids"]
    out = model.reason(**tokenizer([question], return_tensors="pt"))
    assert out.answer_ids.shape == (1,) and int(out.loops[0]) >= 1
    text = pipeline("text-generation", model=str(final), trust_remote_code=True)(question)[0]["generated_text"]
    assert text.startswith(question + " ") and len(text.split()) == len(question.split()) + 1

    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prosqa.py"), "--model", str(final), "--data",
                            str(tmp_path / "valid.json"), "--deep_n", "4", "--out", str(tmp_path / "bench")],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    figures = json.loads((tmp_path / "bench" / "prosqa.json").read_text())
    overall = figures["data_figures"]["per_path_length"]["all"]
    assert overall["n"] == 12 and 0 <= overall["accuracy"] <= 1 and overall["accuracy_ci95"][0] <= overall["accuracy"]
    assert figures["deep_figures"]["per_path_length"]["all"]["n"] == 4
    assert set(figures["deep_figures"]["per_path_length"]) - {"all"} <= {"7", "8"}
    assert (tmp_path / "bench" / "prosqa.png").stat().st_size > 0
    assert figures["command"].startswith("python benchmarks/prosqa.py --model ") and figures["machine"]["threads"] >= 1


def test_the_config_trains_at_the_constant_learning_rate_its_figures_were_measured_at(tmp_path):
    """prosqa.yaml's schedule as the Trainer builds it (`get_scheduler` with the parsed arguments) holds the rate from
    the first step to the last: its runs were measured so (the decay it once named never reached Muon's groups)."""
    import torch
    from transformers import get_scheduler

    from trainers.arguments import parse_arguments

    args = parse_arguments(["--config", str(ROOT / "trainers" / "configs" / "prosqa.yaml"), "--output_dir",
                            str(tmp_path)]).training
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.get_warmup_steps(args.max_steps), args.max_steps,
                              scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    rates = set()
    for _ in range(args.max_steps):
        rates.add(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == {args.learning_rate} and args.learning_rate == 2e-3


class ScriptedModel:
    """A stand-in for a frontier model whose loops are known: each example answers `word` at loop `answer_loop`
    (1-based), then `<HALT>`; with the halt ignored, loop d + 1 ranks `best` first, then `second`."""

    def __init__(self, tokenizer, plans):
        self.tokenizer, self.plans = tokenizer, plans
        self.config = SimpleNamespace(base_lane=None, halt_token_id=tokenizer.convert_tokens_to_ids(HALT_TOKEN))
        self.device = torch.device("cpu")

    def eval(self):
        return self

    def reason(self, input_ids, attention_mask=None, max_loops=None, **kwargs):
        ids = self.tokenizer.convert_tokens_to_ids
        return SimpleNamespace(loops=torch.tensor([plan["answer_loop"] + 1 for plan in self.plans]),
                               halted=torch.ones(len(self.plans), dtype=torch.bool),
                               answer_ids=torch.tensor([ids(plan["word"]) for plan in self.plans]))

    def __call__(self, input_ids, attention_mask=None, num_loops=None):
        logits = torch.zeros(len(self.plans), num_loops, len(self.tokenizer))
        for row, plan in enumerate(self.plans):
            logits[row, :, self.config.halt_token_id] = 9.0  # ruled out by `without_halt`
            logits[row, plan["d"], self.tokenizer.convert_tokens_to_ids(plan["best"])] = 2.0
            logits[row, plan["d"], self.tokenizer.convert_tokens_to_ids(plan["second"])] = 1.0
        return SimpleNamespace(loop_logits=logits)

    without_halt = RecursiveLatentForCausalLM.without_halt


def test_the_threshold_sweep_scores_what_reason_answers_at_each_threshold(monkeypatch, tmp_path):
    """`prosqa_halting.py --sweep` reads each threshold's answers and loops off one run of loops; they must be
    `reason()`'s at that threshold. Three scripted examples: a sure `<HALT>` after the target (right at 0, wrong at
    0.5 past an unsure one), the reverse, and one no sure `<HALT>` stops (unstopped at 0.5)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prosqa_halting import sweep_thresholds

    from tests.conftest import make_config
    from tests.test_modeling import script_loop_logits

    tokenizer = build_tokenizer(VOCABULARY)
    words = VOCABULARY[:4]  # the target, two other concepts, a person
    examples = [{"question": f"{words[3]} is a {words[1]} .", "idx_to_symbol": words, "target": 0, "steps": [0] * d}
                for d in (3, 3, 4)]
    target, first, other, halt = (tokenizer.convert_tokens_to_ids(word) for word in (*words[:3], HALT_TOKEN))
    sure, unsure = 20.0, 3.0
    table = torch.zeros(3, 6, len(tokenizer))
    for row, loops in enumerate([[(first, 5.0), (target, 5.0), (halt, unsure), (other, 5.0), (halt, sure)],
                                 [(first, 5.0), (halt, unsure), (target, 5.0), (halt, sure)],
                                 [(target, 5.0)] * 5 + [(halt, unsure)]]):
        for loop, (token, logit) in enumerate(loops):
            table[row, loop, token] = logit
        table[row, len(loops):, halt] = sure
    model = RecursiveLatentForCausalLM(make_config(halt_token_id=halt, pad_token_id=tokenizer.pad_token_id)).eval()
    script_loop_logits(model, monkeypatch, table)
    model.config.halt_token_threshold = 0.3
    sweep = sweep_thresholds(model, tokenizer, examples, loops=6, batch_size=3, thresholds=[0.0, 0.5])
    assert model.config.halt_token_threshold == 0.3  # the model's own setting is left as it was
    inputs = tokenizer([example["question"] for example in examples], padding=True, return_tensors="pt")
    for threshold, right, loops in [(0.0, [True, False, True], [3, 2, 6]), (0.5, [False, True, True], [5, 4, 6])]:
        model.config.halt_token_threshold = threshold
        out = model.reason(inputs["input_ids"], inputs["attention_mask"], max_loops=6)
        assert (out.answer_ids == target).tolist() == right and out.loops.tolist() == loops
        row = sweep[str(threshold)]
        assert row["3"]["accuracy"] == sum(right[:2]) / 2 and row["4"]["accuracy"] == right[2]
        assert row["all"]["mean_loops"] == pytest.approx(sum(loops) / 3)
        assert row["all"]["unstopped"] == pytest.approx((~out.halted).sum().item() / 3)
    assert sweep["0.5"]["4"]["unstopped"] == 1.0

    from report import prosqa_halting_table, prosqa_threshold_table  # docs/results.md's table of such files

    (tmp_path / "prosqa_halting_sweep.json").write_text(json.dumps(
        {"model": "scripted", "data": "generated", "seed": 9, "n": 3, "per_path_length": {}, "threshold_sweep": sweep}))
    assert prosqa_halting_table(tmp_path) == []  # a sweep is not a row of the diagnostic's table
    assert "| `scripted` | generated 7-8 step graphs, seed 9 | 3 | 66.7 (3.67) | 66.7 (5.00) | " \
        "`prosqa_halting_sweep.json` |" in prosqa_threshold_table(tmp_path)


def test_the_benchmarks_refuse_a_threshold_out_of_range_or_a_model_without_one(monkeypatch, capsys):
    """`--halt_token_threshold` / `--sweep` outside [0, 1) end with a one-line error before any model is loaded; a
    model without the setting (a baseline, or code from before it) is refused rather than scored as if it applied."""
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import prosqa

    parser = argparse.ArgumentParser(prog="prosqa.py")
    for threshold, sweep in [(1.5, ()), (None, (0.0, -0.1))]:
        with pytest.raises(SystemExit):
            prosqa.load_model(parser, "/nonexistent", threshold, sweep=sweep)
        assert "a p(<HALT>) threshold must be in [0, 1)" in capsys.readouterr().err
    baseline = SimpleNamespace(eval=lambda: baseline, config=SimpleNamespace())  # no `halts`
    monkeypatch.setattr(prosqa.AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: baseline)
    assert prosqa.load_model(parser, "cot") is baseline  # no threshold asked: any model is scored
    with pytest.raises(SystemExit):
        prosqa.load_model(parser, "cot", 0.8)
    assert "cot has no `halt_token_threshold`" in capsys.readouterr().err
    assert not hasattr(baseline.config, "halt_token_threshold")


def test_the_halting_diagnostic_places_each_answer_against_the_loop_the_search_reaches_the_target(tmp_path):
    """`benchmarks/prosqa_halting.py` on three graphs with 3-step paths: one answered on time (loop 4) with the
    target, one early (loop 2) with a concept of its search, one late (loop 6) with the other option."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prosqa_halting import diagnose

    tokenizer = build_tokenizer(VOCABULARY)
    examples = generate_prosqa(3, seed=5, path_lengths=(3, 3))
    target, other = [[e["idx_to_symbol"][e[key]] for e in examples] for key in ("target", "neg_target")]
    search = [shortest_paths(e)[0][0] for e in examples]  # a concept one step from the person
    plans = [dict(d=3, answer_loop=4, word=target[0], best=target[0], second=other[0]),
             dict(d=3, answer_loop=2, word=search[1], best=target[1], second=other[1]),
             dict(d=3, answer_loop=6, word=other[2], best=other[2], second=target[2])]
    row = diagnose(ScriptedModel(tokenizer, plans), tokenizer, examples, loops=8, batch_size=3)["3"]
    thirds = {key: row[key] * 3 for key in ("early", "on_time", "late", "target", "other_option", "neither",
                                             "target_beats_other_at_d+1", "target_best_at_d+1")}
    assert thirds == pytest.approx({"early": 1, "on_time": 1, "late": 1, "target": 1, "other_option": 1,
                                    "neither": 1, "target_beats_other_at_d+1": 2, "target_best_at_d+1": 2})
    assert row["n"] == 3 and row["answer_loop_minus_d_plus_1"] == {"-2": 1, "0": 1, "2": 1}

    from report import prosqa_halting_table, prosqa_tables  # docs/results.md's table of such files

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "prosqa_halting_scripted.json").write_text(json.dumps(
        {"model": "scripted", "data": "generated", "per_path_length": {"3": row}}))
    assert prosqa_tables(docs) == []  # not a benchmarks/prosqa.py file
    table = prosqa_halting_table(docs)
    assert "| `scripted` | generated 7-8 step graphs | 3 | 3 | 33.3 | 33.3 | 33.3 | 33.3 | 33.3 | 33.3 | 66.7 | 66.7 |" \
        " `prosqa_halting_scripted.json` |" in table
