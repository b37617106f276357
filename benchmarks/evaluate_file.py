"""Evaluate a checkpoint on examples of the package's format: a user's JSON / JSONL file, a `save_to_disk` directory
or a Hub dataset (`recursive_latent.examples`), grouped by number of steps.

    python benchmarks/evaluate_file.py --model outputs/mine/final --data my_test.json [--out DIR]

Writes DIR/evaluate_file.json first (inputs, the data's checksum, per number of steps: answer exact match, trace exact
match, `<HALT>` right after the last step, a `<HALT>` inside the trace, each with its 95% Wilson interval, mean loops
and prompt tokens; examples/s, how many examples hold words the tokenizer does not know), then DIR/evaluate_file.png
drawn from the JSON alone. Default DIR: the model dir.
"""

import argparse
import hashlib
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_cards.generate import training_record
from ood_hops import command_line, plot_ood_hops, write_results
from recursive_latent.evaluation import evaluate_examples
from recursive_latent.examples import ExampleError, load_examples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (or Hub id)")
    parser.add_argument("--data", required=True, help="JSON / JSONL file, save_to_disk directory or Hub dataset id")
    parser.add_argument("--split", default="test", help="split of a dataset directory or Hub dataset (default: test)")
    parser.add_argument("--max_loops", type=int, default=None,
                        help="loops before an example is cut off (default: the model's max_inference_loops)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="torch seed (evaluation itself draws nothing)")
    parser.add_argument("--out", default=None, help="output dir (default: the model dir)")
    args = parser.parse_args()
    if args.batch_size < 1 or (args.max_loops is not None and args.max_loops < 1):
        parser.error("--batch_size and --max_loops must be >= 1")
    try:
        examples = load_examples(args.data, split=args.split)
    except ExampleError as error:
        parser.error(str(error))
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
    out = Path(args.out or args.model)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    result = evaluate_examples(model, tokenizer, examples, batch_size=args.batch_size, max_loops=args.max_loops,
                               progress=True)
    for steps, row in result["per_steps"].items():
        print(f"steps {steps:>3} (n={row['n']}): answer {100 * row['answer_exact_match']:6.2f}%  trace "
              f"{100 * row['trace_exact_match']:6.2f}%  halt@n+1 {100 * row['halt_rate']:6.2f}%  early halt "
              f"{100 * row['early_halt_rate']:5.2f}%  loops {row['mean_loops']:5.2f}")
    print(f"unknown words in {result['unknown_word_examples']} of {len(examples)} questions; "
          f"{result['untargetable_examples']} examples have a trace word the tokenizer cannot write as one token")
    data_file = Path(args.data)
    results = {
        "command": command_line(),
        "model": str(args.model), "data": str(args.data), "split": args.split if not data_file.is_file() else None,
        "data_sha256": hashlib.sha256(data_file.read_bytes()).hexdigest() if data_file.is_file() else None,
        "n": len(examples), "seed": args.seed, "max_loops": args.max_loops, **training_record(args.model),
        "per_steps": result["per_steps"], "examples_per_second": result["examples_per_second"],
        "unknown_word_examples": result["unknown_word_examples"],
        "untargetable_examples": result["untargetable_examples"],
        "seconds": time.perf_counter() - start,
    }
    write_results(results, out / "evaluate_file.json", plot_ood_hops)


if __name__ == "__main__":
    main()
