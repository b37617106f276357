"""Exact-match evaluation of `reason()` on examples of the package's format (`recursive_latent.examples`), grouped
by number of steps; shared by the trainer and the benchmarks."""

import math
import platform
import time
from collections import Counter, defaultdict
from types import SimpleNamespace

import torch
import transformers
from tqdm.auto import tqdm

from .configuration_recursive import MAX_INFERENCE_LOOPS
from .examples import HALT_TOKEN, LoopTargets, normalize_examples


def machine_facts():
    """What a figure or a run depends on beyond its seed: the torch thread count (it sets the order of float sums, so
    a seeded run repeats bit for bit only at the same count), the platform and the library versions."""
    return {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": str(torch.__version__),
            "transformers": transformers.__version__}


def wilson_interval(successes, total, z=1.96):
    """95% Wilson score interval of a binomial proportion (stays inside [0, 1], sane at 0% and 100%)."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    denominator = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.no_grad()
def generate_reason(model, input_ids, attention_mask, halt_id, pad_id, max_loops=None):
    """`reason()` for a plain causal LM that writes the path as tokens (the token-recurrence baseline): greedy
    decoding until `<HALT>`, one generated token per loop, the answer the token before it."""
    max_loops = max_loops or MAX_INFERENCE_LOOPS
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_loops,
                               do_sample=False, eos_token_id=halt_id, pad_token_id=pad_id)[:, input_ids.shape[1]:]
    is_halt = generated == halt_id
    halted = is_halt.any(1)
    first_halt = torch.where(halted, is_halt.int().argmax(1), torch.full_like(halted, generated.shape[1], dtype=torch.long))
    loops = torch.where(halted, first_halt + 1, first_halt)
    rows = torch.arange(generated.shape[0], device=generated.device)
    answer = torch.where(first_halt > 0, generated[rows, (first_halt - 1).clamp(min=0)], torch.full_like(first_halt, pad_id))
    steps = torch.arange(generated.shape[1], device=generated.device)
    trace = torch.where(steps[None] < loops[:, None], generated, pad_id)
    return SimpleNamespace(answer_ids=answer, loops=loops, halted=halted, trace_ids=trace)


@torch.no_grad()
def reason_batches(model, tokenizer, examples, batch_size=256, max_loops=None, progress=False, **reason_kwargs):
    """Run `model.reason` over `examples` (dicts with `question`, optionally `lane`); yield (chunk, inputs, output) per
    batch, `inputs` being the tokenized chunk. `reason_kwargs` go to `reason` (e.g. `halting`)."""
    model.eval()
    base_lane = getattr(model.config, "base_lane", None)
    halt_id = tokenizer.convert_tokens_to_ids(HALT_TOKEN)
    chunks = range(0, len(examples), batch_size)
    for start in tqdm(chunks, desc="reason", disable=not progress):
        chunk = examples[start : start + batch_size]
        inputs = tokenizer([example["question"] for example in chunk], padding=True, return_tensors="pt")
        inputs = {key: value.to(model.device) for key, value in inputs.items()}
        if not hasattr(model, "reason"):  # a plain causal LM: the token-recurrence baseline
            yield chunk, inputs, generate_reason(model, inputs["input_ids"], inputs["attention_mask"], halt_id,
                                                 tokenizer.pad_token_id, max_loops)
            continue
        # Lanes are passed only when some example leaves the base lane, so checkpoints from before lanes still run.
        lanes = [example.get("lane") or base_lane for example in chunk]
        kwargs = {"lanes": lanes, **reason_kwargs} if set(lanes) != {base_lane} else reason_kwargs
        yield chunk, inputs, model.reason(inputs["input_ids"], inputs["attention_mask"], max_loops=max_loops, **kwargs)


def evaluate_examples(model, tokenizer, examples, batch_size=256, max_loops=None, progress=False, **reason_kwargs):
    """Evaluate `reason()` on `examples` (a list of dicts or a `datasets.Dataset` in the package's format), grouped by
    number of steps n: answer exact match (the answer loop names the last trace element), trace exact match (loops
    1..n name exactly the trace), halt exactly at loop n+1 (`halt_rate`), a trace whose first wrong step is `<HALT>`
    (`early_halt_rate`: the loop stopped inside the chain rather than stepping to a wrong word), each as a rate with
    its 95% interval, plus mean loops and mean prompt tokens; examples/s over the whole set. `first_wrong_loops`
    counts the traces that went wrong by the loop where they first did (a trace cut off by `max_loops` goes wrong at
    the first loop it did not run), which tells a misread prompt (early loops) from a walk that drifts (late ones).

    Words the tokenizer does not know can never be matched: `unknown_word_examples` counts examples whose question
    holds one (`<unk>`), `untargetable_examples` those with a trace word that is not one token.

    Returns `{"per_steps": {n: {...}}, "examples_per_second": float, "unknown_word_examples": int,
    "untargetable_examples": int, "predictions": [...]}`.
    """
    examples = normalize_examples(examples)
    targets = LoopTargets(tokenizer)
    unk_id = tokenizer.unk_token_id
    counts = defaultdict(lambda: defaultdict(int))
    first_wrong_loops = defaultdict(Counter)
    predictions = []
    start = time.perf_counter()
    for chunk, inputs, out in reason_batches(model, tokenizer, examples, batch_size, max_loops, progress, **reason_kwargs):
        answers = [targets.word(token_id) for token_id in out.answer_ids.tolist()]
        prompt_tokens = inputs["attention_mask"].sum(1).tolist()
        has_unknown = (inputs["input_ids"] == unk_id).any(1).tolist() if unk_id is not None else [False] * len(chunk)
        for row, example in enumerate(chunk):
            reference, loops = example["trace"], int(out.loops[row])
            trace = [targets.word(token_id) for token_id in out.trace_ids[row, :loops].tolist()]
            stats = counts[len(reference)]
            stats["n"] += 1
            stats["answer"] += answers[row] == reference[-1]
            steps_right = [said in targets.words(step) for said, step in zip(trace, reference)]  # a set: any member
            stats["trace"] += len(steps_right) == len(reference) and all(steps_right)
            stats["halt"] += bool(out.halted[row]) and loops == len(reference) + 1
            first_wrong = steps_right.index(False) if False in steps_right else None
            stats["early_halt"] += first_wrong is not None and trace[first_wrong] == HALT_TOKEN
            if first_wrong is None and len(steps_right) < len(reference):  # cut off before the chain's end
                first_wrong = len(steps_right)
            if first_wrong is not None:
                first_wrong_loops[len(reference)][first_wrong + 1] += 1
            stats["loops"] += loops
            stats["prompt_tokens"] += prompt_tokens[row]
            stats["unknown"] += has_unknown[row]
            stats["untargetable"] += any(targets.id(word) is None for step in reference for word in targets.words(step))
            predictions.append({"prediction": answers[row], "trace": trace, "loops": loops, "halted": bool(out.halted[row])})
    seconds = time.perf_counter() - start
    per_steps = {}
    for steps, stats in sorted(counts.items()):
        n = stats["n"]
        row = {"n": n, "mean_loops": stats["loops"] / n, "mean_prompt_tokens": stats["prompt_tokens"] / n}
        for key, name in (("answer", "answer_exact_match"), ("trace", "trace_exact_match"), ("halt", "halt_rate"),
                          ("early_halt", "early_halt_rate")):
            row[name] = stats[key] / n
            row[f"{name}_ci95"] = list(wilson_interval(stats[key], n))
        row["first_wrong_loops"] = dict(sorted(first_wrong_loops[steps].items()))
        per_steps[steps] = row
    return {
        "per_steps": per_steps, "examples_per_second": len(examples) / seconds,
        "unknown_word_examples": sum(stats["unknown"] for stats in counts.values()),
        "untargetable_examples": sum(stats["untargetable"] for stats in counts.values()),
        "predictions": predictions,
    }
