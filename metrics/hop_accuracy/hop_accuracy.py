"""Exact match of hop-chain answers, overall and per hop count; optionally trace match and halting figures."""

from collections import defaultdict

import datasets
import evaluate

_DESCRIPTION = """
Exact match between predicted and reference answer words, overall (`exact_match`) and for each hop count present
(`exact_match_hop_<h>`). Given `predicted_traces` and `reference_paths`, also `trace_match` (loops 1..h named exactly
the path). Given `loops`, also `halt_accuracy` (halted exactly at loop h+1) and `mean_loops`, overall and per hop.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): predicted answer words.
    references (`list[str]`): reference answer words.
    hops (`list[int]`): hop count of each example.
    predicted_traces (`list[list[str]]`, *optional*): the token predicted at each loop.
    reference_paths (`list[list[str]]`, *optional*): the true path (h nodes, the value last).
    loops (`list[int]`, *optional*): loops run per example, counting the `<HALT>` loop.
    halted (`list[bool]`, *optional*): whether each example halted; without it an example counts as halted.
Returns:
    `exact_match`, `exact_match_hop_<h>`; with traces `trace_match`, `trace_match_hop_<h>`; with loops
    `halt_accuracy`, `halt_accuracy_hop_<h>`, `mean_loops`, `mean_loops_hop_<h>`. All rates are in [0, 1].
Examples:
    >>> metric = evaluate.load("metrics/hop_accuracy")
    >>> metric.compute(predictions=["dog", "cat"], references=["dog", "owl"], hops=[1, 2])
    {'exact_match': 0.5, 'exact_match_hop_1': 1.0, 'exact_match_hop_2': 0.0}
"""


def _rates(name, values, hops):
    """Overall mean of `values` and its mean for each hop count."""
    by_hop = defaultdict(list)
    for value, hop in zip(values, hops):
        by_hop[hop].append(value)
    result = {name: sum(values) / len(values)}
    result |= {f"{name}_hop_{h}": sum(v) / len(v) for h, v in sorted(by_hop.items())}
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HopAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, hops=None, predicted_traces=None, reference_paths=None, loops=None,
                 halted=None):
        if hops is None or len(hops) != len(predictions):
            raise ValueError(f"`hops` must give one hop count per prediction (got {None if hops is None else len(hops)} "
                             f"for {len(predictions)} predictions).")
        if not predictions:
            raise ValueError("Nothing to score: `predictions` is empty.")
        result = _rates("exact_match", [p == r for p, r in zip(predictions, references)], hops)
        if (predicted_traces is None) != (reference_paths is None):
            raise ValueError("Pass both `predicted_traces` and `reference_paths`, or neither.")
        if predicted_traces is not None:
            matches = [list(t[: len(p)]) == list(p) for t, p in zip(predicted_traces, reference_paths)]
            result |= _rates("trace_match", matches, hops)
        if loops is not None:
            halted = halted if halted is not None else [True] * len(loops)
            result |= _rates("halt_accuracy", [bool(s) and n == h + 1 for n, h, s in zip(loops, hops, halted)], hops)
            result |= _rates("mean_loops", list(loops), hops)
        return result
