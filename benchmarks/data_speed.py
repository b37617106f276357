"""Time hop-chain generation: 100k shuffled examples with 1..5 hops.

    python benchmarks/data_speed.py --out outputs/benchmarks
"""

import argparse
import json
import sys
import time
from pathlib import Path

# Make the repo root importable when run as ``python benchmarks/data_speed.py``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset_scripts.hop_chains import generate_examples  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark hop-chain example generation.")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"), help="output directory")
    parser.add_argument("--num_examples", type=int, default=100_000)
    args = parser.parse_args()

    start = time.perf_counter()
    examples = generate_examples(args.num_examples, hops=range(1, 6), variant="shuffled", seed=0)
    seconds = time.perf_counter() - start

    result = {
        "num_examples": len(examples),
        "hops": [1, 2, 3, 4, 5],
        "variant": "shuffled",
        "seconds": round(seconds, 3),
        "examples_per_second": round(len(examples) / seconds, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
