"""Exact-match evaluation on a model whose traces are scripted: each rate counts what its docstring says."""

from types import SimpleNamespace

import pytest
import torch

from dataset_scripts.hop_chains import TRAIN_VALUE_WORDS, generate_examples
from dataset_scripts.tokenizer import HALT_TOKEN, build_tokenizer
from recursive_latent.evaluation import evaluate_examples


class ScriptedModel:
    """Stands in for a trained model: `reason` returns fixed traces (lists of tokens), one per prompt in order."""

    config = SimpleNamespace(base_lane="pointer")
    device = torch.device("cpu")

    def __init__(self, tokenizer, traces):
        self.tokenizer, self.traces = tokenizer, list(traces)

    def eval(self):
        return self

    def reason(self, input_ids, attention_mask, max_loops=None):
        traces = [self.tokenizer.convert_tokens_to_ids(self.traces.pop(0)) for _ in range(input_ids.shape[0])]
        width = max(map(len, traces))
        trace_ids = torch.tensor([trace + [0] * (width - len(trace)) for trace in traces])
        halt = self.tokenizer.convert_tokens_to_ids(HALT_TOKEN)
        halted = torch.tensor([trace[-1] == halt for trace in traces])
        # The answer is the last prediction that is not <HALT> (as in `reason`).
        answers = torch.tensor([next(t for t in reversed(trace) if t != halt) for trace in traces])
        return SimpleNamespace(answer_ids=answers, loops=torch.tensor(list(map(len, traces))), halted=halted,
                               trace_ids=trace_ids)


def test_rates_tell_a_halt_inside_the_chain_from_a_wrong_step():
    tokenizer = build_tokenizer()
    examples = generate_examples(4, hops=3, seed=0)
    paths = [example["trace"] for example in examples]
    other = next(word for word in TRAIN_VALUE_WORDS if word not in paths[2])
    traces = [
        paths[0] + [HALT_TOKEN],  # right, halts at hops + 1
        paths[1][:1] + [HALT_TOKEN],  # stops inside the chain
        [paths[2][0], other, HALT_TOKEN],  # steps to a wrong word, then halts early too
        paths[3][:2] + [paths[3][2], paths[3][2], HALT_TOKEN],  # right trace, halts one loop late
    ]
    row = evaluate_examples(ScriptedModel(tokenizer, traces), tokenizer, examples)["per_steps"][3]
    assert row["answer_exact_match"] == pytest.approx(2 / 4)
    assert row["trace_exact_match"] == pytest.approx(2 / 4)
    assert row["halt_rate"] == pytest.approx(1 / 4)
    assert row["early_halt_rate"] == pytest.approx(1 / 4)
    assert row["mean_loops"] == pytest.approx((4 + 2 + 3 + 5) / 4)
    assert row["first_wrong_loops"] == {2: 2}  # both wrong traces go wrong at their second loop
    low, high = row["early_halt_rate_ci95"]
    assert low < 1 / 4 < high


def test_first_wrong_loops_count_a_cut_off_trace_at_the_loop_it_did_not_run():
    tokenizer = build_tokenizer()
    examples = generate_examples(3, hops=3, seed=1)
    paths = [example["trace"] for example in examples]
    other = next(word for word in TRAIN_VALUE_WORDS if word not in paths[1])
    traces = [
        paths[0][:2],  # cut off after two right steps: wrong at loop 3
        [other, HALT_TOKEN],  # a wrong first step: wrong at loop 1
        paths[2] + [HALT_TOKEN],  # right
    ]
    row = evaluate_examples(ScriptedModel(tokenizer, traces), tokenizer, examples)["per_steps"][3]
    assert row["first_wrong_loops"] == {1: 1, 3: 1}
    assert row["trace_exact_match"] == pytest.approx(1 / 3)
