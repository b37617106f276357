"""Render the benchmark JSON files into docs/results.md (every number there comes from a JSON or CSV file).

    python benchmarks/report.py [--run outputs/default/final [--name default] [--label TEXT] [--section NAME]]
                                [--docs docs]

With `--run CHECKPOINT`, first runs the suite on it (ood_hops, depth_sweep, inference_ablations, probes,
throughput) and copies the JSON files and plots into `--docs` as `<benchmark>_<name>.*` (`--name default_mamba2`
for the Mamba2 default); then renders every table it finds. The narrative (how each default was found) is
docs/experiments.md.

How a run gets into the report: each JSON says what it is, there is no list of runs here. `docs/ood_hops_*.json`
carries the `--label` (one line: what the run is) and `--section` (one of SECTIONS, or a new name: new sections follow
the known ones, titled by their name) given to `benchmarks/ood_hops.py`, or to this script with `--run`, which passes
them on. A JSON with no label is titled by its file name (in the comparison tables too), one with no section goes
under `other`, last. `docs/ctr_ablations*.json` carries the `--label` given to `benchmarks/ctr_ablations.py`. Within
a section (and among the CTR tables), runs follow their optional integer `order` (written once into the runs recorded
before these keys existed, to keep the order they had), then the runs without one by file name. So adding a run is: run its
benchmark with `--label`/`--section`, copy its JSON to `docs/ood_hops_<name>.json` (`--run ... --name` does both),
run this script.
"""

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from itertools import groupby
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
# Each backbone's looped model against its three baselines trained on the same recipe, one panel each
# (docs/img/baselines.png). The baselines were trained with the hop curriculum, so the Mamba2 panel shows the
# looped model trained with it too; the Mamba2 default (no curriculum) is in the "Mamba2 backbone" table.
BASELINE_PANELS = {
    "GPT-2 backbone (default)": ["ood_hops_default.json", "ood_hops_baseline_no_loop.json",
                                 "ood_hops_baseline_fixed_depth.json", "ood_hops_baseline_cot_conv.json"],
    "Mamba2 backbone (all four with the hop curriculum)": [
        "ood_hops_mamba2_curriculum.json", "ood_hops_mamba2_baseline_no_loop.json",
        "ood_hops_mamba2_baseline_fixed_depth.json", "ood_hops_mamba2_baseline_cot.json"],
}
PANEL_LEGEND = ["looped core, token halting", "no loop", "fixed depth (6 loops)", "token recurrence"]
# The sections of the OOD tables, in the order they are rendered.
SECTIONS = {
    "default": "The default run",
    "baselines": "Baselines (same config, data and budget)",
    "ablations": "Trained ablations (the default config with one switch changed)",
    "depth": "Depth extrapolation: halting head, extra loops, positions, stabilisers",
    "mamba2": "Mamba2 backbone",
    "lanes": "Lanes",
}
OTHER = "other"  # the section of a run whose JSON names none


def pct(x):
    return f"{100 * x:.1f}"


def ci(row, key):
    low, high = row[f"{key}_ci95"]
    return f"{pct(row[key])} [{pct(low)}, {pct(high)}]"


def code(text):
    """`text` as a Markdown code span. A command that passed a `--label` may hold backticks: those get a longer fence
    (padded with spaces), as Markdown asks."""
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall("`+", text)) + 1)
    return f"{fence} {text} {fence}"


def ood_table(path, label):
    r = json.loads(path.read_text())
    command = r.get("command") or f"python benchmarks/ood_hops.py --model {r['model']} --variant {r['variant']}"
    lines = [f"### {label}", "", f"`{path.name}` from {code(command)}: {r['n']} fresh prompts per hop count, seed "
             f"{r['seed']} + hops, {r['seconds']:.0f} s."]
    if r.get("training_command"):
        trained = f" in {r['train_seconds']:.0f} s" if r.get("train_seconds") else ""
        lines[-1] += f" Trained{trained} by `{r['training_command']}`."
    # Runs measured before prompt lengths were recorded have no such column.
    lengths = all("mean_prompt_tokens" in row for row in r["per_hop"].values())
    lines += ["",
             "| hops | answer % [95% CI] | trace % [95% CI] | halt at hops+1 % | mean loops | examples/s |"
             + (" prompt tokens |" if lengths else ""),
             "|---|---|---|---|---|---|" + ("---|" if lengths else "")]
    for hops, row in r["per_hop"].items():
        lines.append(f"| {hops} | {ci(row, 'answer_exact_match')} | {ci(row, 'trace_exact_match')} | "
                     f"{pct(row['halt_rate'])} | {row['mean_loops']:.2f} | {row['examples_per_second']:.0f} |"
                     + (f" {row['mean_prompt_tokens']:.0f} |" if lengths else ""))
    return lines


def run_order(r, path):
    """Sort key of a run within its table or section: its `order` if it has one, then the rest by file name."""
    return (r.get("order") is None, r.get("order") or 0, path.name)


def section_order(section):
    """Sort key of a section: SECTIONS in their order, then new sections by name, then `other`."""
    rank = list(SECTIONS).index(section) if section in SECTIONS else len(SECTIONS) + (section == OTHER)
    return rank, section


def ood_runs(docs):
    """Every docs/ood_hops_*.json as (path, section, label, results), in report order."""
    runs = []
    for path in docs.glob("ood_hops_*.json"):
        r = json.loads(path.read_text())
        runs.append((path, r.get("section") or OTHER, r.get("label") or path.name, r))
    return sorted(runs, key=lambda run: (section_order(run[1]), run_order(run[3], run[0])))


def comparison_tables(runs):
    """Answer and trace exact match of every `shuffled` pointer-lane run side by side, per hop count."""
    # Only the standard benchmark: other distractor settings measure other prompts, another loop cap other hop counts.
    runs = [(label, r) for _, _, label, r in runs if r["variant"] == "shuffled" and r.get("lane", "pointer") == "pointer"
            and all(r.get(option) is None for option in ("distractors", "distractor_hops", "max_loops"))]
    hops = sorted({int(h) for _, r in runs for h in r["per_hop"]})
    lines = []
    for key, title in (("answer_exact_match", "Answer"), ("trace_exact_match", "Trace")):
        lines += [f"### {title} exact match %, every run (`shuffled`)", "",
                  "| run | " + " | ".join(map(str, hops)) + " |", "|---|" + "---|" * len(hops)]
        for label, r in runs:
            cells = [pct(r["per_hop"][str(h)][key]) if str(h) in r["per_hop"] else "" for h in hops]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def baselines_plot(docs):
    """Answer exact match vs hops with 95% intervals: each backbone's looped model against its baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BASELINE_PANELS), figsize=(12, 4), sharey=True)
    for ax, (title, names) in zip(axes, BASELINE_PANELS.items()):
        trained = None
        for name, label in zip(names, PANEL_LEGEND):
            if not (docs / name).is_file():
                continue
            results = json.loads((docs / name).read_text())
            per_hop, trained = results["per_hop"], trained or results.get("trained_hops")
            hops = sorted(int(h) for h in per_hop)
            ax.plot(hops, [100 * per_hop[str(h)]["answer_exact_match"] for h in hops], marker="o", label=label)
            ax.fill_between(hops, *[[100 * per_hop[str(h)]["answer_exact_match_ci95"][i] for h in hops] for i in (0, 1)],
                            alpha=0.2)
        if trained and None not in trained:  # the range the looped model (and its baselines) trained on
            ax.axvspan(trained[0] - 0.5, trained[1] + 0.5, color="grey", alpha=0.15,
                       label=f"trained hops ({trained[0]}-{trained[1]})")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
        ax.set_xlabel("hops")
        ax.set_title(title)
    axes[0].set_ylabel("answer exact match (%)")
    axes[0].set_ylim(0, 101)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    (docs / "img").mkdir(exist_ok=True)
    fig.savefig(docs / "img" / "baselines.png", dpi=110)
    plt.close(fig)
    return ["![default vs baselines](img/baselines.png)", "",
            "Answer exact match (1,000 fresh `shuffled` prompts per hop count, 95% intervals shaded) of each backbone's "
            "looped model against its three baselines, all four trained with the hop curriculum (on Mamba2 the run "
            "before the default dropped it), drawn from the JSON files named in the tables below.", ""]


def ablation_tables(path):
    r = json.loads(path.read_text())
    hops = list(next(iter(r["ablations"].values())))
    lines = [f"### Inference ablations of `{r['model']}` (answer %)", "",
             f"`{path.name}` from `python benchmarks/inference_ablations.py --model {r['model']}`: {r['n']} prompts per "
             f"hop count, seed {r['seed']} + hops, {r['seconds']:.0f} s (ablations and halting modes together).", "",
             "| ablation | " + " | ".join(hops) + " |", "|---|" + "---|" * len(hops)]
    for name, row in r["ablations"].items():
        lines.append(f"| {name} | " + " | ".join(pct(row[h]["answer_exact_match"]) for h in hops) + " |")
    if not r.get("loop_rotary"):
        lines += ["", "Loop rotary off: not applicable, this model is trained without loop rotary."]
    lines += ["", "### Halting modes on the same prompts (answer % / mean loops / examples/s)", "",
              "| halting | " + " | ".join(f"{h} hops" for h in hops) + " |", "|---|" + "---|" * len(hops)]
    for name, row in r["halting"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{pct(row[h]['answer_exact_match'])} / {row[h]['mean_loops']:.1f} / {row[h]['examples_per_second']:.0f}"
            for h in hops) + " |")
    return lines


def throughput_tables(path):
    r = json.loads(path.read_text())
    source = f" from `{r['command']}`, {r['seconds']:.0f} s" if "command" in r else ""
    lines = [f"### `reason()` throughput of `{r['model']}`", "", f"`{path.name}`{source}; torch threads: {r['threads']}.", "",
             "`reason() MB`: the peak memory the `reason` calls add to the loaded model (`-` where the row predates "
             "that measure); `peak RSS MB`: the whole process, imports included.", "",
             "| loops | batch | examples/s | reason() MB | peak RSS MB |", "|---|---|---|---|---|"]
    for row in r["loops"] + r["batch"]:
        added = f"{row['reason_mb']:.1f}" if "reason_mb" in row else "-"
        lines.append(f"| {row['loops']} | {row['batch_size']} | {row['examples_per_second']:.0f} | {added} "
                     f"| {row['peak_rss_mb']:.0f} |")
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
    sidecar = path.with_suffix(".json")  # command and wall time, written by depth_sweep.py beside its CSV
    run = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    source = f"`{run['command']}`, {run['seconds']:.0f} s" if run else "`python benchmarks/depth_sweep.py`"
    lines = [f"### Depth sweep: answer % at loop r, `<HALT>` masked (`{path.name}`)", "",
             f"From {source}: {rows[0]['n']} prompts per hop count, seed "
             f"{int(rows[0]['seed']) - int(rows[0]['hops'])} + hops.", "",
             "| hops | " + " | ".join(f"r = {r}" for r in loops) + " |", "|---|" + "---|" * len(loops)]
    for h in hops:
        cells = {int(row["loops"]): row for row in rows if int(row["hops"]) == h}
        lines.append(f"| {h} | " + " | ".join(pct(float(cells[r]["answer_accuracy"])) if r in cells else "" for r in loops) + " |")
    return lines


def largest_fall(curve):
    """The largest drop from one step to the next (0 for a curve that never falls)."""
    return max([0.0] + [a - b for a, b in zip(curve, curve[1:])])


def ctr_files(docs):
    """The names of docs/ctr_ablations*.json, in the order of their tables."""
    paths = docs.glob("ctr_ablations*.json")
    return [path.name for path in sorted(paths, key=lambda path: run_order(json.loads(path.read_text()), path))]


def ctr_table(path):
    r = json.loads(path.read_text())
    depth = next(iter(r["rows"].values()))["train_steps"]
    label = f", {r['label']}" if r.get("label") else ""  # what the table is, e.g. the default row's loss then
    lines = [f"### CTR refiner ablations, {r['max_steps']} training steps, trained to depth {depth}{label} "
             "(held-out cos(y, y*))",
             "", f"`{path.name}` from `python benchmarks/ctr_ablations.py --max_steps {r['max_steps']}`: seed {r['seed']}. "
             "`largest fall` is the largest drop of the mean cosine from one step to the next, over all 32 steps run "
             "without halting, then over the per-step trace of `refine()` with halting (a stopped example keeps its "
             "answer; `-` where the row predates that measure). `significant falls`: the steps whose mean change, paired "
             "over the same examples, is below zero by more than its 95% interval (fixed depth / halting trace).", "",
             "| row | arguments | pooled y_0 | step 1 | best step | step 16 | step 32 | largest fall | with halting | "
             "largest fall, halting trace | significant falls | mean steps | steps by difficulty quartile | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        c = row["cosine_per_step"]
        best = max(range(len(c)), key=c.__getitem__)
        trace = row.get("trace_cosine_per_step")
        trace_fall = f"{largest_fall(trace):.5f}" if trace else "-"
        falls = (f"{len(row['significant_falls'])} / {len(row['trace_significant_falls'])}"
                 if "significant_falls" in row else "-")
        lines.append(
            f"| {name} | `{' '.join(row['args']) or '-'}` | {row['start_cosine']:.3f} | {c[0]:.3f} | {c[best]:.3f} (s={best + 1}) | "
            f"{c[15]:.3f} | {c[-1]:.3f} | {largest_fall(c):.5f} | {row['halted_cosine']:.3f} | {trace_fall} | {falls} | {row['mean_steps']:.2f} | "
            f"{' / '.join(f'{s:.1f}' for s in row['steps_by_difficulty_quartile'])} | {row['seconds']:.0f} |")
    return lines


# The published ProsQA test accuracies (Coconut, Hao et al. 2024, Table 1: GPT-2 124M pretrained, 4 GPUs, 50 epochs on
# the 17,886-example train split), next to which our runs are shown.
PROSQA_PUBLISHED = {"Coconut": 97.0, "iCoT": 98.2, "CoT": 77.5, "no-CoT": 76.7, "pause tokens": 75.9}
HALTING_PREFIX = "prosqa_halting_"  # benchmarks/prosqa_halting.py's JSON files: a table of their own


def robustness_tables(docs):
    """`fault_injection.json` (kills during training, then resumes) and `profile_*.json` (benchmarks/profile_mamba2.py:
    ms per training step of config variants), one table each, when present."""
    lines = []
    faults = docs / "fault_injection.json"
    if faults.is_file():
        r = json.loads(faults.read_text())
        lines += ["## Fault injection", "",
                  f"{code(r['command'])}: the trainer killed (SIGKILL) at {r['trials']} random moments of a tiny run, "
                  f"{r['kills_inside_checkpoint_writes']} of them inside a checkpoint write, then resumed with "
                  f"`--resume_from_checkpoint latest`: **{r['resumed_identical']} of {r['trials']}** ended with weights "
                  f"identical to the uninterrupted run (max abs diff 0), {r['resume_failures']} resume failures.", ""]
    for path in sorted(docs.glob("profile_*.json")):
        r = json.loads(path.read_text())
        config = Path(r.get("config", "default_mamba2.yaml")).name  # profiles written before --config: the Mamba2 one
        lines += [f"## Training step of `{config}` (`{path.name}`)", "",
                  f"{code(r['command'])} ({r['threads']} threads, batch {r['batch_size']}, variants timed interleaved):",
                  "", "| variant | ms per step (median) |", "|---|---|"]
        lines += [f"| {code(variant)} | {row['ms_per_step_median']:.1f} |" for variant, row in r["variants"].items()]
        lines += ["", "Top operators of `" + r["profiled_variant"] + "` (self CPU share): " + ", ".join(
            f"`{op['op']}` {100 * op['share']:.1f}%" for op in r["top_ops_self_cpu"][:6]) + ".", ""]
    return lines


def prosqa_tables(docs):
    """One row per `docs/prosqa_*.json` (written by benchmarks/prosqa.py; `label` says what the run is): accuracy,
    path validity and `<HALT>` over the whole split, then deeper generated graphs, each with its 95% interval."""
    paths = [path for path in docs.glob("prosqa_*.json") if not path.name.startswith(HALTING_PREFIX)]
    paths.sort(key=lambda path: run_order(json.loads(path.read_text()), path))
    if not paths:
        return []
    lines = ["## ProsQA", "",
             "Accuracy as the Coconut paper computes it (the answer sentence `<person> is a <concept>.` equals "
             "`answer`), path validity (the loops' concepts form an edge path from the person to the answer; how many "
             "were shortest in brackets), on the split each JSON names, then on generated graphs with 7-8 step paths "
             "(never seen in training). Published test accuracy for comparison (GPT-2 124M, 50 epochs on the published "
             "train split): " + ", ".join(f"{name} {value}%" for name, value in PROSQA_PUBLISHED.items()) + ".", "",
             "| run | split | accuracy % [95% CI] | valid path % (shortest) | halted % | mean loops | deep 7-8: accuracy "
             "% [95% CI] | deep: valid path % | JSON |", "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        r = json.loads(path.read_text())
        row = r["data_figures"]["per_path_length"]["all"]
        deep = (r.get("deep_figures") or {}).get("per_path_length", {}).get("all")
        deep_cells = f"{ci(deep, 'accuracy')} | {pct(deep['valid_path'])}" if deep else "- | -"
        lines.append(f"| {r.get('label') or path.stem} | `{Path(r['data']).name}` (n={row['n']}) | "
                     f"{ci(row, 'accuracy')} | {pct(row['valid_path'])} ({pct(row['valid_shortest_path'])}) | "
                     f"{pct(row['halted'])} | {row['mean_loops']:.2f} | {deep_cells} | `{path.name}` |")
    lines += ["", "Per shortest-path length (accuracy %): " + "; ".join(
        f"`{path.name}`: " + ", ".join(f"{n} steps {pct(row['accuracy'])}" for n, row in
                                       json.loads(path.read_text())["data_figures"]["per_path_length"].items() if n != "all")
        for path in paths) + ".", ""]
    return lines


def halting_files(docs, sweeps):
    """(path, parsed JSON) of each `docs/prosqa_halting_*.json` written with `--sweep` (`sweeps`) or without."""
    files = [(path, json.loads(path.read_text())) for path in sorted(docs.glob(f"{HALTING_PREFIX}*.json"))]
    return [(path, r) for path, r in files if bool(r.get("threshold_sweep")) == sweeps]


def prosqa_halting_table(docs):
    """One row per shortest-path length of each `docs/prosqa_halting_*.json` (benchmarks/prosqa_halting.py): when
    the model answered against loop d + 1, what it answered, and its search at loop d + 1 with the halt ignored."""
    files = halting_files(docs, sweeps=False)  # a sweep has its own table
    if not files:
        return []
    lines = ["ProsQA halting (`benchmarks/prosqa_halting.py`): when a frontier model answers against loop d + 1, where "
             "its targets put the answer, what it answers, and, with the halt ignored, whether loop d + 1 ranks the "
             "target above the other option and first of all tokens (timed by d, which the model is not told: a "
             "diagnostic of the search, not an accuracy).", "",
             "| model | data | d | n | early % | on time % | late % | target % | other option % | neither % | "
             "d + 1: target over other % | d + 1: target first % | JSON |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path, r in files:
        data = "generated 7-8 step graphs" if r["data"] == "generated" else f"`{Path(r['data']).name}`"
        for d, row in r["per_path_length"].items():
            cells = " | ".join(pct(row[key]) for key in ("early", "on_time", "late", "target", "other_option",
                                                         "neither", "target_beats_other_at_d+1", "target_best_at_d+1"))
            lines.append(f"| `{r['model']}` | {data} | {d} | {row['n']} | {cells} | `{path.name}` |")
    return lines + [""]


def prosqa_threshold_table(docs):
    """One row per `docs/prosqa_halting_*.json` written with `--sweep`: the `token` mode's accuracy (and mean loops)
    over the whole set at each p(`<HALT>`) threshold."""
    sweeps = halting_files(docs, sweeps=True)
    if not sweeps:
        return []
    thresholds = sorted({float(t) for _, r in sweeps for t in r["threshold_sweep"]})
    lines = ["ProsQA, the `token` halting mode at each p(`<HALT>`) threshold (`halt_token_threshold`; 0: the best "
             "token alone decides), from one run of loops with the halt ignored (`benchmarks/prosqa_halting.py "
             "--sweep`): accuracy % over the set (mean loops).", "",
             "| model | data | n | " + " | ".join(f"p >= {t:g}" for t in thresholds) + " | JSON |",
             "|---|---|---|" + "---|" * len(thresholds) + "---|"]
    by_data = defaultdict(list)  # data -> each model's {threshold: row over the whole set}
    for path, r in sweeps:
        data = f"generated 7-8 step graphs, seed {r['seed']}" if r["data"] == "generated" else f"`{Path(r['data']).name}`"
        rows = {float(t): groups["all"] for t, groups in r["threshold_sweep"].items()}
        by_data[data].append(rows)
        cells = " | ".join(f"{pct(rows[t]['accuracy'])} ({rows[t]['mean_loops']:.2f})" if t in rows else "-"
                           for t in thresholds)
        lines.append(f"| `{r['model']}` | {data} | {r['n']} | {cells} | `{path.name}` |")
    for data, models in by_data.items():  # the mean over models, where every model has the threshold
        cells = " | ".join(f"{100 * sum(m[t]['accuracy'] for m in models) / len(models):.2f}"
                           if all(t in m for m in models) else "-" for t in thresholds)
        lines.append(f"| mean over the {len(models)} models | {data} | - | {cells} | - |")
    return lines + [""]


def run_suite(checkpoint, docs, name, label=None, section=None):
    out = Path("outputs/report")
    # The OOD JSON records what the run is, for its table here.
    described = [*(["--label", label] if label else []), *(["--section", section] if section else [])]
    commands = [
        ["benchmarks/ood_hops.py", "--model", checkpoint, "--out", str(out), *described],
        ["benchmarks/depth_sweep.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/inference_ablations.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/probes.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/throughput.py", "--model", checkpoint, "--out", str(out)],
    ]
    for command in tqdm(commands, desc="benchmarks"):
        subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], check=True)
    copies = {"ood_hops.json": f"ood_hops_{name}.json", "depth_sweep.csv": f"depth_sweep_{name}.csv",
              "depth_sweep.json": f"depth_sweep_{name}.json",
              "inference_ablations.json": f"inference_ablations_{name}.json", "probes.json": f"probes_{name}.json",
              "throughput.json": f"throughput_{name}.json", "ood_hops.png": f"img/ood_hops_{name}.png",
              "depth_sweep.png": f"img/depth_sweep_{name}.png"}
    # The default's probe plots keep their names (the docs link them); another run's get its name after `probes`.
    probes = "probes" if name == "default" else f"probes_{name}"
    copies |= {f"img/{png.name}": "img/" + png.name.replace("probes", probes, 1) for png in (out / "img").glob("probes_*.png")}
    for source, target in copies.items():
        if (out / source).is_file():
            shutil.copy(out / source, docs / target)


def machine_line(docs):
    """Where the default run's benchmark ran, as its JSON records it."""
    path = docs / "ood_hops_default.json"
    if not path.is_file():
        return []
    machine = json.loads(path.read_text())["machine"]
    return [f"Machine (from `{path.name}`): {machine['platform']}, {machine.get('threads', machine.get('cpu_count'))} torch threads, "
            f"torch {machine['torch']}.", ""]


def readme_summary(docs):
    """The README's results block: the default run's answer and trace exact match per hop count."""
    r = json.loads((docs / "ood_hops_default.json").read_text())
    hops = list(r["per_hop"])
    trained = f", trained on {r['trained_hops'][0]}-{r['trained_hops'][1]} hops" if r.get("trained_hops") else ""
    timing = f" in {r['train_seconds']:.0f} s of training" if r.get("train_seconds") else ""
    source = f", {code(r['command'])}" if r.get("command") else ""
    lines = [f"The default checkpoint{trained}{timing}, on {r['n']:,} fresh `{r['variant']}` prompts per hop count "
             f"(seed {r['seed']:,} + hops{source}):", "",
             "| hops | " + " | ".join(hops) + " |", "|---|" + "---|" * len(hops)]
    for key, name in (("answer_exact_match", "answer exact match %"), ("trace_exact_match", "trace exact match % (every loop right)"),
                      ("halt_rate", "`<HALT>` at hops + 1 %")):
        lines.append(f"| {name} | " + " | ".join(pct(r["per_hop"][h][key]) for h in hops) + " |")
    return lines


def update_readme(readme, block):
    """Replace what sits between the README's results markers."""
    text = readme.read_text()
    start = text.index("<!-- results:start")
    start = text.index("-->", start) + len("-->")
    end = text.index("<!-- results:end -->")
    readme.write_text(text[:start] + "\n" + "\n".join(block) + "\n" + text[end:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run the benchmark suite on this checkpoint first")
    parser.add_argument("--name", default="default", help="with --run: the name its files get in --docs")
    parser.add_argument("--label", default=None, help="with --run: what the run is, the title of its OOD table")
    parser.add_argument("--section", default=None, help="with --run: the section of its OOD table (see SECTIONS)")
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README whose results block to regenerate")
    args = parser.parse_args()
    if not args.run and (args.label or args.section):
        parser.error("--label and --section go with --run (they describe its OOD run)")
    docs = Path(args.docs)
    if args.run:
        run_suite(args.run, docs, args.name, args.label, args.section)
    lines = ["# Measured results", "",
             "Generated by `python benchmarks/report.py` from the JSON and CSV files in this folder (each written by "
             "the benchmark named with it); do not edit by hand. How each default was found, the failed runs and what "
             "the tables mean: [`experiments.md`](experiments.md).", ""]
    lines += machine_line(docs)
    lines += baselines_plot(docs)
    runs = ood_runs(docs)
    lines += comparison_tables(runs)
    for section, section_runs in groupby(runs, key=lambda run: run[1]):
        lines += [f"## {SECTIONS.get(section, section)}", ""]
        for path, _, label, _ in section_runs:
            lines += ood_table(path, label) + [""]
    lines += prosqa_tables(docs) + prosqa_halting_table(docs) + prosqa_threshold_table(docs)
    lines += robustness_tables(docs)
    renderers = {"inference_ablations_default.json": ablation_tables, "depth_sweep_default.csv": depth_sweep_table,
                 "throughput_default.json": throughput_tables} | dict.fromkeys(ctr_files(docs), ctr_table)
    for pattern, render in (("inference_ablations_*.json", ablation_tables), ("depth_sweep_*.csv", depth_sweep_table),
                            ("throughput_*.json", throughput_tables)):
        renderers |= {path.name: render for path in sorted(docs.glob(pattern)) if path.name not in renderers}
    rendered = [(name, render) for name, render in renderers.items() if (docs / name).is_file()]
    if rendered:
        lines += ["## Inference ablations, halting modes, depth sweeps, throughput, CTR refiner", ""]
    for name, render in rendered:
        lines += render(docs / name) + [""]
    (docs / "results.md").write_text("\n".join(lines))
    print(f"wrote {docs / 'results.md'}")
    readme = Path(args.readme)
    if readme.is_file() and (docs / "ood_hops_default.json").is_file():
        update_readme(readme, readme_summary(docs))
        print(f"updated the results block of {readme}")


if __name__ == "__main__":
    main()
