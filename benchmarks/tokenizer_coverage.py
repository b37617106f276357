"""How many of the task's words a pretrained tokenizer can supervise: names, training and held-out values, digits.

A word is a loop target only if it is one token where prompts put it (after a space); the data for a pretrained
backbone is drawn from those words alone (`dataset_scripts.tokenizer.task_words`). Prints JSON.

    python benchmarks/tokenizer_coverage.py --tokenizer openai-community/gpt2
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_scripts.tokenizer import DIGITS, load_tokenizer, word_ids  # noqa: E402
from dataset_scripts.words import HELDOUT_VALUE_WORDS, TRAIN_VALUE_WORDS, VARIABLE_NAMES  # noqa: E402


def coverage(tokenizer):
    ids = word_ids(tokenizer)
    pools = {"names": VARIABLE_NAMES, "train_values": TRAIN_VALUE_WORDS, "heldout_values": HELDOUT_VALUE_WORDS,
             "digits": DIGITS}
    return {
        name: {"one_token": sum(word in ids for word in pool), "total": len(pool),
               "split": [word for word in pool if word not in ids]}
        for name, pool in pools.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="Hub id or local directory of a pretrained tokenizer.")
    args = parser.parse_args()
    print(json.dumps({"tokenizer": args.tokenizer, **coverage(load_tokenizer(args.tokenizer))}, indent=2))


if __name__ == "__main__":
    main()
