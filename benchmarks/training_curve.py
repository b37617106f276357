"""Validation accuracy over training, read from the runs' own logs: one curve per run, by step and, where the run
logged it, by minutes of training.

    python benchmarks/training_curve.py --run outputs/prosqa [--run DIR ...] [--label TEXT ...] [--keep OLD.json]
                                        --out FILE.json

A run is a trainer `--output_dir`. Its newest `checkpoint-N/trainer_state.json` holds every in-training evaluation
(`eval_exact_match`: exact match of `reason()` on the validation examples, EMA weights where the run keeps them, at
each `eval_steps`), and, from runs that logged it, `eval_train_seconds`: the wall seconds of training up to it,
evaluations included, summed over resumes. `final/` adds the run's total seconds and command where it exists.
`--keep` carries over the runs of an earlier curve JSON (runs whose checkpoints are gone); a `--run` of the same
directory replaces its kept curve. Writes the JSON and a plot beside it (`.png`).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_cards.generate import training_record  # noqa: E402
from ood_hops import command_line, save_figure, write_results  # noqa: E402
from trainers.checkpoints import checkpoint_step  # noqa: E402


def newest_trainer_state(run_dir):
    """The log history of the run's newest checkpoint (it holds every entry before it too)."""
    checkpoints = [path for path in Path(run_dir).glob("checkpoint-*") if checkpoint_step(path) is not None
                   and (path / "trainer_state.json").is_file()]
    if not checkpoints:
        raise SystemExit(f"error: {run_dir} has no checkpoint-N/trainer_state.json (is it a trainer --output_dir?)")
    newest = max(checkpoints, key=checkpoint_step)
    return newest, json.loads((newest / "trainer_state.json").read_text())["log_history"]


def read_curve(run_dir, label=None):
    """One run's evaluations: step, exact match overall and per group (hops, or path length), training seconds."""
    checkpoint, history = newest_trainer_state(run_dir)
    points = []
    for entry in history:
        if "eval_exact_match" not in entry:
            continue
        groups = {key.removeprefix("eval_exact_match_hop_"): value for key, value in entry.items()
                  if key.startswith("eval_exact_match_hop_")}
        points.append({"step": entry["step"], "exact_match": entry["eval_exact_match"], "per_group": groups,
                       "train_seconds": entry.get("eval_train_seconds")})
    record = training_record(Path(run_dir) / "final")  # its fields are None where the run has no final checkpoint
    return {"run": str(run_dir), "label": label or Path(run_dir).name, "read_from": str(checkpoint),
            "train_seconds_total": record["train_seconds"], "training_command": record["training_command"],
            "points": points}


def kept_runs(parser, path):
    """The runs of an earlier curve JSON (none without a path); a missing or broken file is a one-line error."""
    if path is None:
        return []
    try:
        return json.loads(Path(path).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        parser.error(f"--keep {path}: not a curve JSON of this script ({type(error).__name__}: {error})")


def plot_curves(json_path, png_path=None):
    """Validation exact match by step, and by minutes for the runs that logged their training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = json.loads(Path(json_path).read_text())["runs"]
    timed = [run for run in runs if run["points"] and all(p["train_seconds"] is not None for p in run["points"])]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 7, 4), squeeze=False)
    for run in runs:
        total = f" ({run['train_seconds_total']:,.0f} s)" if run["train_seconds_total"] else ""
        accuracy = [100 * p["exact_match"] for p in run["points"]]
        line, = axes[0][0].plot([p["step"] for p in run["points"]], accuracy, marker=".", label=run["label"] + total)
        if run in timed:  # the same colour in both panels
            axes[0][1].plot([p["train_seconds"] / 60 for p in run["points"]], accuracy, marker=".",
                            color=line.get_color(), label=run["label"])
    axes[0][0].set_xlabel("training step")
    if timed:
        axes[0][1].set_xlabel("minutes of training (evaluations included)")
    for ax in axes[0]:
        ax.set_ylabel("validation exact match %")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, json_path, png_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="a trainer --output_dir (repeat)")
    parser.add_argument("--label", action="append", default=None, help="one per --run, in order (default: its name)")
    parser.add_argument("--keep", default=None, help="an earlier curve JSON whose runs are carried over")
    parser.add_argument("--out", required=True, help="output JSON (the plot goes beside it)")
    args = parser.parse_args()
    if not args.run and not args.keep:
        parser.error("give a --run, or --keep an earlier curve")
    labels = args.label or [None] * len(args.run)
    if len(labels) != len(args.run):
        parser.error(f"give one --label per --run ({len(args.run)} runs, {len(labels)} labels)")
    kept = kept_runs(parser, args.keep)  # a broken --keep fails before any run is read
    runs = [read_curve(run, label) for run, label in zip(args.run, labels)]
    read_now = {run["run"] for run in runs}
    runs = [run for run in kept if run["run"] not in read_now] + runs
    for run in runs:
        last = run["points"][-1] if run["points"] else None
        print(f"{run['label']}: {len(run['points'])} evaluations" + (
            f", last at step {last['step']}: {100 * last['exact_match']:.1f}%" if last else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results({"command": command_line(), "runs": runs}, out, plot_curves)


if __name__ == "__main__":
    main()
