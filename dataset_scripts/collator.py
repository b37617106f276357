"""Batch collation with per-loop supervision targets."""

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass
class LoopLabelCollator:
    """Tokenize prompts and stack their ``loop_targets`` into per-loop labels.

    Returns ``input_ids`` and ``attention_mask`` (left padded by the tokenizer),
    ``loop_labels`` of shape ``[batch, loops]`` holding the token id of the target
    for each loop, ``IGNORE_INDEX`` after the example's ``<HALT>``, ``answer_ids``
    and ``hops`` of shape ``[batch]``, and ``lanes``, each example's task lane (a list of names).

    Args:
        tokenizer: the tokenizer from :func:`dataset_scripts.tokenizer.build_tokenizer`.
        max_loops: fixed number of loops; by default the longest ``loop_targets`` in the batch.
        answer_only_loops: supervise only the answer, at this loop (fixed-depth training without halting);
            every other loop is ``IGNORE_INDEX``.
    """

    tokenizer: PreTrainedTokenizerBase
    max_loops: int | None = None
    answer_only_loops: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer([example["prompt"] for example in examples], padding=True, return_tensors="pt")
        answers = torch.tensor(self.tokenizer.convert_tokens_to_ids([example["answer"] for example in examples]))
        if self.answer_only_loops is not None:
            loop_labels = torch.full((len(examples), self.answer_only_loops), IGNORE_INDEX, dtype=torch.long)
            loop_labels[:, -1] = answers
            return self.finish(batch, loop_labels, answers, examples)

        longest = max(len(example["loop_targets"]) for example in examples)
        num_loops = longest if self.max_loops is None else self.max_loops
        if longest > num_loops:
            raise ValueError(f"max_loops={self.max_loops} is too small: the batch needs {longest} loops")

        loop_labels = torch.full((len(examples), num_loops), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            target_ids = self.tokenizer.convert_tokens_to_ids(example["loop_targets"])
            if self.tokenizer.unk_token_id in target_ids:
                raise ValueError(f"loop_targets {example['loop_targets']} contain a token outside the vocabulary")
            loop_labels[row, : len(target_ids)] = torch.tensor(target_ids, dtype=torch.long)
        return self.finish(batch, loop_labels, answers, examples)

    @staticmethod
    def finish(batch, loop_labels, answers, examples):
        return {
            **batch,
            "loop_labels": loop_labels,
            "answer_ids": answers,
            "hops": torch.tensor([example["hops"] for example in examples], dtype=torch.long),
            "lanes": [example.get("lane", "pointer") for example in examples],
        }
