"""Out-of-distribution hop benchmark: answer and trace exact match per hop count on fresh prompts.

    python benchmarks/ood_hops.py --model outputs/default/final [--variant shuffled] [--hops 1 2 ...] [--n 1000]

`--distractors LO HI` and `--distractor_hops LO HI` set the `shuffled` prompts' distractor chains (default: 1-3
chains of 1-5 hops, as in training), so prompt length and hop count can be varied apart; each hop count's mean prompt
length in tokens is recorded. A prompt of h hops needs h + 1 loops: hop counts past the model's `max_inference_loops`
are refused unless `--max_loops` lifts the cap.

Writes DIR/ood_hops.json first (inputs, per-hop figures with 95% Wilson intervals, timings, peak memory), then
DIR/ood_hops.png drawn from the JSON alone (`plot_ood_hops`).

How a run gets into docs/results.md: `--label TEXT` (one line: what the run is, the title of its table) and
`--section NAME` (a section of benchmarks/report.py: default, baselines, ablations, depth, mamba2, lanes, or a new
name) are written into the JSON; copy it to docs/ood_hops_<name>.json and run benchmarks/report.py (or let
`report.py --run CHECKPOINT --name NAME --label TEXT --section NAME` run the suite and copy it).
"""

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dataset_scripts.hop_chains import LANES, check_arith_ops, generate_examples
from dataset_scripts.tokenizer import task_words
from model_cards.generate import training_record
from recursive_latent.configuration_recursive import MAX_INFERENCE_LOOPS
from recursive_latent.evaluation import evaluate_examples, machine_facts

DEFAULT_HOPS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64]
BENCHMARK_SEED = 1_000_000  # far from the trainer's seeds (training streams use small seeds, validation 10,000+h)


def run(model_dir, variant, hops_list, n, batch_size, seed, lane="pointer", arith_ops=None, shared_only=False,
        distractor_options=None, max_loops=None):
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    per_hop = {}
    # A prompt of h hops needs h + 1 loops (the path, then <HALT>); below that its figures would be zero by
    # construction.
    loop_cap = max_loops or getattr(model.config, "max_inference_loops", MAX_INFERENCE_LOOPS)
    deepest = max(hops_list)
    if deepest + 1 > loop_cap:
        raise SystemExit(f"error: {deepest} hops need {deepest + 1} loops but the model stops at {loop_cap}; "
                         "pass --max_loops")
    words = task_words(tokenizer)
    for hops in hops_list:
        options = {"ops": arith_ops} if lane == "arith" and arith_ops else distractor_options or {}
        examples = generate_examples(n, hops, variant=variant, seed=seed + hops, lane=lane, **words, **options)
        if shared_only:  # no lane: every row runs on the shared weights, with no adapter
            examples = [{key: value for key, value in example.items() if key != "lane"} for example in examples]
        result = evaluate_examples(model, tokenizer, examples, batch_size=batch_size, max_loops=max_loops)
        per_hop[hops] = row = result["per_steps"][hops]
        row["examples_per_second"] = result["examples_per_second"]
        print(f"hops {hops:>3}: answer {100 * row['answer_exact_match']:6.2f}%  trace {100 * row['trace_exact_match']:6.2f}%"
              f"  halt@h+1 {100 * row['halt_rate']:6.2f}%  early halt {100 * row['early_halt_rate']:5.2f}%"
              f"  loops {row['mean_loops']:5.2f}  "
              f"prompt {row['mean_prompt_tokens']:5.0f} tokens  {row['examples_per_second']:7.0f} ex/s")
    return per_hop


def command_line():
    """How this benchmark was started, as a user types it from the repository root."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def write_results(results, json_path, plot):
    """`results` and the machine they were measured on, as JSON at `json_path`; then `plot` draws the figure from that
    file alone. Prints where both are."""
    json_path.write_text(json.dumps({**results, "machine": machine_facts()}, indent=2))
    print(f"wrote {json_path} and {plot(json_path)}")


def save_figure(fig, json_path, png_path=None):
    """Lay `fig` out and save it at `png_path` (default: the JSON's path with `.png`); returns where."""
    fig.tight_layout()
    png_path = png_path or Path(json_path).with_suffix(".png")
    fig.savefig(png_path, dpi=120)
    return png_path


def plot_ood_hops(json_path, png_path=None):
    """Answer and trace exact match vs hops (or steps, for `evaluate_file.json`), with 95% intervals and the training
    range shaded; drawn from the JSON alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(json_path).read_text())
    group = "hops" if "per_hop" in results else "steps"
    rows = results["per_hop"] if group == "hops" else results["per_steps"]
    sizes = [int(size) for size in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("answer_exact_match", "answer"), ("trace_exact_match", "trace"),
                       ("halt_rate", f"halt at {group}+1")):
        values = [100 * rows[str(size)][key] for size in sizes]
        lows = [100 * rows[str(size)][f"{key}_ci95"][0] for size in sizes]
        highs = [100 * rows[str(size)][f"{key}_ci95"][1] for size in sizes]
        ax.plot(sizes, values, marker="o", label=label)
        ax.fill_between(sizes, lows, highs, alpha=0.2)
    if results.get("trained_hops") and None not in results["trained_hops"]:
        low, high = results["trained_hops"]
        ax.axvspan(low - 0.5, high + 0.5, color="grey", alpha=0.15, label=f"trained {group}")
    if group == "hops":
        ax.set_xscale("log", base=2)
        title = f"{results['variant']} prompts, n={results['n']} per hop, seed {results['seed']}"
    else:
        title = f"{Path(results['data']).name}, n={results['n']} examples"
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set_xlabel(group)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(0, 101)
    ax.set_title(title)
    ax.legend(loc="lower left")
    return save_figure(fig, json_path, png_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (or Hub id)")
    parser.add_argument("--variant", default="shuffled", choices=["shuffled", "chain"])
    parser.add_argument("--lane", default="pointer", choices=LANES, help="task lane (`arith` prompts are chains)")
    parser.add_argument("--arith_ops", default=None, help="the `arith` lane's operations (default: all, `+-*`)")
    parser.add_argument("--shared_only", action="store_true",
                        help="run the lane's prompts on the shared weights without its adapter (what the adapter adds)")
    parser.add_argument("--distractors", type=int, nargs=2, metavar=("LO", "HI"), default=None,
                        help="distractor chains per `shuffled` prompt, inclusive range (default: 1 3)")
    parser.add_argument("--distractor_hops", type=int, nargs=2, metavar=("LO", "HI"), default=None,
                        help="length of each distractor chain, inclusive range (default: 1 5)")
    parser.add_argument("--hops", type=int, nargs="+", default=DEFAULT_HOPS)
    parser.add_argument("--max_loops", type=int, default=None,
                        help="loops before an example is cut off (default: the model's max_inference_loops)")
    parser.add_argument("--n", type=int, default=1000, help="fresh prompts per hop count")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=BENCHMARK_SEED)
    parser.add_argument("--out", default=None, help="output dir (default: the model dir)")
    parser.add_argument("--label", default=None, help="what the run is, one line: its title in docs/results.md")
    parser.add_argument("--section", default=None,
                        help="its section in docs/results.md: default, baselines, ablations, depth, mamba2, lanes, "
                             "or a new name")
    args = parser.parse_args()
    if args.n < 1 or min(args.hops) < 1 or (args.max_loops is not None and args.max_loops < 1):
        parser.error("--n, --max_loops and every --hops value must be >= 1")
    if args.arith_ops is not None:
        if args.lane != "arith":
            parser.error("--arith_ops applies to --lane arith only")
        try:
            check_arith_ops(args.arith_ops)
        except ValueError as error:
            parser.error(f"--arith_ops: {error}")
    distractor_options = {}
    if args.distractors is not None:
        distractor_options["num_distractors"] = tuple(args.distractors)
    if args.distractor_hops is not None:
        distractor_options["distractor_hops"] = tuple(args.distractor_hops)
    if distractor_options:
        if args.lane != "pointer" or args.variant != "shuffled":
            parser.error("--distractors and --distractor_hops apply to `shuffled` pointer prompts only")
        try:  # refuse impossible ranges (or too few names) before loading a model
            generate_examples(1, max(args.hops), variant="shuffled", seed=0, **distractor_options)
        except ValueError as error:
            parser.error(str(error))
    out = Path(args.out or args.model)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    per_hop = run(args.model, args.variant, args.hops, args.n, args.batch_size, args.seed, args.lane, args.arith_ops,
                  args.shared_only, distractor_options, args.max_loops)
    results = {
        "command": command_line(),
        "label": args.label, "section": args.section,
        "model": str(args.model), "lane": args.lane, "variant": "chain" if args.lane == "arith" else args.variant,
        "arith_ops": args.arith_ops, "shared_only": args.shared_only,
        "distractors": args.distractors, "distractor_hops": args.distractor_hops, "max_loops": args.max_loops,
        "n": args.n, "seed": args.seed,
        **training_record(args.model), "per_hop": per_hop,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    write_results(results, out / "ood_hops.json", plot_ood_hops)


if __name__ == "__main__":
    main()
