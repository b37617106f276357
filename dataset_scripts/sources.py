"""Where a training run's examples come from: a built-in generator (hop chains, ProsQA-style graphs) or a user's
file, all in the package's one example format (:mod:`recursive_latent.examples`), behind the same curriculum knob
(`max_hops`: the longest chain, in steps, a training example may have; for ProsQA, the graph-size stage)."""

import random

import torch

from dataset_scripts.collator import tokenize
from dataset_scripts.hop_chains import LANES, generate_examples, make_arith_example, make_example
from dataset_scripts.prosqa import CURRICULUM, curriculum_example, generate_prosqa, to_example


def example_kwargs(data_args, words, lane=None):
    """Options for `make_example` / `generate_examples` in `lane` (default: the run's): the `shuffled` variant's
    distractor settings and the tokenizer's name and value pools (`words`, from `task_words`), or the arith ops."""
    if (lane or data_args.lane) == "arith":
        return {"names": words["names"], "ops": data_args.arith_ops}
    return dict(
        num_distractors=(data_args.min_distractors, data_args.max_distractors),
        distractor_hops=(data_args.min_distractor_hops, data_args.max_distractor_hops),
        **words,
    )


def parse_prompt_stage(stage):
    """`"0.8:2-16:1-8"` -> (0.8, (2, 16), (1, 8), None); an optional fourth part is the stage's walks, the hops of the
    question's own chain: `"0.8:2-16:1-8:1-8"` -> (0.8, (2, 16), (1, 8), (1, 8))."""
    start, *ranges = str(stage).split(":")
    start = float(start)
    ranges = [tuple(int(bound) for bound in part.split("-")) for part in ranges]
    if not 0 <= start < 1 or len(ranges) not in (2, 3) or any(len(bounds) != 2 for bounds in ranges):
        raise ValueError(stage)
    if len(ranges) == 3 and not 1 <= ranges[2][0] <= ranges[2][1]:
        raise ValueError(stage)
    distractors, hops, *walks = ranges
    return start, distractors, hops, walks[0] if walks else None


class HopChainStream(torch.utils.data.Dataset):
    """Fresh training examples made on the fly: example `i` depends only on (seed, i, current max hops, prompt stage),
    so a resumed run sees the same data in the same order. `max_hops` is raised by the curriculum; `progress` (the
    share of training steps done, set by `trainers.checkpoints.PromptStageCallback`) selects the `prompt_stages`
    reached, with their walk lengths where they give one. The stage follows the steps, not the index, because the
    Trainer's sampler shuffles the indices.

    With `batch_size` the stream groups its batches by prompt length (the Trainer's `group_by_length`, for a stream):
    it is read in order, and each block of `GROUPED_BATCHES` batches holds the same fresh examples as before, sorted
    by prompt length, cut into batches and the batches shuffled. A batch costs what its longest prompt costs (a Mamba2
    scan pays for the padding), and an ungrouped batch's longest prompt is about 1.9x its mean. A new curriculum stage
    redraws the block it falls in, and so does a new prompt stage. Prompt stages are grouped in blocks of
    `data_args.stage_grouped_batches` batches (1: ungrouped): their prompts vary up to 8x in length, and blocks of 4
    or 16 batches there cost depth where pairs did not (docs/experiments.md, Mamba2)."""

    GROUPED_BATCHES = 16  # per block

    def __init__(self, data_args, words, size, seed, max_hops, fixed_hops=None, extra_loops=0, batch_size=None):
        self.data_args, self.size, self.seed, self.max_hops, self.fixed_hops = data_args, size, seed, max_hops, fixed_hops
        self.options = {lane: example_kwargs(data_args, words, lane) for lane in LANES}
        self.extra_loops, self.progress = extra_loops, 0.0
        stages = getattr(data_args, "prompt_stages", []) if fixed_hops is None else []
        self.stages = [(start, dict(self.options["pointer"], num_distractors=distractors, distractor_hops=hops), walks)
                       for start, distractors, hops, walks in map(parse_prompt_stage, stages)]
        self.batch_size, self._block = batch_size, (None, [])

    def reached_stages(self):
        """The prompt stages training has reached, as (start, options, walks)."""
        return [stage for stage in self.stages if self.progress >= stage[0]]

    def stage(self):
        """The pointer lane's options and walk lengths now: the latest prompt stage training has reached, if any
        (walks None: the run's own, `min_hops`..`max_hops`)."""
        reached = self.reached_stages()
        return reached[-1][1:] if reached else (self.options["pointer"], None)

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        stages = len(self.reached_stages())
        per_block = self.data_args.stage_grouped_batches if stages else self.GROUPED_BATCHES
        if self.batch_size is None or per_block == 1:
            return self.example(index)
        block_size = self.batch_size * per_block
        block, offset = divmod(index, block_size)
        key = (block, self.max_hops, stages)
        if self._block[0] != key:
            start = block * block_size
            examples = sorted((self.example(i) for i in range(start, min(start + block_size, self.size))),
                              key=lambda example: len(example["question"]))
            batches = [examples[i : i + self.batch_size] for i in range(0, len(examples), self.batch_size)]
            random.Random(f"{self.seed} block {block}").shuffle(batches)
            self._block = (key, [example for batch in batches for example in batch])
        return self._block[1][offset]

    def example(self, index):
        """Example `index` of the stream as drawn, before any grouping."""
        args = self.data_args
        rng = random.Random(self.seed * 1_000_003 + index)
        pointer_options, walks = self.stage()
        hops = self.fixed_hops or rng.randint(*(walks or (args.min_hops, self.max_hops)))
        # The draw for --mix_arith happens only when it is on, so runs without it keep their data.
        if args.lane == "arith" or (args.mix_arith and rng.random() < args.mix_arith):
            example = make_arith_example(rng, hops, **self.options["arith"])
        else:
            example = make_example(rng, hops, variant=args.variant, **pointer_options)
        if self.extra_loops:
            example["extra_loops"] = rng.randint(0, self.extra_loops)
        return example


class ProsQAStream(torch.utils.data.Dataset):
    """Fresh ProsQA-style examples made on the fly, deterministic in (seed, i, stage) like `HopChainStream`; the
    curriculum's `max_hops` is the graph-size stage (`dataset_scripts.prosqa.CURRICULUM`, the last one the published
    distribution), with a `replay` share of earlier stages and, at the last stage, a `large` share of larger graphs
    and an `even_depths` share of path lengths drawn uniformly."""

    def __init__(self, size, seed, max_hops, supervision, replay, large=0.0, even_depths=0.0):
        self.size, self.seed, self.max_hops, self.supervision, self.replay = size, seed, max_hops, supervision, replay
        self.large, self.even_depths = large, even_depths

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        rng = random.Random(self.seed * 1_000_003 + index)
        return curriculum_example(rng, self.max_hops, self.replay, self.supervision, self.large, self.even_depths)


class ExampleStream(torch.utils.data.Dataset):
    """A fixed set of examples (a user's file) for the Trainer's sampler, which shuffles it anew every epoch.

    With a curriculum (`max_hops` set), index `i` is mapped onto the examples of at most `max_hops` steps
    (`i` modulo their count), so the sampler's shuffled indices draw uniformly among them; without one it is the
    examples as they are."""

    def __init__(self, examples, max_hops=None):
        self.examples, self.max_hops = examples, max_hops
        self._pool = (None, examples)

    def __len__(self):
        return len(self.examples)

    def pool(self):
        """The examples the current curriculum stage allows (computed once per stage)."""
        if self._pool[0] != self.max_hops:
            allowed = [example for example in self.examples if len(example["trace"]) <= self.max_hops]
            self._pool = (self.max_hops, allowed or self.examples)
        return self._pool[1]

    def __getitem__(self, index):
        if self.max_hops is None:
            return self.examples[index]
        pool = self.pool()
        return pool[index % len(pool)]


def generated_validation(data_args, words):
    """Fresh prompts per eval hop count. Their seeds (10,000 + hops) differ from every training stream's seed;
    the benchmarks use other seeds again."""
    examples = []
    for hops in data_args.eval_hops:
        examples += generate_examples(data_args.eval_size, hops, variant=data_args.variant, seed=10_000 + hops,
                                      lane=data_args.lane, **example_kwargs(data_args, words))
    return examples


def generated_prosqa_validation(data_args):
    """Fresh ProsQA-style examples of the published distribution (seed 10,000; the benchmarks use others)."""
    return [to_example(example, data_args.prosqa_supervision) for example in generate_prosqa(data_args.eval_size, 10_000)]


PROSQA_STAGES = len(CURRICULUM)


def lm_collator(tokenizer):
    """Stage 1 batches: the question followed by its answer word, as next-token LM text."""

    def collate(examples):
        batch = tokenize(tokenizer, [f"{e['question']} {e['trace'][-1]}" for e in examples])
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    return collate
