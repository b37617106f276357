"""Multi-hop variable lookup prompts.

A prompt assigns values to variables, some of them through other variables, and
asks for the value of one of them::

    A = dog. B = A. C = B. What is C?
    Answer:

Resolving ``C`` takes ``hops=3`` lookups, visiting ``B``, ``A`` and ``dog`` (the
query itself is not part of the path). Examples are in the package's one format
(:mod:`recursive_latent.examples`): ``question`` (the prompt), ``steps`` (the
statements followed, ``["C = B.", "B = A.", "A = dog."]``), ``answer`` (``dog``)
and ``trace`` (``["B", "A", "dog"]``, one loop target per step; a looped model
predicts ``<HALT>`` after it), plus ``hops``, ``variant`` and ``lane``.

Two variants of this "pointer" lane exist:

* ``chain``: a single chain written in order, value first, queried at its end.
* ``shuffled``: the queried chain plus distractor chains, each with its own names
  and value, with all statements in random order.

An "arith" lane uses the same skeleton with arithmetic mod 10::

    A = 3. B = A + 4. C = B * 2. What is C?
    Answer:

Run as a script to write train/validation/test/OOD splits and the tokenizer::

    python dataset_scripts/hop_chains.py --out data/hop_chains
"""

import argparse
import hashlib
import random
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Executed as ``python dataset_scripts/hop_chains.py``: make the repo root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import Dataset, DatasetDict, Features, List, Value

from dataset_scripts.tokenizer import build_tokenizer
from dataset_scripts.words import HELDOUT_VALUE_WORDS, TRAIN_VALUE_WORDS, VARIABLE_NAMES

VARIANTS = ("chain", "shuffled")
LANES = ("pointer", "arith")
QUESTION = " What is {query}?\nAnswer:"

# Arithmetic lane: every value is a single digit, every statement applies one op mod 10.
ARITH_OPS = {
    "+": lambda left, right: (left + right) % 10,
    "-": lambda left, right: (left - right) % 10,
    "*": lambda left, right: (left * right) % 10,
}

FEATURES = Features(
    {
        "question": Value("string"),
        "steps": List(Value("string")),
        "answer": Value("string"),
        "trace": List(Value("string")),
        "hops": Value("int64"),
        "variant": Value("string"),
        "lane": Value("string"),
    }
)


def _check_hops(hops, extra_names: int = 0, names: Sequence[str] = VARIABLE_NAMES) -> None:
    """Raise if ``hops`` is not a positive int or the prompt would need too many names."""
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 1:
        raise ValueError(f"hops must be an integer >= 1, got {hops!r}")
    if hops + extra_names > len(names):
        raise ValueError(
            f"hops={hops} is too large: the prompt needs up to {hops + extra_names} distinct variable "
            f"names ({hops} for the answer chain, {extra_names} for distractors) but only "
            f"{len(names)} exist"
        )


def _as_range(name: str, value, minimum: int) -> tuple[int, int]:
    """Normalise an int or an inclusive ``(lo, hi)`` pair, checking ``minimum <= lo <= hi``."""
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = value, value
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(bound, int) and not isinstance(bound, bool) for bound in value)
    ):
        low, high = value
    else:
        raise ValueError(f"{name} must be an int or an inclusive (lo, hi) pair of ints, got {value!r}")
    if low < minimum or low > high:
        raise ValueError(f"{name} must satisfy {minimum} <= lo <= hi, got {value!r}")
    return low, high


def _check_pointer_args(hops, variant, num_distractors, distractor_hops, values, names):
    """Validate the pointer-lane options and return the distractor count and length ranges.

    Limits are checked against the largest prompt the ranges allow, so a bad
    configuration fails on every call rather than only on unlucky draws.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "chain":
        count_range, length_range = (0, 0), (1, 1)
    else:
        count_range = _as_range("num_distractors", num_distractors, minimum=0)
        length_range = _as_range("distractor_hops", distractor_hops, minimum=1)
    max_distractor_names = count_range[1] * length_range[1]
    if max_distractor_names >= len(names):
        raise ValueError(
            f"num_distractors={num_distractors!r} with distractor_hops={distractor_hops!r} needs up to "
            f"{max_distractor_names} distractor names but only {len(names) - 1} are left "
            "once the answer chain has a name"
        )
    _check_hops(hops, extra_names=max_distractor_names, names=names)
    if len(set(values)) < count_range[1] + 1:
        raise ValueError(
            f"values has {len(set(values))} distinct words but up to {count_range[1] + 1} are needed "
            f"(one per chain with num_distractors={num_distractors!r})"
        )
    return count_range, length_range


def make_example(
    rng: random.Random,
    hops: int,
    variant: str = "shuffled",
    num_distractors=(1, 3),
    distractor_hops=(1, 5),
    values: Sequence[str] = TRAIN_VALUE_WORDS,
    names: Sequence[str] = VARIABLE_NAMES,
) -> dict:
    """Draw one pointer-lane example whose query resolves after ``hops`` lookups.

    Args:
        rng: source of randomness.
        hops: length of the queried chain.
        variant: ``"chain"`` (one ordered chain) or ``"shuffled"`` (with distractors).
        num_distractors: distractor chain count, an int or inclusive ``(lo, hi)``.
            Ignored by the ``chain`` variant, as is ``distractor_hops``.
        distractor_hops: length of each distractor chain, an int or inclusive ``(lo, hi)``.
        values: pool of value words; every chain in a prompt gets a different one.
        names: pool of variable names (a pretrained tokenizer's one-token names, see
            :func:`dataset_scripts.tokenizer.task_words`).

    Returns:
        An example dict: ``question``, ``steps``, ``answer``, ``trace``, ``hops``,
        ``variant`` and ``lane``.
    """
    (min_count, max_count), (min_length, max_length) = _check_pointer_args(
        hops, variant, num_distractors, distractor_hops, values, names
    )
    num_chains = 1 + rng.randint(min_count, max_count)
    lengths = [hops] + [rng.randint(min_length, max_length) for _ in range(num_chains - 1)]
    names = rng.sample(names, sum(lengths))
    words = rng.sample(values, num_chains)

    # Chain i uses the next lengths[i] names: the first holds the word, each later one the previous name.
    statements = []
    start = 0
    for length, word in zip(lengths, words):
        chain = names[start : start + length]
        start += length
        statements.append(f"{chain[0]} = {word}.")
        statements.extend(f"{name} = {previous}." for previous, name in zip(chain, chain[1:]))
    # The answer chain is the first one, queried at its last name: its statements, followed from the query.
    steps = list(reversed(statements[:hops]))
    if variant == "shuffled":
        rng.shuffle(statements)

    query, answer = names[hops - 1], words[0]
    return {
        "question": " ".join(statements) + QUESTION.format(query=query),
        "steps": steps,
        "answer": answer,
        "trace": list(reversed(names[: hops - 1])) + [answer],
        "hops": hops,
        "variant": variant,
        "lane": "pointer",
    }


def check_arith_ops(ops: str) -> None:
    """Raise if ``ops`` is not a non-empty string of the arith lane's operations."""
    if not ops or set(ops) - set(ARITH_OPS):
        raise ValueError(f"ops must be a non-empty string of {''.join(ARITH_OPS)!r}, got {ops!r}")


def make_arith_example(
    rng: random.Random, hops: int, names: Sequence[str] = VARIABLE_NAMES, ops: str = "".join(ARITH_OPS)
) -> dict:
    """Draw one arithmetic-lane example: a chain of ``hops`` statements mod 10.

    The first statement assigns a digit, each later one applies one of ``ops``
    (``+``, ``-``, ``*``) with a digit to the previous variable. ``steps`` are the
    statements in order and ``trace`` the value after each, so ``trace[-1]`` is the answer.
    Multiplication never uses 0, which would make the answer independent of the
    earlier hops.
    """
    _check_hops(hops, names=names)
    check_arith_ops(ops)
    names = rng.sample(names, hops)
    value = rng.randrange(10)
    statements = [f"{names[0]} = {value}."]
    path = [str(value)]
    for previous, name in zip(names, names[1:]):
        op = rng.choice(ops)
        operand = rng.randint(1, 9) if op == "*" else rng.randrange(10)
        value = ARITH_OPS[op](value, operand)
        statements.append(f"{name} = {previous} {op} {operand}.")
        path.append(str(value))
    return {
        "question": " ".join(statements) + QUESTION.format(query=names[-1]),
        "steps": statements,
        "answer": path[-1],
        "trace": path,
        "hops": hops,
        "variant": "chain",
        "lane": "arith",
    }


def generate_examples(
    n: int,
    hops,
    variant: str = "shuffled",
    seed: int = 0,
    lane: str = "pointer",
    **kwargs,
) -> list[dict]:
    """Generate ``n`` examples, deterministically in ``seed``.

    Args:
        n: number of examples.
        hops: an int, or a sequence of ints drawn uniformly per example.
        variant: pointer-lane variant, see :func:`make_example` (the arith lane is always a chain).
        seed: seed of the ``random.Random`` driving generation.
        lane: ``"pointer"`` (:func:`make_example`) or ``"arith"`` (:func:`make_arith_example`).
        **kwargs: forwarded to :func:`make_example` (``num_distractors``, ``distractor_hops``, ``values``,
            ``names``); the arith lane takes ``names`` and ``ops`` and ignores ``values``.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if lane not in LANES:
        raise ValueError(f"lane must be one of {LANES}, got {lane!r}")
    hop_choices = [hops] if isinstance(hops, int) else list(hops)
    if not hop_choices:
        raise ValueError(f"hops must be an int or a non-empty sequence of ints, got {hops!r}")

    if lane == "arith":
        # Its values are digits, so a `values` pool does not apply (like `variant`, it is ignored).
        options = {key: value for key, value in kwargs.items() if key != "values"}
        if set(options) - {"names", "ops"}:
            raise ValueError(f"the arith lane takes only `names` and `ops`, got {sorted(options)}")
        for choice in set(hop_choices):
            make_arith_example(random.Random(0), choice, **options)

        def make(rng, hop):
            return make_arith_example(rng, hop, **options)
    else:
        # Validate every hop count up front, not only those that happen to be drawn.
        for choice in set(hop_choices):
            make_example(random.Random(0), choice, variant=variant, **kwargs)

        def make(rng, hop):
            return make_example(rng, hop, variant=variant, **kwargs)

    rng = random.Random(seed)
    return [make(rng, rng.choice(hop_choices)) for _ in range(n)]


def _split_seed(seed: int, split: str) -> int:
    """Derive an independent, stable seed for one split."""
    digest = hashlib.sha256(f"{seed}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def build_datasets(
    seed: int = 0,
    train_size: int = 100_000,
    val_size: int = 2_000,
    test_size: int = 2_000,
    hops_train: Sequence[int] = (1, 2, 3, 4, 5),
    ood_hops: Sequence[int] = (6, 8, 10, 12, 16, 24, 32, 64),
    ood_size: int = 1_000,
    heldout_size: int = 2_000,
    variant: str = "shuffled",
    num_distractors=(1, 3),
    distractor_hops=(1, 5),
) -> DatasetDict:
    """Build the pointer-lane splits.

    Splits: ``train``, ``validation`` and ``test`` (hops from ``hops_train``),
    ``ood_hops_<h>`` for each ``h`` in ``ood_hops``, and ``heldout_values``
    (hops from ``hops_train``, every value word from ``HELDOUT_VALUE_WORDS``,
    which training never uses). Each split has its own sub-seed.

    Evaluation splits never repeat a training prompt nor a prompt of an earlier
    evaluation split; such duplicates are dropped, so those splits can come out
    slightly smaller than requested.
    """
    options = {"variant": variant, "num_distractors": num_distractors, "distractor_hops": distractor_hops}

    def generate(split, size, hops, values=TRAIN_VALUE_WORDS):
        return generate_examples(size, hops, seed=_split_seed(seed, split), values=values, **options)

    train = generate("train", train_size, hops_train)
    splits = {"train": train}
    seen = {example["question"] for example in train}

    evaluation = [("validation", val_size, hops_train), ("test", test_size, hops_train)]
    evaluation += [(f"ood_hops_{hop}", ood_size, hop) for hop in ood_hops]
    for split, size, hops in evaluation + [("heldout_values", heldout_size, hops_train)]:
        values = HELDOUT_VALUE_WORDS if split == "heldout_values" else TRAIN_VALUE_WORDS
        kept = []
        for example in generate(split, size, hops, values):
            if example["question"] not in seen:
                seen.add(example["question"])
                kept.append(example)
        splits[split] = kept

    return DatasetDict({split: Dataset.from_list(rows, features=FEATURES) for split, rows in splits.items()})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate multi-hop variable lookup datasets.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, default="shuffled")
    parser.add_argument("--train_size", type=int, default=100_000)
    args = parser.parse_args(argv)

    dataset = build_datasets(seed=args.seed, train_size=args.train_size, variant=args.variant)
    dataset.save_to_disk(str(args.out))
    build_tokenizer().save_pretrained(str(args.out / "tokenizer"))

    for split, rows in dataset.items():
        print(f"{split:>16}: {rows.num_rows}")
    print(f"saved dataset to {args.out} and tokenizer to {args.out / 'tokenizer'}")


if __name__ == "__main__":
    main()
