"""The benchmark scripts end to end on a tiny untrained checkpoint: they run, and write what they say they write."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_remote_code import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_depth_sweep_writes_one_row_per_hop_and_forced_loop_count(tmp_path):
    save_checkpoint(tmp_path / "model")
    command = [sys.executable, str(ROOT / "benchmarks" / "depth_sweep.py"), "--model", str(tmp_path / "model"),
               "--hops", "1", "3", "--loops", "1", "2", "4", "--n", "8", "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "out" / "depth_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    # r < hops cannot hold the answer yet and is skipped: (1,1) (1,2) (1,4) (3,4).
    assert [(int(r["hops"]), int(r["loops"])) for r in rows] == [(1, 1), (1, 2), (1, 4), (3, 4)]
    assert all(0.0 <= float(r["answer_accuracy"]) <= 1.0 and float(r["answer_loss"]) > 0 for r in rows)
    assert (tmp_path / "out" / "depth_sweep.png").stat().st_size > 0
    run = json.loads((tmp_path / "out" / "depth_sweep.json").read_text())
    assert run["model"] == str(tmp_path / "model") and "--hops 1 3" in run["command"] and run["seconds"] > 0


@pytest.mark.slow
def test_inference_ablations_and_report_render_the_measured_numbers(tmp_path):
    save_checkpoint(tmp_path / "model")
    docs = tmp_path / "docs"
    docs.mkdir()
    label = "tiny untrained model, `chain` prompts"
    for script, extra in (("ood_hops.py", ["--hops", "1", "2", "--n", "16", "--variant", "chain", "--label", label,
                                           "--section", "default"]),
                          ("inference_ablations.py", ["--hops", "1", "2", "--n", "16", "--velocities", "0.1",
                                                      "--variant", "chain"])):
        command = [sys.executable, str(ROOT / "benchmarks" / script), "--model", str(tmp_path / "model"), *extra,
                   "--out", str(tmp_path / "out")]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    (docs / "ood_hops_default.json").write_text((tmp_path / "out" / "ood_hops.json").read_text())
    # The same run as a JSON that says nothing about itself: titled by its file name, under `other`.
    unlabeled = json.loads((docs / "ood_hops_default.json").read_text())
    assert (unlabeled.pop("label"), unlabeled.pop("section")) == (label, "default")
    (docs / "ood_hops_unlabeled.json").write_text(json.dumps(unlabeled, indent=2))
    (docs / "inference_ablations_default.json").write_text((tmp_path / "out" / "inference_ablations.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start (generated) -->\nstale\n<!-- results:end -->\nafter\n")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--docs", str(docs),
                             "--readme", str(readme)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tables = (docs / "results.md").read_text()
    ood = json.loads((docs / "ood_hops_default.json").read_text())
    ablations = json.loads((docs / "inference_ablations_default.json").read_text())
    assert set(ablations["ablations"]) == {"none", "gate_zeroed", "gate_noise_same_norm", "x_prompt_shuffled"}
    assert set(ablations["halting"]) == {"token", "fixed_6", "velocity_0.1"}
    row = ood["per_hop"]["2"]
    low, high = row["answer_exact_match_ci95"]
    assert f"| 2 | {100 * row['answer_exact_match']:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in tables
    assert f"## The default run\n\n### {label}\n" in tables
    assert "## other\n\n### ood_hops_unlabeled.json\n" in tables
    assert tables.index("## The default run") < tables.index("## other")
    assert "`ood_hops_default.json` from `` python benchmarks/ood_hops.py" in tables  # the label's backticks, fenced
    gate = ablations["ablations"]["gate_zeroed"]["1"]["answer_exact_match"]
    assert f"| gate_zeroed | {100 * gate:.1f} |" in tables
    assert "![default vs baselines](img/baselines.png)" in tables and (docs / "img" / "baselines.png").stat().st_size > 0
    summary = readme.read_text()
    assert "stale" not in summary and summary.endswith("<!-- results:end -->\nafter\n")
    assert f"| answer exact match % | {100 * ood['per_hop']['1']['answer_exact_match']:.1f} |" in summary


def test_tokenizer_coverage_counts_the_words_a_tokenizer_keeps_whole(tmp_path, pretrained_gpt2_dir):
    from dataset_scripts.tokenizer import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "word_level")
    figures = {}
    for name, path in (("word_level", tmp_path / "word_level"), ("bpe", pretrained_gpt2_dir)):
        command = [sys.executable, str(ROOT / "benchmarks" / "tokenizer_coverage.py"), "--tokenizer", str(path)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        figures[name] = json.loads(result.stdout)
    word_level, bpe = figures["word_level"], figures["bpe"]
    assert word_level["names"] == {"one_token": 702, "total": 702, "split": []}
    assert word_level["train_values"]["one_token"] == 220 and word_level["digits"]["one_token"] == 10
    assert 0 < bpe["names"]["one_token"] < 702 and len(bpe["names"]["split"]) == 702 - bpe["names"]["one_token"]


@pytest.mark.slow
def test_throughput_writes_speed_memory_and_parameter_counts(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--loops", "4", "--batch_sizes", "2",
               "--batch_size", "8", "--repeats", "1", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "throughput.json").read_text())
    assert [(row["loops"], row["batch_size"]) for row in figures["loops"] + figures["batch"]] == [(4, 8), (8, 2)]
    for row in figures["loops"] + figures["batch"]:
        assert row["examples_per_second"] > 0 and 0 <= row["reason_mb"] < row["peak_rss_mb"]
    # The Hub configs' shapes: GPT-2 124M's backbone with `<HALT>` added to its vocabulary (50,258 x 768 embeddings).
    assert figures["parameters"]["gpt2_124m"]["backbone"] == 124_439_808 + 768
    assert "tiny_gpt2" in figures["parameters"] and figures["command"].startswith("python benchmarks/throughput.py --loops 4")
    assert figures["seconds"] > 0


def ood_hops_main(monkeypatch, capsys, *args):
    """`benchmarks/ood_hops.py` with `args`, in this process: (exit code, stderr); exit code 0 when it ran through."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ood_hops

    monkeypatch.setattr(sys, "argv", ["ood_hops.py", *args])
    try:
        ood_hops.main()
    except SystemExit as stop:  # a parser error prints itself and exits 2; a refusal is SystemExit("error: ...")
        return stop.code, capsys.readouterr().err + (stop.code if isinstance(stop.code, str) else "")
    return 0, capsys.readouterr().err


def test_ood_hops_refuses_bad_arith_ops_before_loading_a_model(tmp_path, monkeypatch, capsys):
    for extra, message in ((["--lane", "arith", "--arith_ops", "+/"], "--arith_ops: ops must be a non-empty string"),
                           (["--arith_ops", "+"], "--arith_ops applies to --lane arith only")):
        code, stderr = ood_hops_main(monkeypatch, capsys, "--model", str(tmp_path / "none"), *extra)
        assert code == 2 and message in stderr, stderr[-2000:]


@pytest.mark.slow
def test_ood_hops_distractor_ranges_set_prompt_length_and_are_recorded(tmp_path):
    save_checkpoint(tmp_path / "model")
    lengths = {}
    for distractors in ("0", "3"):
        out = tmp_path / f"out_{distractors}"
        command = [sys.executable, str(ROOT / "benchmarks" / "ood_hops.py"), "--model", str(tmp_path / "model"),
                   "--hops", "2", "--n", "16", "--distractors", distractors, distractors, "--distractor_hops", "3", "3",
                   "--out", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        run = json.loads((out / "ood_hops.json").read_text())
        assert run["distractors"] == [int(distractors)] * 2 and run["distractor_hops"] == [3, 3]
        lengths[distractors] = run["per_hop"]["2"]["mean_prompt_tokens"]
    # 2 statements vs 2 + 3 * 3: 9 more statements of 4 tokens each (`A = B.`, one token per word).
    assert lengths["3"] - lengths["0"] == 9 * 4


def test_ood_hops_refuses_distractor_ranges_it_cannot_use(tmp_path, monkeypatch, capsys):
    for extra, message in ((["--variant", "chain", "--distractors", "0", "0"], "apply to `shuffled` pointer prompts only"),
                           (["--distractors", "3", "1"], "num_distractors must satisfy 0 <= lo <= hi")):
        code, stderr = ood_hops_main(monkeypatch, capsys, "--model", str(tmp_path / "none"), *extra)
        assert code == 2 and message in stderr, stderr[-2000:]


def test_ood_hops_refuses_hop_counts_past_the_loop_cap_and_max_loops_lifts_it(tmp_path, monkeypatch, capsys):
    save_checkpoint(tmp_path / "model")  # max_inference_loops 72: 72 hops need 73 loops
    base = ["--model", str(tmp_path / "model"), "--variant", "chain", "--n", "4", "--out", str(tmp_path / "out")]
    code, stderr = ood_hops_main(monkeypatch, capsys, *base, "--hops", "72")
    assert code != 0 and "72 hops need 73 loops but the model stops at 72" in stderr
    code, stderr = ood_hops_main(monkeypatch, capsys, *base, "--hops", "2", "--max_loops", "3")
    assert code == 0, stderr[-3000:]
    run = json.loads((tmp_path / "out" / "ood_hops.json").read_text())
    assert run["max_loops"] == 3 and run["per_hop"]["2"]["mean_loops"] <= 3
    assert run["command"].startswith("python benchmarks/ood_hops.py --model ") and "--max_loops 3" in run["command"]
    import torch

    assert run["machine"]["threads"] == torch.get_num_threads() and run["machine"]["torch"] == torch.__version__


def test_in_process_ood_hops_run_is_rendered_by_the_report(tmp_path, monkeypatch):
    """The fast version of the end-to-end benchmark tests: ood_hops's `run` in this process, its figures rendered by
    report.py into the section and under the label the JSON names."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ood_hops
    import report

    save_checkpoint(tmp_path / "model")
    per_hop = ood_hops.run(tmp_path / "model", "chain", [1, 2], 8, 8, ood_hops.BENCHMARK_SEED)
    assert [row["n"] for row in per_hop.values()] == [8, 8]
    docs = tmp_path / "docs"
    docs.mkdir()
    run = {"command": "python benchmarks/ood_hops.py --model model", "label": "tiny untrained model",
           "section": "ablations", "model": "model", "variant": "chain", "n": 8, "seed": ood_hops.BENCHMARK_SEED,
           "per_hop": per_hop, "seconds": 1.0}
    (docs / "ood_hops_tiny.json").write_text(json.dumps(run))
    monkeypatch.setattr(sys, "argv", ["report.py", "--docs", str(docs), "--readme", str(tmp_path / "none.md")])
    report.main()
    tables = (docs / "results.md").read_text()
    row = per_hop[2]
    assert "### tiny untrained model" in tables.split("## Trained ablations")[1]
    assert f"| 2 | {100 * row['answer_exact_match']:.1f} [" in tables


def write_trainer_state(checkpoint, evaluations):
    """A checkpoint's trainer_state.json whose log history holds a training log and these evaluations."""
    checkpoint.mkdir(parents=True)
    history = [{"loss": 1.0, "step": 1}, *evaluations]
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}))


def test_training_curve_reads_the_newest_checkpoint_and_plots_by_step_and_time(tmp_path, monkeypatch, capsys):
    timed, untimed = tmp_path / "timed", tmp_path / "untimed"
    first = {"step": 2, "eval_exact_match": 0.5, "eval_exact_match_hop_3": 0.4, "eval_train_seconds": 10.0}
    second = {"step": 4, "eval_exact_match": 0.75, "eval_exact_match_hop_3": 0.7, "eval_train_seconds": 20.0}
    write_trainer_state(timed / "checkpoint-2", [first])
    write_trainer_state(timed / "checkpoint-4", [first, second])
    (timed / "final").mkdir()
    results = {"train_runtime": 24.0, "train_seconds_total": 25.0}
    (timed / "final" / "train_results.json").write_text(json.dumps(results))
    write_trainer_state(untimed / "checkpoint-4", [{"step": 4, "eval_exact_match": 0.25}])
    command = [sys.executable, str(ROOT / "benchmarks" / "training_curve.py"), "--run", str(timed), "--run",
               str(untimed), "--label", "with time", "--label", "without", "--out", str(tmp_path / "curve.json")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with time: 2 evaluations, last at step 4: 75.0%" in result.stdout
    runs = json.loads((tmp_path / "curve.json").read_text())["runs"]
    assert runs[0]["read_from"].endswith("checkpoint-4") and runs[0]["train_seconds_total"] == 25.0
    assert [(p["step"], p["exact_match"], p["train_seconds"]) for p in runs[0]["points"]] == [(2, 0.5, 10.0),
                                                                                          (4, 0.75, 20.0)]
    assert runs[0]["points"][1]["per_group"] == {"3": 0.7}
    assert runs[1]["label"] == "without" and runs[1]["points"][0]["train_seconds"] is None
    assert runs[1]["train_seconds_total"] is None
    assert (tmp_path / "curve.png").stat().st_size > 0
    # --keep carries an earlier curve's runs over; a run read again replaces its kept curve instead of doubling it.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import training_curve

    monkeypatch.setattr(sys, "argv", ["training_curve.py", "--keep", str(tmp_path / "curve.json"), "--run", str(timed),
                                      "--label", "read again", "--out", str(tmp_path / "merged.json")])
    training_curve.main()
    merged = json.loads((tmp_path / "merged.json").read_text())["runs"]
    assert [run["label"] for run in merged] == ["without", "read again"]
    assert merged[1]["points"] == runs[0]["points"]
    # A directory without checkpoints, labels that do not pair with the runs, a --keep that is not a curve JSON and
    # neither a run nor a kept curve are refused in one line.
    (tmp_path / "list.json").write_text("[]")
    for extra, message in ((["--run", str(tmp_path)], "has no checkpoint-N/trainer_state.json"),
                           (["--run", str(timed), "--label", "a", "--label", "b"], "give one --label per --run"),
                           (["--keep", str(tmp_path / "missing.json")], "not a curve JSON of this script"),
                           (["--keep", str(tmp_path / "list.json")], "not a curve JSON of this script"),
                           ([], "give a --run, or --keep an earlier curve")):
        monkeypatch.setattr(sys, "argv", ["training_curve.py", *extra, "--out", str(tmp_path / "x.json")])
        with pytest.raises(SystemExit) as stop:
            training_curve.main()
        assert message in str(stop.value.code) + capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
