"""A user's own data: one example format through the trainer, the benchmark, the card and a fresh-process load."""

import json
import os
import random
import subprocess
import sys

import evaluate
import pytest
import yaml

from recursive_latent.examples import ExampleError, load_examples, normalize_example
from tests.test_remote_code import FRESH_PROCESS
from tests.test_trainer import ROOT, TINY, refusal, train_in_process

# A made-up task in words the hop chains never use: follow roads between invented towns.
TOWNS = ("zorvik", "quellan", "mippa", "trasko", "bolune", "fendor", "gaxil", "hothra", "irrin", "jovel", "kesta",
         "lumor")


def road_example(rng, steps):
    """`steps` roads to follow from the asked town, among one distractor road, in random order."""
    towns = rng.sample(TOWNS, steps + 3)
    path, distractor = towns[: steps + 1], towns[steps + 1 :]
    statements = [f"{a} leads to {b}." for a, b in zip(path, path[1:])] + [f"{distractor[0]} leads to {distractor[1]}."]
    rng.shuffle(statements)
    return {"question": " ".join(statements) + f" Where does the road from {path[0]} end?",
            "steps": [f"{a} leads to {b}." for a, b in zip(path, path[1:])],
            "answer": f"The road ends at {path[-1]}."}


def write_task(directory, seed=0, train=600, validation=90):
    rng = random.Random(seed)
    examples = [road_example(rng, rng.randint(1, 3)) for _ in range(train + validation)]
    (directory / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[:train]))
    (directory / "valid.json").write_text(json.dumps(examples[train:]))
    return examples[train:]


def train(tmp_path, *args, timeout=600):
    (tmp_path / "tiny.yaml").write_text(TINY)
    command = [sys.executable, str(ROOT / "trainers" / "rlf.py"), "--config", str(tmp_path / "tiny.yaml"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)


def test_format_derives_the_trace_and_names_the_bad_example():
    example = normalize_example({"question": "q", "steps": ["Tom is a wumpus.", "Every wumpus is a yimpus."],
                                 "answer": "Tom is a yimpus."})
    assert example["trace"] == ["wumpus", "yimpus"] and example["lane"] is None
    bad = [
        ({"steps": ["a b."], "answer": "b"}, "example 7: missing field `question`"),
        ({"question": "q", "steps": [], "answer": "b"}, "example 7: `steps` must be a non-empty list"),
        ({"question": "q", "steps": ["a b."], "answer": "b", "trace": ["x", "b"]},
         "example 7: `trace` has 2 entries but `steps` has 1"),
        ({"question": "q", "steps": ["a b."], "answer": "c"}, "example 7: `answer` 'c' does not end with the last"),
    ]
    for example, message in bad:
        with pytest.raises(ExampleError, match=message):
            normalize_example(example, 7)


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("this is not json\n", "not a JSON list of example objects nor JSONL"),
    ("[]", "holds no examples"),
    ('[{"question": "q", "steps": ["a b."]}]', "example 0: missing field `answer`"),
])
def test_bad_files_fail_in_one_line_before_training(tmp_path, monkeypatch, capsys, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ExampleError, match=message):
        load_examples(str(tmp_path / "bad.json"))
    stderr = refusal(tmp_path, monkeypatch, capsys, "--train_file", "bad.json", "--output_dir", "out")
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_target_that_is_not_one_token_is_refused_with_the_word_and_example(tmp_path, monkeypatch, capsys,
                                                                              pretrained_gpt2_dir):
    # The local GPT-2 stand-in's BPE splits this made-up word; the word-level tokenizer would keep it whole.
    word = "zorvikquellan"
    rows = [{"question": "A = dog. What is A?", "steps": ["A = dog."], "answer": "dog"},
            {"question": f"Where is {word}?", "steps": [f"It is {word}."], "answer": word}]
    (tmp_path / "split.json").write_text(json.dumps(rows))
    stderr = refusal(tmp_path, monkeypatch, capsys, "--train_file", "split.json", "--backbone_name_or_path",
                     str(pretrained_gpt2_dir), "--output_dir", "out")
    assert f"example 1: loop target '{word}' is not one token" in stderr and not (tmp_path / "out").exists()


def test_in_process_run_on_a_file(tmp_path, monkeypatch, capsys):
    """The fast version of the next test: a few steps on a file, its vocabulary, its record, its evaluation."""
    validation = write_task(tmp_path, train=60, validation=12)
    out = train_in_process(tmp_path, monkeypatch, capsys, "--train_file", "train.jsonl", "--validation_file",
                           "valid.json", "--output_dir", "run", "--max_steps", "4", "--eval_steps", "4",
                           "--save_strategy", "no", "--pretrain_steps", "2", "--curriculum_start_hops", "1")
    assert "[eval] step 4" in out
    final = tmp_path / "run" / "final"
    vocabulary = json.loads((final / "tokenizer.json").read_text())["model"]["vocab"]
    assert set(TOWNS) <= set(vocabulary) and "dog" not in vocabulary
    assert yaml.safe_load((final / "training_config.yaml").read_text())["data_source"]["train_examples"] == 60

    from recursive_latent.evaluation import evaluate_examples
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    figures = evaluate_examples(model, AutoTokenizer.from_pretrained(final), validation)
    assert sum(row["n"] for row in figures["per_steps"].values()) == 12 and figures["unknown_word_examples"] == 0


@pytest.mark.slow
def test_train_on_a_file_benchmark_it_and_load_it_in_a_fresh_process(tmp_path):
    validation = write_task(tmp_path)
    result = train(tmp_path, "--train_file", "train.jsonl", "--validation_file", "valid.json", "--output_dir", "run",
                   "--backbone_mode", "full", "--max_steps", "400", "--learning_rate", "0.004", "--curriculum", "true",
                   "--curriculum_start_hops", "1", "--eval_steps", "200", "--save_steps", "200")
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "run" / "final"
    vocabulary = json.loads((final / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"zorvik", "leads", "road", "?"} <= set(vocabulary) and "dog" not in vocabulary  # built from the file
    assert "[curriculum]" in result.stdout  # the curriculum over steps ran on file data
    record = yaml.safe_load((final / "training_config.yaml").read_text())
    assert record["data_source"]["train_examples"] == 600 and record["data_source"]["steps"] == [1, 3]
    assert "`train.jsonl` (600 examples of 1-3 steps" in (final / "README.md").read_text()

    command = [sys.executable, str(ROOT / "benchmarks" / "evaluate_file.py"), "--model", str(final), "--data",
               str(tmp_path / "valid.json"), "--out", str(tmp_path / "bench")]
    bench = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    figures = json.loads((tmp_path / "bench" / "evaluate_file.json").read_text())
    assert figures["n"] == 90 and set(figures["per_steps"]) == {"1", "2", "3"}
    assert figures["unknown_word_examples"] == 0 and (tmp_path / "bench" / "evaluate_file.png").stat().st_size > 0
    one_step = figures["per_steps"]["1"]
    # Two roads in the prompt: an untrained loop names the right next town about 1 time in 4 at best.
    assert one_step["answer_exact_match"] > 0.6, figures["per_steps"]

    # The same figures through the metric, from the benchmark's own predictions.
    from recursive_latent.evaluation import evaluate_examples
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(final)
    own = evaluate_examples(model, tokenizer, validation)
    examples = [normalize_example(example) for example in validation]
    metric = evaluate.load(str(ROOT / "metrics" / "hop_accuracy")).compute(
        predictions=[p["prediction"] for p in own["predictions"]], references=[e["trace"][-1] for e in examples],
        steps=[len(e["trace"]) for e in examples])
    assert metric["exact_match_steps_1"] == pytest.approx(one_step["answer_exact_match"])

    # Words the training file never had are counted, not guessed.
    unseen = [dict(validation[0], question=validation[0]["question"].replace("road", "highway"))]
    assert evaluate_examples(model, tokenizer, unseen)["unknown_word_examples"] == 1

    # The card carries the results measured on this checkpoint.
    subprocess.run([sys.executable, "-m", "model_cards.generate", str(final), "--results",
                    str(tmp_path / "bench" / "evaluate_file.json")], check=True, cwd=ROOT, timeout=120)
    card = (final / "README.md").read_text()
    assert "steps_1" in card and f"{one_step['answer_exact_match']}" in card

    # A process without this package: the Auto classes, reason() and pipeline answer in the new vocabulary.
    prompts = [validation[0]["question"], validation[1]["question"]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    fresh = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(final), json.dumps(prompts)], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got = json.loads(fresh.stdout.split("RESULT ")[-1])
    answers = [tokenizer.convert_ids_to_tokens(token_id) for token_id in got["answer_ids"]]
    assert answers == [p["prediction"] for p in own["predictions"][:2]] and set(answers) <= set(TOWNS)
    assert got["pipeline_text"] == f"{prompts[0]} {answers[0]}"


def test_the_benchmark_refuses_a_bad_file_in_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    command = [sys.executable, str(ROOT / "benchmarks" / "evaluate_file.py"), "--model", "nowhere", "--data",
               str(tmp_path / "bad.json")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "not a JSON list of example objects" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_curriculum_dataset_draws_only_allowed_lengths():
    from dataset_scripts.sources import ExampleStream

    rng = random.Random(1)
    examples = [normalize_example(road_example(rng, steps)) for steps in (1, 2, 3) * 10]
    stream = ExampleStream(examples, max_hops=1)
    assert {len(stream[i]["trace"]) for i in range(len(stream))} == {1}
    stream.max_hops = 3
    assert {len(stream[i]["trace"]) for i in range(len(stream))} == {1, 2, 3}
    assert [stream[i] for i in range(30)] == examples  # the last stage is the file itself
