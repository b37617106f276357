"""Render the benchmark JSON files into docs/results_tables.md (every number there comes from a JSON file).

    python benchmarks/report.py [--run outputs/default/final] [--docs docs]

With `--run CHECKPOINT`, first runs the suite on it (ood_hops, depth_sweep, inference_ablations, probes,
throughput) and copies the JSON files and plots into `--docs` under the names below; then renders every table it
finds. The narrative in docs/results.md links to these tables.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
OOD_RUNS = {  # docs/<file> -> what it is
    "ood_hops_default.json": "default (GPT-2 backbone, looped latent core, token halting)",
    "ood_hops_default_on_chain.json": "default, evaluated on the seed's `chain` format",
    "ood_hops_default_mamba2.json": "default_mamba2 (not at the targets)",
    "ood_hops_baseline_no_loop.json": "baseline: no loop (one core pass, answer only)",
    "ood_hops_baseline_fixed_depth.json": "baseline: fixed depth (6 loops, answer only at the last)",
    "ood_hops_baseline_cot.json": "baseline: token recurrence (GPT-2 LM writes the path as tokens)",
}


def pct(x):
    return f"{100 * x:.1f}"


def ci(row, key):
    low, high = row[f"{key}_ci95"]
    return f"{pct(row[key])} [{pct(low)}, {pct(high)}]"


def ood_table(path, label):
    r = json.loads(path.read_text())
    lines = [f"### {label}", "",
             f"`{path.name}`: model `{r['model']}`, variant `{r['variant']}`, {r['n']} fresh prompts per hop count, "
             f"seed {r['seed']} + hops, {r['seconds']:.0f} s.", "",
             "| hops | answer % [95% CI] | trace % [95% CI] | halt at hops+1 % | mean loops | examples/s |",
             "|---|---|---|---|---|---|"]
    for hops, row in r["per_hop"].items():
        lines.append(f"| {hops} | {ci(row, 'answer_exact_match')} | {ci(row, 'trace_exact_match')} | "
                     f"{pct(row['halt_rate'])} | {row['mean_loops']:.2f} | {row['examples_per_second']:.0f} |")
    return lines


def comparison_table(docs):
    """Answer exact match of every run side by side, per hop count."""
    runs = {label: json.loads((docs / name).read_text()) for name, label in OOD_RUNS.items()
            if (docs / name).is_file() and "chain" not in name}
    hops = sorted({int(h) for r in runs.values() for h in r["per_hop"]})
    lines = ["### Answer exact match %, every run", "", "| run | " + " | ".join(map(str, hops)) + " |",
             "|---|" + "---|" * len(hops)]
    for label, r in runs.items():
        cells = [pct(r["per_hop"][str(h)]["answer_exact_match"]) if str(h) in r["per_hop"] else "" for h in hops]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def ablation_tables(path):
    r = json.loads(path.read_text())
    hops = list(next(iter(r["ablations"].values())))
    lines = ["### Inference ablations of the default checkpoint (answer %)", "",
             f"`{path.name}`: {r['n']} prompts per hop count, seed {r['seed']} + hops, {r['seconds']:.0f} s.", "",
             "| ablation | " + " | ".join(hops) + " |", "|---|" + "---|" * len(hops)]
    for name, row in r["ablations"].items():
        lines.append(f"| {name} | " + " | ".join(pct(row[h]["answer_exact_match"]) for h in hops) + " |")
    if not r.get("loop_rotary"):
        lines += ["", "Loop rotary off: not applicable, the default model is trained without loop rotary."]
    lines += ["", "### Halting modes on the same prompts (answer % / mean loops / examples/s)", "",
              "| halting | " + " | ".join(f"{h} hops" for h in hops) + " |", "|---|" + "---|" * len(hops)]
    for name, row in r["halting"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{pct(row[h]['answer_exact_match'])} / {row[h]['mean_loops']:.1f} / {row[h]['examples_per_second']:.0f}"
            for h in hops) + " |")
    return lines


def throughput_tables(path):
    r = json.loads(path.read_text())
    lines = ["### `reason()` throughput", "", f"`{path.name}`: model `{r['model']}`, {r['threads']} threads.", "",
             "| loops | batch | examples/s | peak RSS MB |", "|---|---|---|---|"]
    for row in r["loops"] + r["batch"]:
        lines.append(f"| {row['loops']} | {row['batch_size']} | {row['examples_per_second']:.0f} | {row['peak_rss_mb']:.0f} |")
    if "mixed_hops" in r:
        m = r["mixed_hops"]
        lines += ["", f"Mixed batch ({m['examples']} prompts, {m['hops'][0]}-{m['hops'][1]} hops): {m['sum_of_loops']} "
                      f"example-loops with token halting vs {m['fixed_depth_loops']} at a fixed depth of {m['fixed_depth']} "
                      f"(ratio {m['loop_ratio']:.2f}); wall-time ratio {m['time_ratio']:.2f}."]
    lines += ["", "| parameters | backbone | core | gate |", "|---|---|---|---|"]
    for name, counts in r["parameters"].items():
        lines.append(f"| {name} | {counts['backbone']:,} | {counts['core']:,} | {counts['gate']:,} |")
    return lines


def depth_sweep_table(path):
    rows = list(csv.DictReader(path.open()))
    loops = sorted({int(row["loops"]) for row in rows})
    hops = sorted({int(row["hops"]) for row in rows})
    lines = ["### Depth sweep: answer % at loop r, `<HALT>` masked", "", f"`{path.name}`", "",
             "| hops | " + " | ".join(f"r = {r}" for r in loops) + " |", "|---|" + "---|" * len(loops)]
    for h in hops:
        cells = {int(row["loops"]): row for row in rows if int(row["hops"]) == h}
        lines.append(f"| {h} | " + " | ".join(pct(float(cells[r]["answer_accuracy"])) if r in cells else "" for r in loops) + " |")
    return lines


def ctr_table(path):
    r = json.loads(path.read_text())
    depth = next(iter(r["rows"].values()))["train_steps"]
    lines = [f"### CTR refiner ablations, trained to depth {depth} (held-out cos(y, y*))", "",
             f"`{path.name}`: {r['max_steps']} training steps per row, seed {r['seed']}.", "",
             "| row | arguments | pooled y_0 | step 1 | best step | step 16 | step 32 | with halting | mean steps | steps by difficulty quartile | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        c = row["cosine_per_step"]
        best = max(range(len(c)), key=c.__getitem__)
        lines.append(
            f"| {name} | `{' '.join(row['args']) or '-'}` | {row['start_cosine']:.3f} | {c[0]:.3f} | {c[best]:.3f} (s={best + 1}) | "
            f"{c[15]:.3f} | {c[-1]:.3f} | {row['halted_cosine']:.3f} | {row['mean_steps']:.2f} | "
            f"{' / '.join(f'{s:.1f}' for s in row['steps_by_difficulty_quartile'])} | {row['seconds']:.0f} |")
    return lines


def run_suite(checkpoint, docs):
    out = Path("outputs/report")
    commands = [
        ["benchmarks/ood_hops.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/depth_sweep.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/inference_ablations.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/probes.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/throughput.py", "--model", checkpoint, "--out", str(out)],
    ]
    for command in tqdm(commands, desc="benchmarks"):
        subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], check=True)
    copies = {"ood_hops.json": "ood_hops_default.json", "depth_sweep.csv": "depth_sweep_default.csv",
              "inference_ablations.json": "inference_ablations_default.json", "probes.json": "probes_default.json",
              "throughput.json": "throughput_default.json", "ood_hops.png": "img/ood_hops_default.png",
              "depth_sweep.png": "img/depth_sweep_default.png"}
    for source, target in copies.items():
        if (out / source).is_file():
            shutil.copy(out / source, docs / target)
    for png in (out / "img").glob("probes_*.png"):
        shutil.copy(png, docs / "img" / png.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run the benchmark suite on this checkpoint first")
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    args = parser.parse_args()
    docs = Path(args.docs)
    if args.run:
        run_suite(args.run, docs)
    lines = ["# Result tables", "", "Generated by `python benchmarks/report.py` from the JSON and CSV files in this "
             "folder; do not edit by hand. The narrative, the failed runs and the commands are in `results.md`.", ""]
    if any((docs / name).is_file() for name in OOD_RUNS):
        lines += comparison_table(docs) + [""]
    for name, label in OOD_RUNS.items():
        if (docs / name).is_file():
            lines += ood_table(docs / name, label) + [""]
    renderers = {"inference_ablations_default.json": ablation_tables, "depth_sweep_default.csv": depth_sweep_table,
                 "throughput_default.json": throughput_tables, "ctr_ablations.json": ctr_table,
                 "ctr_ablations_train16.json": ctr_table}
    for name, render in renderers.items():
        if (docs / name).is_file():
            lines += render(docs / name) + [""]
    (docs / "results_tables.md").write_text("\n".join(lines))
    print(f"wrote {docs / 'results_tables.md'}")


if __name__ == "__main__":
    main()
