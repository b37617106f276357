"""ProsQA data check: statistics of generated examples side by side with the published valid and test splits.

    python benchmarks/prosqa_data.py --out outputs/benchmarks [--n 2000] [--seed 0] [--deep_n 500]

Computes `prosqa_statistics` (dataset_scripts/prosqa.py) on `--n` examples generated with the default options, on
`--deep_n` generated with `DEEP_OPTIONS` (shortest paths of 7-8 steps, larger graphs) and on the published splits in
`--data_dir` (default: shared/data/prosqa beside the repo; a missing split is left out). Prints one table (measure |
generated | test | valid | deep) and writes every figure, the generation times and the command to
DIR/prosqa_data.json.
"""

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from dataset_scripts.prosqa import DEEP_OPTIONS, generate_prosqa, prosqa_statistics

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "prosqa"
SPLITS = ("test", "valid")


def _range(stats, key):
    summary = stats[key]
    return f"{summary['mean']:.2f} ({summary['min']}-{summary['max']})"


def _shares(stats, key, last=None):
    """Percent per value, the values from `last` on summed into one `last+` bucket."""
    buckets = {}
    for value, share in stats[key].items():
        bucket = f"{last}+" if last is not None and int(value) >= last else value
        buckets[bucket] = buckets.get(bucket, 0) + share
    return " ".join(f"{bucket}:{100 * share:.1f}" for bucket, share in buckets.items())


# (measure, how to show it from one statistics dict); the order of notes/prosqa.md's table, then the extras.
ROWS = [
    ("nodes, mean (range)", lambda s: _range(s, "nodes")),
    ("edges = statements, mean (range)", lambda s: _range(s, "edges")),
    ("words per question, mean (range)", lambda s: _range(s, "words")),
    ("persons per example", lambda s: f"{s['persons']:.2f}"),
    ("persons per example, % of examples", lambda s: _shares(s, "persons_shares", 5)),
    ("shortest root -> target distance, mean", lambda s: f"{s['distance']['mean']:.2f}"),
    ("shortest distance, % of examples", lambda s: _shares(s, "distance_shares")),
    ("shortest paths root -> target, mean (max)",
     lambda s: f"{s['shortest_paths']['mean']:.2f} ({s['shortest_paths']['max']})"),
    ("shortest paths, % of examples", lambda s: _shares(s, "shortest_paths_shares", 4)),
    ("all root -> target paths, mean (max)", lambda s: f"{s['all_paths']['mean']:.1f} ({s['all_paths']['max']})"),
    ("out-degree of root", lambda s: f"{s['root_out_degree']:.2f}"),
    ("root's children that lead to the target", lambda s: f"{s['root_children_to_target']:.2f}"),
    ("nodes reachable from root", lambda s: f"{s['reachable_from_root']:.1f}"),
    ("other person -> neg_target distance, mean", lambda s: f"{s['neg_distance']:.2f}"),
    ("in-degree of target / neg_target", lambda s: f"{s['target_in_degree']:.2f} / {s['neg_target_in_degree']:.2f}"),
    ("target first among the options", lambda s: f"{100 * s['target_first']:.1f}%"),
    ("root is person 1", lambda s: f"{100 * s['root_is_1']:.1f}%"),
    ("in-degree of non-persons, % of nodes", lambda s: _shares(s, "in_degree_shares", 5)),
    ("out-degree, mean over nodes / leaves", lambda s: f"{s['out_degree']:.2f} / {100 * s['leaf_share']:.0f}%"),
]


def timed_generation(n, seed, **options):
    """Generate `n` examples and return them with the seconds it took."""
    start = time.perf_counter()
    examples = generate_prosqa(n, seed=seed, **options)
    return examples, time.perf_counter() - start


def print_table(columns):
    """One row per measure, one column per data set."""
    header = ["measure", *columns]
    rows = [[label, *(show(stats) for stats in columns.values())] for label, show in ROWS]
    rows.insert(0, ["examples", *(str(stats["examples"]) for stats in columns.values())])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=DATA_DIR, help="directory of prosqa_{test,valid}.json")
    parser.add_argument("--n", type=int, default=2000, help="generated examples (default options)")
    parser.add_argument("--deep_n", type=int, default=500, help="generated examples with DEEP_OPTIONS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"), help="output directory")
    args = parser.parse_args()
    if args.n < 1 or args.deep_n < 1:
        parser.error("--n and --deep_n must be >= 1")

    generated, seconds = timed_generation(args.n, args.seed)
    deep, deep_seconds = timed_generation(args.deep_n, args.seed, **DEEP_OPTIONS)
    columns = {"generated": prosqa_statistics(generated)}
    for split in SPLITS:
        path = args.data_dir / f"prosqa_{split}.json"
        if path.exists():
            columns[split] = prosqa_statistics(json.loads(path.read_text()))
        else:
            print(f"note: {path} not found, {split} left out")
    columns["deep"] = prosqa_statistics(deep)
    print_table(columns)
    print(f"generation: {1000 * seconds / args.n:.3f} s per 1,000 examples; "
          f"deep: {1000 * deep_seconds / args.deep_n:.3f} s per 1,000")

    results = {
        "command": shlex.join(["python", "benchmarks/prosqa_data.py", *sys.argv[1:]]),
        "data_dir": str(args.data_dir), "n": args.n, "deep_n": args.deep_n, "seed": args.seed,
        "deep_options": DEEP_OPTIONS,
        "statistics": columns,
        "seconds_per_1000": {"generated": 1000 * seconds / args.n, "deep": 1000 * deep_seconds / args.deep_n},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "prosqa_data.json"
    json_path.write_text(json.dumps(results, indent=2))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
