"""Batch collation with per-loop supervision targets."""

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from recursive_latent.examples import LoopTargets

IGNORE_INDEX = -100


def tokenize(tokenizer, texts):
    """`tokenizer(texts, padding=True, return_tensors="pt")`, with the tensors made by `as_tensors`."""
    return as_tensors(tokenizer(texts, padding=True))


def as_tensors(encoded):
    """The tokenizer's padded lists as int64 tensors, through numpy: transformers' `return_tensors` path and
    `torch.tensor` walk the nested lists in Python, several times slower on long prompts
    (`python benchmarks/data_speed.py`)."""
    return {name: torch.from_numpy(np.array(values, dtype=np.int64)) for name, values in encoded.items()}


@dataclass
class LoopLabelCollator:
    """Tokenize examples' questions and stack their traces into per-loop labels.

    Examples are in the package's format (:mod:`recursive_latent.examples`, `trace` filled in). Returns
    ``input_ids`` and ``attention_mask`` (left padded by the tokenizer), ``loop_labels`` of shape ``[batch, loops]``
    holding the token id of each loop's target (the trace, then ``<HALT>``; an example's optional ``extra_loops``
    adds that many more ``<HALT>`` loops) and ``IGNORE_INDEX`` after it, or ``[batch, loops, set size]`` when a
    trace has a set of words as a target (``IGNORE_INDEX`` pads each set), ``answer_ids`` and ``num_steps`` of shape
    ``[batch]``, and ``lanes``, each example's task lane (None: the model's base lane).

    Args:
        tokenizer: the task tokenizer (:func:`dataset_scripts.tokenizer.load_tokenizer`).
        max_loops: fixed number of loops; by default the longest example in the batch.
        answer_only_loops: supervise only the answer, at this loop (fixed-depth training without halting);
            every other loop is ``IGNORE_INDEX``.
    """

    tokenizer: PreTrainedTokenizerBase
    max_loops: int | None = None
    answer_only_loops: int | None = None

    def __post_init__(self):
        self.targets = LoopTargets(self.tokenizer)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = tokenize(self.tokenizer, [example["question"] for example in examples])
        traces = [self.targets.ids(example["trace"]) for example in examples]
        answers = torch.tensor([trace[-1] for trace in traces])
        if self.answer_only_loops is not None:
            loop_labels = torch.full((len(examples), self.answer_only_loops), IGNORE_INDEX, dtype=torch.long)
            loop_labels[:, -1] = answers
            return self.finish(batch, loop_labels, answers, examples)

        targets = [trace + [self.targets.halt_id] * (1 + example.get("extra_loops", 0))
                   for trace, example in zip(traces, examples)]
        longest = max(len(target) for target in targets)
        num_loops = longest if self.max_loops is None else self.max_loops
        if longest > num_loops:
            raise ValueError(f"max_loops={self.max_loops} is too small: the batch needs {longest} loops")

        set_size = max((len(ids) for target in targets for ids in target if isinstance(ids, list)), default=0)
        shape = (len(examples), num_loops) + ((set_size,) if set_size else ())
        loop_labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        for row, target in enumerate(targets):
            for loop, ids in enumerate(target):
                if set_size:
                    ids = ids if isinstance(ids, list) else [ids]
                    loop_labels[row, loop, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                else:
                    loop_labels[row, loop] = ids
        return self.finish(batch, loop_labels, answers, examples)

    @staticmethod
    def finish(batch, loop_labels, answers, examples):
        return {
            **batch,
            "loop_labels": loop_labels,
            "answer_ids": answers,
            "num_steps": torch.tensor([len(example["trace"]) for example in examples], dtype=torch.long),
            "lanes": [example.get("lane") for example in examples],
        }
