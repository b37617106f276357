"""Exact match of answers, overall and per hop count (or number of steps); optionally trace match and halting figures."""

from collections import defaultdict

import datasets
import evaluate

_DESCRIPTION = """
Exact match between predicted and reference answer words, overall (`exact_match`) and for each hop count present
(`exact_match_hop_<h>`), or, for examples of any task in the package's format, for each number of steps present
(`steps=` instead of `hops=`: `exact_match_steps_<n>`). Given `predicted_traces` and `reference_paths`, also
`trace_match` (loops 1..h named exactly the path). Given `loops`, also `halt_accuracy` (halted exactly at loop h+1)
and `mean_loops`, overall and per group.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): predicted answer words.
    references (`list[str]`): reference answer words.
    hops (`list[int]`): hop count of each example (or `steps`, its number of steps: one of the two).
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
    >>> metric.compute(predictions=["wumpus"], references=["wumpus"], steps=[3])
    {'exact_match': 1.0, 'exact_match_steps_3': 1.0}
"""


def _rates(name, values, groups, group_name):
    """Overall mean of `values` and its mean for each group (hop count or number of steps)."""
    by_group = defaultdict(list)
    for value, group in zip(values, groups):
        by_group[group].append(value)
    result = {name: sum(values) / len(values)}
    result |= {f"{name}_{group_name}_{g}": sum(v) / len(v) for g, v in sorted(by_group.items())}
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

    def _compute(self, predictions, references, hops=None, steps=None, predicted_traces=None, reference_paths=None,
                 loops=None, halted=None):
        if (hops is None) == (steps is None):
            raise ValueError("Pass `hops` (hop counts) or `steps` (numbers of steps), one per prediction.")
        groups, group_name = (hops, "hop") if hops is not None else (steps, "steps")
        if len(groups) != len(predictions):
            raise ValueError(f"`{'hops' if hops is not None else 'steps'}` must give one count per prediction (got "
                             f"{len(groups)} for {len(predictions)} predictions).")
        if not predictions:
            raise ValueError("Nothing to score: `predictions` is empty.")
        result = _rates("exact_match", [p == r for p, r in zip(predictions, references)], groups, group_name)
        if (predicted_traces is None) != (reference_paths is None):
            raise ValueError("Pass both `predicted_traces` and `reference_paths`, or neither.")
        if predicted_traces is not None:
            matches = [list(t[: len(p)]) == list(p) for t, p in zip(predicted_traces, reference_paths)]
            result |= _rates("trace_match", matches, groups, group_name)
        if loops is not None:
            halted = halted if halted is not None else [True] * len(loops)
            right = [bool(s) and n == g + 1 for n, g, s in zip(loops, groups, halted)]
            result |= _rates("halt_accuracy", right, groups, group_name)
            result |= _rates("mean_loops", list(loops), groups, group_name)
        return result
