"""Time the training data path: hop-chain generation (100k shuffled examples with 1..5 hops), then collation of
batches of 64 at the prompt lengths the Mamba2 default trains on (its short prompts and its two prompt stages).

    python benchmarks/data_speed.py --out outputs/benchmarks

Collation is timed whole (`LoopLabelCollator`) and in its parts: the tokenizer, and the conversion of its padded
lists to tensors (`as_tensors`, through numpy) against `torch.tensor` over the same lists.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# Make the repo root importable when run as ``python benchmarks/data_speed.py``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset_scripts.collator import LoopLabelCollator, as_tensors  # noqa: E402
from dataset_scripts.hop_chains import generate_examples  # noqa: E402
from dataset_scripts.tokenizer import build_tokenizer  # noqa: E402

# The Mamba2 default's phases (trainers/configs/default_mamba2.yaml): distractor chains, their hops, the walks.
PHASES = {
    "short prompts": ((1, 3), (1, 5), range(1, 6)),
    "first prompt stage": ((2, 16), (1, 8), range(1, 9)),
    "second prompt stage": ((4, 24), (1, 10), range(1, 9)),
}


def ms_per_call(function, batches, rounds):
    """Median over `rounds` of the mean milliseconds of `function` over `batches`."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            function(batch)
        times.append(1000 * (time.perf_counter() - start) / len(batches))
    return statistics.median(times)


def time_collation(tokenizer, batch_size, num_batches, rounds):
    collate = LoopLabelCollator(tokenizer)
    rows = {}
    for phase, (distractors, distractor_hops, hops) in PHASES.items():
        examples = generate_examples(batch_size * num_batches, hops=hops, variant="shuffled", seed=1,
                                     num_distractors=distractors, distractor_hops=distractor_hops)
        batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        texts = [[example["question"] for example in batch] for batch in batches]
        encoded = [tokenizer(batch, padding=True) for batch in texts]
        row = rows[phase] = {
            "padded_length_mean": statistics.mean(len(batch["input_ids"][0]) for batch in encoded),
            "collate_ms": ms_per_call(collate, batches, rounds),
            "tokenizer_ms": ms_per_call(lambda batch: tokenizer(batch, padding=True), texts, rounds),
            "as_tensors_ms": ms_per_call(as_tensors, encoded, rounds),
            "torch_tensor_ms": ms_per_call(
                lambda batch: {name: torch.tensor(values) for name, values in batch.items()}, encoded, rounds),
        }
        print(f"{phase:<20} padded length {row['padded_length_mean']:5.0f}: collate {row['collate_ms']:5.1f} ms per "
              f"batch, tokenizer {row['tokenizer_ms']:5.1f}, to tensors {row['as_tensors_ms']:4.1f} (torch.tensor "
              f"{row['torch_tensor_ms']:4.1f})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the training data path.")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"), help="output directory")
    parser.add_argument("--num_examples", type=int, default=100_000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_batches", type=int, default=20, help="batches per phase for collation")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    examples = generate_examples(args.num_examples, hops=range(1, 6), variant="shuffled", seed=0)
    seconds = time.perf_counter() - start

    result = {
        "num_examples": len(examples),
        "hops": [1, 2, 3, 4, 5],
        "variant": "shuffled",
        "seconds": round(seconds, 3),
        "examples_per_second": round(len(examples) / seconds, 1),
        "collation": {"batch_size": args.batch_size, "batches": args.num_batches, "rounds": args.rounds,
                      "threads": args.threads,
                      "phases": time_collation(build_tokenizer(), args.batch_size, args.num_batches, args.rounds)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
