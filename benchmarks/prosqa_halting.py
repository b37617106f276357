"""ProsQA halting diagnostic: when a frontier model answers, against how far its search has come.

    python benchmarks/prosqa_halting.py --model outputs/prosqa/final [--n 1000] [--data FILE] [--out FILE]
        [--sweep THRESHOLD ...]

On each graph (default: `benchmarks/prosqa.py`'s generated 7-8 step set, same seed) it runs the model's own `reason()`
and, apart from it, `--loops` loops with the halt ignored, and reports per shortest-path length d (95% intervals):

- when the model answers: its answer loop against loop d + 1, where frontier targets put the answer (after d
  frontiers): early, on time or late;
- what it answers: the target, the other option, or neither (a concept from its search, not an option);
- at loop d + 1, with the halt ignored: whether the target's logit beats the other option's, and whether the target
  is that loop's best token other than `<HALT>`. This readout is timed by d, which the model is not told: it is a
  diagnostic of the search, not an accuracy.

With `--sweep 0.5 0.8 ...` it also scores the `token` mode at each p(`<HALT>`) threshold (`halt_token_threshold`:
an unsure `<HALT>` does not stop the loop), per d, off the same loops (`--halt_token_threshold` sets the one the
diagnostic above runs with). Choose a threshold on valid and on generated graphs of another seed, not on the set
you report.

Writes FILE (default `<model>/prosqa_halting.json`) and a plot of the answer loop next to it.
"""

import argparse
import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from prosqa import DEEP_SEED, add_threshold_argument, load_model, loop_supervision, read_examples
from transformers import AutoTokenizer

from dataset_scripts.prosqa import DEEP_OPTIONS, generate_prosqa
from model_cards.generate import training_record
from ood_hops import command_line, save_figure, write_results
from recursive_latent.evaluation import reason_batches, wilson_interval

OUTCOMES = ("early", "on_time", "late", "target", "other_option", "neither", "target_beats_other_at_d+1",
            "target_best_at_d+1")


@torch.no_grad()
def diagnose(model, tokenizer, examples, loops, batch_size):
    """Counts of `OUTCOMES` and the answer loop's offset from d + 1, per shortest-path length d."""
    counts, offsets = defaultdict(Counter), defaultdict(Counter)
    token = tokenizer.convert_tokens_to_ids
    for chunk, inputs, out in reason_batches(model, tokenizer, examples, batch_size, progress=True):
        free = model.without_halt(model(**inputs, num_loops=loops).loop_logits)  # (B, loops, V), the halt ruled out
        for row, example in enumerate(chunk):
            names, d = example["idx_to_symbol"], len(example["steps"])  # the steps follow a shortest path
            target, other = token(names[example["target"]]), token(names[example["neg_target"]])
            answer_loop = int(out.loops[row]) - int(out.halted[row])  # 1-based; the `<HALT>` loop does not answer
            offset = answer_loop - (d + 1)
            answer = int(out.answer_ids[row])
            stats = counts[d]
            stats["n"] += 1
            stats["early" if offset < 0 else "late" if offset > 0 else "on_time"] += 1
            stats["target" if answer == target else "other_option" if answer == other else "neither"] += 1
            if d < loops:
                at = free[row, d]
                stats["target_beats_other_at_d+1"] += bool(at[target] > at[other])
                stats["target_best_at_d+1"] += int(at.argmax()) == target
            offsets[d][offset] += 1
    figures = {}
    for d in sorted(counts):
        n = counts[d]["n"]
        row = {"n": n, "answer_loop_minus_d_plus_1": {str(k): v for k, v in sorted(offsets[d].items())}}
        for key in OUTCOMES:
            row[key] = counts[d][key] / n
            row[f"{key}_ci95"] = list(wilson_interval(counts[d][key], n))
        figures[str(d)] = row
    return figures


@torch.no_grad()
def sweep_thresholds(model, tokenizer, examples, loops, batch_size, thresholds):
    """Accuracy and mean loops of the `token` mode at each p(`<HALT>`) threshold (`halt_token_threshold`), per
    shortest-path length d and over all, read off `loops` loops run once with the halt ignored through the model's
    own `halts` and `answer_loop` (so they are `reason()`'s answers); `unstopped` counts the examples no sure
    `<HALT>` stopped within `loops` (`reason()` would loop on, up to `max_inference_loops`)."""
    counts = {threshold: defaultdict(Counter) for threshold in thresholds}
    saved = model.config.halt_token_threshold
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            inputs = tokenizer([example["question"] for example in chunk], padding=True, return_tensors="pt")
            loop_logits = model(**inputs, num_loops=loops).loop_logits
            targets = torch.tensor([tokenizer.convert_tokens_to_ids(e["idx_to_symbol"][e["target"]]) for e in chunk])
            for threshold in thresholds:
                model.config.halt_token_threshold = threshold
                stops = model.halts(loop_logits)
                answers = loop_logits.argmax(-1).gather(1, model.answer_loop(loop_logits)[:, None])[:, 0]
                loops_run = torch.where(stops.any(1), stops.int().argmax(1) + 1, loops)
                for row, example in enumerate(chunk):
                    for group in (str(len(example["steps"])), "all"):
                        stats = counts[threshold][group]
                        stats["n"] += 1
                        stats["accuracy"] += int(answers[row] == targets[row])
                        stats["loops"] += int(loops_run[row])
                        stats["unstopped"] += int(not stops[row].any())
    finally:  # the model's own setting, whatever happened
        model.config.halt_token_threshold = saved
    sweep = {}
    for threshold, groups in counts.items():
        sweep[str(threshold)] = {group: {"n": stats["n"], "accuracy": stats["accuracy"] / stats["n"],
                                         "accuracy_ci95": list(wilson_interval(stats["accuracy"], stats["n"])),
                                         "mean_loops": stats["loops"] / stats["n"],
                                         "unstopped": stats["unstopped"] / stats["n"]}
                                 for group, stats in sorted(groups.items(), key=lambda item: (item[0] == "all", item[0]))}
    return sweep


def plot_halting(json_path, png_path=None):
    """Share of graphs by the model's answer loop minus (d + 1), one line per shortest-path length d."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(json_path).read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    for d, row in results["per_path_length"].items():
        offsets = sorted(row["answer_loop_minus_d_plus_1"].items(), key=lambda item: int(item[0]))
        ax.plot([int(k) for k, _ in offsets], [100 * v / row["n"] for _, v in offsets], marker="o",
                label=f"d = {d} (n = {row['n']})")
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("answer loop - (d + 1): < 0 answered before the search reached the target")
    ax.set_ylabel("% of graphs")
    ax.set_title(f"ProsQA: when {Path(results['model']).parent.name} answers")
    ax.legend()
    return save_figure(fig, json_path, png_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (or Hub id) of a `frontier` model")
    parser.add_argument("--data", default=None, help="a ProsQA JSON file (default: generated 7-8 step graphs)")
    parser.add_argument("--n", type=int, default=1000, help="generated graphs, without --data")
    parser.add_argument("--seed", type=int, default=DEEP_SEED, help="generator seed, without --data")
    parser.add_argument("--loops", type=int, default=12, help="loops run with the halt ignored (> the longest d)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--out", default=None, help="output JSON (default: <model>/prosqa_halting.json)")
    add_threshold_argument(parser)
    parser.add_argument("--sweep", type=float, nargs="+", default=None, metavar="THRESHOLD",
                        help="also score the `token` mode at each of these p(<HALT>) thresholds, off `--loops` loops")
    args = parser.parse_args()
    supervision = loop_supervision(args.model)
    if supervision != "frontier":
        parser.error(f"{args.model} was trained with `{supervision}` loop targets; this diagnostic times answers "
                     "against a `frontier` model's d + 1 loops")
    if args.data is not None:
        data_file = Path(args.data)
        examples = read_examples(parser, data_file)
        source = {"data": str(data_file), "data_sha256": hashlib.sha256(data_file.read_bytes()).hexdigest()}
    else:
        examples = generate_prosqa(args.n, seed=args.seed, **DEEP_OPTIONS)
        source = {"data": "generated", "seed": args.seed, "options": DEEP_OPTIONS}
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = load_model(parser, args.model, args.halt_token_threshold, sweep=args.sweep or ())
    start = time.perf_counter()
    figures = diagnose(model, tokenizer, examples, args.loops, args.batch_size)
    for d, row in figures.items():
        print(f"d={d} (n={row['n']}): early {100 * row['early']:.1f}%  on time {100 * row['on_time']:.1f}%  late "
              f"{100 * row['late']:.1f}% | target {100 * row['target']:.1f}%  other option "
              f"{100 * row['other_option']:.1f}%  neither {100 * row['neither']:.1f}% | at loop d+1: target over "
              f"other {100 * row['target_beats_other_at_d+1']:.1f}%, target best {100 * row['target_best_at_d+1']:.1f}%")
    sweep = None
    if args.sweep:
        sweep = sweep_thresholds(model, tokenizer, examples, args.loops, args.batch_size, args.sweep)
        for threshold, groups in sweep.items():
            print(f"p(<HALT>) >= {threshold}: " + "  ".join(
                f"d={group} {100 * row['accuracy']:.1f}% ({row['mean_loops']:.2f} loops, "
                f"{100 * row['unstopped']:.1f}% unstopped)" for group, row in groups.items()))
    results = {"command": command_line(), "model": str(args.model), **source, "n": len(examples),
               "loops": args.loops, "halt_token_threshold": getattr(model.config, "halt_token_threshold", None),
               **training_record(args.model), "per_path_length": figures, "threshold_sweep": sweep,
               "seconds": time.perf_counter() - start}
    out = Path(args.out) if args.out else Path(args.model, "prosqa_halting.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(results, out, plot_halting)


if __name__ == "__main__":
    main()
