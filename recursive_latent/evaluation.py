"""Exact-match evaluation of `reason()` on hop-chain examples, shared by the trainer and the benchmarks."""

import math
import time
from collections import defaultdict
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from dataset_scripts.tokenizer import HALT_TOKEN, word_ids

from .configuration_recursive import MAX_INFERENCE_LOOPS


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
    rows = torch.arange(generated.shape[0])
    answer = torch.where(first_halt > 0, generated[rows, (first_halt - 1).clamp(min=0)], torch.full_like(first_halt, pad_id))
    trace = torch.where(torch.arange(generated.shape[1])[None] < loops[:, None], generated, pad_id)
    return SimpleNamespace(answer_ids=answer, loops=loops, halted=halted, trace_ids=trace)


@torch.no_grad()
def reason_batches(model, tokenizer, examples, batch_size=256, max_loops=None, progress=False, **reason_kwargs):
    """Run `model.reason` over `examples` (dicts with `prompt`, optionally `lane`); yield (chunk, output) per batch.
    `reason_kwargs` go to `reason` (e.g. `halting`)."""
    model.eval()
    base_lane = getattr(model.config, "base_lane", "pointer")
    halt_id = tokenizer.convert_tokens_to_ids("<HALT>")
    chunks = range(0, len(examples), batch_size)
    for start in tqdm(chunks, desc="reason", disable=not progress):
        chunk = examples[start : start + batch_size]
        inputs = tokenizer([example["prompt"] for example in chunk], padding=True, return_tensors="pt")
        inputs = {key: value.to(model.device) for key, value in inputs.items()}
        if not hasattr(model, "reason"):  # a plain causal LM: the token-recurrence baseline
            yield chunk, generate_reason(model, inputs["input_ids"], inputs["attention_mask"], halt_id,
                                         tokenizer.pad_token_id, max_loops)
            continue
        # Lanes are passed only when some example leaves the base lane, so checkpoints from before lanes still run.
        lanes = [example.get("lane", base_lane) for example in chunk]
        kwargs = {"lanes": lanes, **reason_kwargs} if set(lanes) != {base_lane} else reason_kwargs
        yield chunk, model.reason(inputs["input_ids"], inputs["attention_mask"], max_loops=max_loops, **kwargs)


def evaluate_examples(model, tokenizer, examples, batch_size=256, max_loops=None, progress=False, **reason_kwargs):
    """Per hop count: answer exact match, trace exact match (loops 1..h name exactly the path), halt exactly at
    loop h+1 (`halt_rate`), a trace whose first wrong step is `<HALT>` (`early_halt_rate`: the loop stopped inside
    the chain, rather than stepping to a wrong name), mean loops, each as a rate with its 95% interval; plus
    examples/s over the whole set.

    Returns `{"per_hop": {h: {...}}, "examples_per_second": float, "predictions": [...]}`.
    """
    counts = defaultdict(lambda: defaultdict(int))
    predictions = []
    # Predicted ids as the task's words (a pretrained tokenizer's ` dog` is the word `dog`); other ids as tokens.
    words_by_id = {token_id: word for word, token_id in word_ids(tokenizer).items()}

    def as_words(ids):
        return [words_by_id.get(token_id) or tokenizer.convert_ids_to_tokens(token_id) for token_id in ids]

    start = time.perf_counter()
    for chunk, out in reason_batches(model, tokenizer, examples, batch_size, max_loops, progress, **reason_kwargs):
        answers = as_words(out.answer_ids.tolist())
        for row, example in enumerate(chunk):
            hops, loops = example["hops"], int(out.loops[row])
            trace = as_words(out.trace_ids[row, :loops].tolist())
            stats = counts[hops]
            stats["n"] += 1
            stats["answer"] += answers[row] == example["answer"]
            stats["trace"] += trace[:hops] == list(example["path"])
            stats["halt"] += bool(out.halted[row]) and loops == hops + 1
            first_wrong = next((k for k, (said, step) in enumerate(zip(trace, example["path"])) if said != step), None)
            stats["early_halt"] += first_wrong is not None and trace[first_wrong] == HALT_TOKEN
            stats["loops"] += loops
            predictions.append({"prediction": answers[row], "trace": trace, "loops": loops})
    seconds = time.perf_counter() - start
    per_hop = {}
    for hops, stats in sorted(counts.items()):
        n = stats["n"]
        row = {"n": n, "mean_loops": stats["loops"] / n}
        for key, name in (("answer", "answer_exact_match"), ("trace", "trace_exact_match"), ("halt", "halt_rate"),
                          ("early_halt", "early_halt_rate")):
            row[name] = stats[key] / n
            row[f"{name}_ci95"] = list(wilson_interval(stats[key], n))
        per_hop[hops] = row
    return {"per_hop": per_hop, "examples_per_second": len(examples) / seconds, "predictions": predictions}
