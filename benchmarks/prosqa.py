"""ProsQA benchmark: accuracy as the Coconut paper computes it, path validity, halting, per shortest-path length, on a
published split and on generated deeper graphs (7-8 steps, never seen in training).

    python benchmarks/prosqa.py --model outputs/prosqa/final --data ../shared/data/prosqa/prosqa_valid.json [--out DIR]

Accuracy: the answer sentence `<person> is a <predicted concept>.` equals the example's `answer` (Coconut's exact
match). Path validity: the concepts the loops named before the answer form an edge path from the person to the answer
in that example's graph (`dataset_scripts.prosqa.is_valid_path`; any path counts, the JSON says how many were
shortest). For a `frontier` model, whose loops hold search frontiers, the path is read the same way: the argmax of
each loop; a `frontier_walk` model's is its walk back from the target, read backwards (the checkpoint's
training_config.yaml says which). Writes DIR/prosqa.json first (every figure with its 95% Wilson interval, per path
length and overall, examples/s, the data's checksum, the seeds), then DIR/prosqa.png drawn from the JSON alone.
"""

import argparse
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dataset_scripts.prosqa import DEEP_OPTIONS, generate_prosqa, is_valid_path
from model_cards.generate import read_run_config, training_record
from ood_hops import command_line, save_figure, write_results
from recursive_latent.evaluation import evaluate_examples, wilson_interval
from recursive_latent.examples import HALT_TOKEN

DEEP_SEED = 7_000_000  # apart from training (small seeds) and validation (10,000)


def read_path(prediction, answer, supervision="frontier"):
    """The concepts a trace names before its answer: its words up to `<HALT>`, the answer last once. A
    `frontier_walk` model walks back from the target after its frontiers (2d + 1 loops): its path is that walk,
    read backwards."""
    words = [word for word in prediction["trace"] if word != HALT_TOKEN][: prediction["loops"]]
    if supervision == "frontier_walk":
        depth = (len(words) - 1) // 2
        words = words[depth + 1:-1][::-1] + words[-1:]
    while len(words) > 1 and words[-2] == words[-1]:  # a frontier's last member can be the answer itself
        words.pop()
    return words if words and words[-1] == answer else words + [answer]


def loop_supervision(model_dir):
    """The ProsQA loop targets a local checkpoint was trained with (its training_config.yaml), else `frontier`."""
    return (read_run_config(model_dir).get("data_source") or {}).get("supervision", "frontier")


def read_examples(parser, data_file):
    """The examples of a ProsQA JSON file; a missing or broken file ends the script with a one-line error."""
    if not data_file.is_file():
        parser.error(f"{data_file}: no such file")
    try:
        return json.loads(data_file.read_text())
    except json.JSONDecodeError as error:
        parser.error(f"{data_file} is not JSON ({error.msg})")


def score(model, tokenizer, examples, batch_size, supervision="frontier"):
    """Coconut accuracy, path validity and halting per shortest-path length (and over all) of `examples`."""
    result = evaluate_examples(model, tokenizer, examples, batch_size=batch_size)
    counts = defaultdict(lambda: defaultdict(int))
    for example, prediction in zip(examples, result["predictions"]):
        person = example["idx_to_symbol"][example["root"]]
        path = read_path(prediction, prediction["prediction"], supervision)
        valid = is_valid_path(example, path)
        for group in (len(example["steps"]), "all"):
            stats = counts[group]
            stats["n"] += 1
            stats["accuracy"] += f"{person} is a {prediction['prediction']}." == example["answer"]
            stats["valid_path"] += valid
            stats["valid_shortest_path"] += valid and len(path) == len(example["steps"])
            stats["halted"] += prediction["halted"]
            stats["loops"] += prediction["loops"]
    per_length = {}
    for group, stats in sorted(counts.items(), key=lambda item: (item[0] == "all", str(item[0]))):
        row = {"n": stats["n"], "mean_loops": stats["loops"] / stats["n"]}
        for key in ("accuracy", "valid_path", "valid_shortest_path", "halted"):
            row[key] = stats[key] / stats["n"]
            row[f"{key}_ci95"] = list(wilson_interval(stats[key], stats["n"]))
        per_length[str(group)] = row
    return {"per_path_length": per_length, "examples_per_second": result["examples_per_second"],
            "unknown_word_examples": result["unknown_word_examples"]}


def show(name, figures):
    for group, row in figures["per_path_length"].items():
        print(f"{name} {group:>3} (n={row['n']}): accuracy {100 * row['accuracy']:5.1f}%  valid path "
              f"{100 * row['valid_path']:5.1f}% (shortest {100 * row['valid_shortest_path']:5.1f}%)  halted "
              f"{100 * row['halted']:5.1f}%  loops {row['mean_loops']:.2f}")


def plot_prosqa(json_path, png_path=None):
    """Accuracy and path validity per shortest-path length, published data and deeper graphs, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(json_path).read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = {**results["data_figures"]["per_path_length"], **(results.get("deep_figures") or {}).get("per_path_length", {})}
    lengths = sorted(int(group) for group in rows if group != "all")
    for key, label in (("accuracy", "accuracy"), ("valid_path", "valid path")):
        values = [100 * rows[str(n)][key] for n in lengths]
        lows = [100 * rows[str(n)][f"{key}_ci95"][0] for n in lengths]
        highs = [100 * rows[str(n)][f"{key}_ci95"][1] for n in lengths]
        ax.plot(lengths, values, marker="o", label=label)
        ax.fill_between(lengths, lows, highs, alpha=0.2)
    ax.axhline(97.0, color="grey", linestyle="--", linewidth=1, label="Coconut, published (97.0%)")
    ax.set_xticks(lengths)
    ax.set_xlabel("shortest path length (7-8: generated, deeper than any training graph)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 101)
    ax.set_title(f"ProsQA: {Path(results['data']).name} and {results['deep_n']} deeper graphs")
    ax.legend(loc="lower left")
    return save_figure(fig, json_path, png_path)


def load_model(parser, path, halt_token_threshold=None, sweep=()):
    """The checkpoint through the Auto classes, with `halt_token_threshold` (if given) set on its config. A model
    without the setting (a baseline, or a checkpoint whose code predates it) would ignore it, so it is refused rather
    than scored as if it applied (and so for the thresholds of a `sweep`); each threshold must lie in [0, 1)."""
    thresholds = [*([] if halt_token_threshold is None else [halt_token_threshold]), *sweep]
    if any(not 0 <= threshold < 1 for threshold in thresholds):
        parser.error(f"a p(<HALT>) threshold must be in [0, 1) (got {', '.join(map(str, thresholds))})")
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    if thresholds and not hasattr(model, "halts"):
        parser.error(f"{path} has no `halt_token_threshold`: a baseline, or a looped model whose code predates the "
                     "setting (copy the package's `recursive_latent/*.py` next to its weights to give it the setting)")
    if halt_token_threshold is not None:
        model.config.halt_token_threshold = halt_token_threshold
    return model


def add_threshold_argument(parser):
    parser.add_argument("--halt_token_threshold", type=float, default=None,
                        help="p(<HALT>) the `token` halting mode needs (default: the checkpoint's config)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (or Hub id)")
    parser.add_argument("--data", required=True, help="a ProsQA JSON file in the published schema")
    parser.add_argument("--deep_n", type=int, default=500, help="generated graphs with 7-8 step paths (0: none)")
    parser.add_argument("--deep_seed", type=int, default=DEEP_SEED)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--out", default=None, help="output dir (default: the model dir)")
    parser.add_argument("--label", default=None, help="what the run is, as docs/results.md titles it")
    parser.add_argument("--order", type=int, default=None, help="its row in docs/results.md's ProsQA table")
    add_threshold_argument(parser)
    args = parser.parse_args()
    data_file = Path(args.data)
    examples = read_examples(parser, data_file)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = load_model(parser, args.model, args.halt_token_threshold)
    out = Path(args.out or args.model)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    supervision = loop_supervision(args.model)
    data_figures = score(model, tokenizer, examples, args.batch_size, supervision)
    show(data_file.name, data_figures)
    deep_figures = None
    if args.deep_n:
        deep = generate_prosqa(args.deep_n, seed=args.deep_seed, **DEEP_OPTIONS)
        deep_figures = score(model, tokenizer, deep, args.batch_size, supervision)
        show("deep", deep_figures)
    results = {
        "command": command_line(), "label": args.label, "order": args.order,
        "model": str(args.model), "data": str(args.data),
        "data_sha256": hashlib.sha256(data_file.read_bytes()).hexdigest(), "n": len(examples),
        "deep_n": args.deep_n, "deep_seed": args.deep_seed, "deep_options": DEEP_OPTIONS,
        "supervision": supervision, "halt_token_threshold": getattr(model.config, "halt_token_threshold", None),
        **training_record(args.model),
        "data_figures": data_figures, "deep_figures": deep_figures,
        "seconds": time.perf_counter() - start,
    }
    write_results(results, out / "prosqa.json", plot_prosqa)


if __name__ == "__main__":
    main()
