"""The CTR white paper's ablation table: each row trains the refiner with trainers/ctr.py under one change and
evaluates it on the same held-out retrieval examples.

    python benchmarks/ctr_ablations.py [--max_steps 2000] [--rows full no_query ...] [--label TEXT] [--out docs]

Writes OUT/ctr_ablations.json first (per row: the arguments, cos(y, y*) after every step, cos and mean steps with
halting, steps per difficulty quartile, wall time), then OUT/img/ctr_ablations.png drawn from the JSON. `--label`
(what the table is, e.g. the loss of its default row) is written into the JSON; copied to
docs/ctr_ablations_<name>.json, it is rendered by benchmarks/report.py with that label in its title.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "full": [],
    "no_query": ["--use_query", "false"],
    "no_centroid": ["--use_centroid", "false"],
    "attn_pool": ["--ctr.pool", "attn"],
    "lane_adapters": ["--ctr.adapters", "lora-rank=4"],
    "full_grad": ["--grad", "all"],
    "no_ema": ["--ema_decay", "0"],
    "no_latent_norm": ["--latent_norm", "false"],
    "gated_update": ["--gated_update", "true"],
    "no_monotone_loss": ["--monotone_loss_weight", "0"],
}


def train_row(name, extra, args, workdir):
    out = Path(workdir) / name
    command = [sys.executable, str(ROOT / "trainers" / "ctr.py"), "--output_dir", str(out), "--max_steps",
               str(args.max_steps), "--per_device_train_batch_size", "256", "--learning_rate", "3e-3",
               "--save_strategy", "no", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
               "--seed", str(args.seed), "--train_steps", str(args.train_steps), *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"row {name} failed:\n{result.stderr[-3000:]}")
    saved = json.loads((out / "final" / "refiner_eval.json").read_text())
    row = saved["test"]
    row.update(args=extra, train_steps=saved["args"]["train_steps"], seconds=time.perf_counter() - start)
    return row


def saved_results(json_path, settings, label=None):
    """The rows saved so far with the same settings (budget, seed, depth); other settings start a new table. A label
    only describes the table: a new one replaces the saved one and keeps the rows."""
    results = {"label": None, **settings, "rows": {}}
    if json_path.is_file():
        saved = json.loads(json_path.read_text())
        if all(saved.get(key) == value for key, value in settings.items()):
            results = saved
    if label is not None:
        results["label"] = label
    return results


def plot(json_path, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(json_path).read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in results["rows"].items():
        cosines = row["cosine_per_step"]
        ax.plot(range(0, len(cosines) + 1), [row["start_cosine"], *cosines], label=name)
    deepest = next(iter(results["rows"].values()))["train_steps"]
    ax.axvline(deepest, color="grey", linestyle=":", label="deepest trained step")
    ax.set_xlabel("refinement step s (0 = pooled candidates)")
    ax.set_ylabel("mean cos(y_s, y*), held-out")
    ax.set_title(f"CTR ablations, {results['max_steps']} training steps, seed {results['seed']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    return png_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_steps", type=int, default=32, help="deepest training depth S of every row")
    parser.add_argument("--out", default="outputs/ctr_ablations")
    parser.add_argument("--label", default=None, help="what the table is, in its title in docs/results.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "ctr_ablations.json"
    settings = {"max_steps": args.max_steps, "seed": args.seed, "train_steps": args.train_steps}
    with tempfile.TemporaryDirectory() as workdir:
        for name in tqdm(args.rows, desc="ablation rows"):
            r = train_row(name, ROWS[name], args, workdir)
            # Re-read: rows may be run by several invocations at once.
            results = saved_results(json_path, settings, args.label)
            results["rows"][name] = r
            json_path.write_text(json.dumps(results, indent=2))
            print(f"{name:>14}: cos {r['start_cosine']:.3f} -> step 1 {r['cosine_per_step'][0]:.3f} -> halted "
                  f"{r['halted_cosine']:.3f} in {r['mean_steps']:.2f} steps ({r['seconds']:.0f} s)")
    print(f"wrote {json_path} and {plot(json_path, out / 'img' / 'ctr_ablations.png')}")


if __name__ == "__main__":
    main()
