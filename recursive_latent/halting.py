"""Halting rules of `RecursiveLatentForCausalLM.reason()`: after each loop, which of the examples still looping stop.
Small functions in a table (Huginn's exit evaluators, as functions); `halting_rule` refuses unknown names."""

from dataclasses import dataclass

import torch

from .configuration_recursive import HALTING_MODES


@dataclass
class LoopStep:
    """What a halting rule sees after one loop, for the b examples still looping: the loop index (from 0), the
    loop cap, the logits (b, V) and predicted token (b,), the vector the head read (b, D) and the previous one (or
    None)."""

    loop: int
    max_loops: int
    logits: torch.Tensor
    prediction: torch.Tensor
    output: torch.Tensor
    previous: torch.Tensor | None


def stop_on_halt_token(model, step):
    """`token`: the loop predicted `<HALT>` (trained with a `<HALT>` target after the path), with p >=
    `halt_token_threshold`."""
    if model.config.halt_token_id is None:
        raise ValueError("`halting='token'` needs `config.halt_token_id`, the id of `<HALT>` in the model's tokenizer.")
    return model.halts(step.logits)


def stop_on_halt_head(model, step):
    """`head`: the halting head's p_halt reached `halt_threshold` (as in TRM and the CTR paper)."""
    return torch.sigmoid(model.halt_logit(step.output)) >= model.config.halt_threshold


def stop_after_fixed_loops(model, step):
    """`fixed`: every example runs exactly `max_loops` loops (as Ouro and Huginn run)."""
    return torch.full_like(step.prediction, step.loop + 1 == step.max_loops, dtype=torch.bool)


def stop_when_latent_settles(model, step):
    """`velocity`: the latent stopped moving, ||x_t - x_{t-1}|| / ||x_t|| < `halt_velocity` (seed 003); the first
    loop has nothing to compare with."""
    if step.previous is None:
        return torch.zeros_like(step.prediction, dtype=torch.bool)
    return (step.output - step.previous).norm(dim=-1) / step.output.norm(dim=-1) < model.config.halt_velocity


HALTING_RULES = {
    "token": stop_on_halt_token, "head": stop_on_halt_head, "fixed": stop_after_fixed_loops,
    "velocity": stop_when_latent_settles,
}
assert tuple(HALTING_RULES) == HALTING_MODES  # the names the config accepts


def halting_rule(name):
    """The halting rule called `name`; unknown names are refused with the list of known ones."""
    if name not in HALTING_RULES:
        raise ValueError(f"`halting` must be one of {', '.join(map(repr, HALTING_RULES))} (got {name!r}).")
    return HALTING_RULES[name]


__all__ = ["HALTING_RULES", "LoopStep", "halting_rule"]
