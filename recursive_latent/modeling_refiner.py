"""RecursiveRefiner (CTR): a tiny 2-layer MLP looped over a latent z and an answer vector y, with a halting head.

Per step s (the CTR-SGPS white paper, section 4):
    z_s = norm(z_{s-1} + f_lat([y_{s-1}, z_{s-1}, q, r̄, t]))  latent update ("residual + norm")
    y_s = normalize(y_{s-1} + f_ans([y_{s-1}, z_s]))         answer update, kept on the unit sphere
    p_s = sigmoid(w · [z_s, y_s, q, t] + b)                   halting probability
starting from z_0 = 0 and y_0 = pool(Y). Inference stops an example once p_s >= tau or at S_max.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_refiner import RecursiveRefinerConfig
from .lanes import LaneAdaptersMixin, LaneRouting


@dataclass
class RecursiveRefinerOutput(ModelOutput):
    """
    loss (`torch.FloatTensor`, *optional*): alignment (1 - cos) + weighted halting BCE at the last step.
    answer (`torch.FloatTensor` of shape `(batch, dim)`): y at the last step (unit norm).
    halt_probs (`torch.FloatTensor` of shape `(batch, steps)`): p_halt after every step.
    answers (`torch.FloatTensor` of shape `(batch, steps, dim)`): y after every step (steps run with gradients or not).
    """

    loss: torch.FloatTensor | None = None
    answer: torch.FloatTensor | None = None
    halt_probs: torch.FloatTensor | None = None
    answers: torch.FloatTensor | None = None


@dataclass
class RecursiveRefinerRefineOutput(ModelOutput):
    """
    answer (`(batch, dim)`): y_hat, the answer where each example stopped.
    halt_prob (`(batch,)`): p_halt at that step.
    steps (`(batch,)`): steps each example ran.
    trace (`(batch, steps, dim)`): y after every step, the last answer repeated after an example stopped.
    """

    answer: torch.FloatTensor | None = None
    halt_prob: torch.FloatTensor | None = None
    steps: torch.LongTensor | None = None
    trace: torch.FloatTensor | None = None


class RecursiveRefinerPreTrainedModel(PreTrainedModel):
    config: RecursiveRefinerConfig
    config_class = RecursiveRefinerConfig
    base_model_prefix = "refiner"


class RecursiveRefinerModel(LaneAdaptersMixin, RecursiveRefinerPreTrainedModel, LaneRouting):
    """The CTR refiner. `forward` runs a fixed number of steps (training: the first ones without gradients);
    `refine` runs until each example halts."""

    lane_targets = r"(f_lat|f_ans)\.(1|3)"  # the four Linear layers of the two MLPs

    def __init__(self, config: RecursiveRefinerConfig):
        super().__init__(config)
        d, h = config.dim, config.hidden_size
        self.lane_embedding = nn.Embedding(len(config.lane_names), config.lane_dim)
        self.pool_query = nn.Linear(d, d, bias=False) if config.pool == "attn" else None
        lat_in = d + h + config.lane_dim + d * config.use_query + d * config.use_centroid
        self.f_lat = nn.Sequential(nn.LayerNorm(lat_in), nn.Linear(lat_in, h), nn.GELU(), nn.Linear(h, h))
        # The paper's "residual + norm": without it z's norm grows every step and the answer drifts past the peak.
        self.z_norm = nn.LayerNorm(h) if config.latent_norm else None
        self.f_ans = nn.Sequential(nn.LayerNorm(d + h), nn.Linear(d + h, d), nn.GELU(), nn.Linear(d, d))
        self.halt = nn.Linear(h + 2 * d + config.lane_dim, 1)
        self.post_init()

    @property
    def lanes(self):
        return list(self.config.lane_names)

    @property
    def lane_router(self):
        return self

    def add_lane(self, lane, r=4, lora_alpha=8):
        if lane not in self.config.lane_names:
            raise ValueError(f"Unknown lane {lane!r}: this refiner has lanes {self.config.lane_names}.")
        return super().add_lane(lane, r, lora_alpha)

    # -- inputs --------------------------------------------------------------------------------------------------

    def check_inputs(self, query, candidates, centroid):
        d = self.config.dim
        if query.dim() != 2 or query.shape[1] != d:
            raise ValueError(f"`query` must have shape (batch, {d}) (got {tuple(query.shape)}).")
        if candidates.dim() != 3 or candidates.shape[0] != query.shape[0] or candidates.shape[2] != d:
            raise ValueError(f"`candidates` must have shape ({query.shape[0]}, K, {d}) (got {tuple(candidates.shape)}).")
        if candidates.shape[1] == 0:
            raise ValueError("`candidates` is empty (K = 0): the refiner needs at least one candidate vector.")
        if centroid is not None and tuple(centroid.shape) != tuple(query.shape):
            raise ValueError(f"`centroid` must have shape {tuple(query.shape)} (got {tuple(centroid.shape)}).")
        for name, value in (("query", query), ("candidates", candidates), ("centroid", centroid)):
            if value is not None and not torch.isfinite(value).all():
                raise ValueError(f"`{name}` holds NaN or infinite values.")

    def lane_ids(self, lanes, batch_size, device):
        lanes = [self.config.base_lane or self.config.lane_names[0]] * batch_size if lanes is None else lanes
        lanes = [lanes] * batch_size if isinstance(lanes, str) else list(lanes)
        self.row_adapters = self.adapter_names(lanes, batch_size)  # validates the names too
        return torch.tensor([self.config.lane_names.index(lane) for lane in lanes], device=device)

    def pool(self, query, candidates):
        """y_0: the mean candidate, or a softmax-attention pool keyed by the query. (B, K, d) -> (B, d)"""
        if self.pool_query is None:
            return F.normalize(candidates.mean(1), dim=-1)
        scores = torch.einsum("bd,bkd->bk", self.pool_query(query), candidates) / self.config.dim**0.5
        return F.normalize(torch.einsum("bk,bkd->bd", scores.softmax(-1), candidates), dim=-1)

    # -- one step ------------------------------------------------------------------------------------------------

    def step(self, z, y, query, centroid, lane):
        inputs = [y, z, lane]
        if self.config.use_query:
            inputs.append(query)
        if self.config.use_centroid:
            inputs.append(centroid)
        z = z + self.f_lat(torch.cat(inputs, dim=-1))
        if self.z_norm is not None:
            z = self.z_norm(z)
        update = self.f_ans(torch.cat([y, z], dim=-1))
        if self.config.gated_update:
            # p_halt of the answer as it stands gates its own update: a settled answer stops moving.
            p_halt = torch.sigmoid(self.halt(torch.cat([z, y, query, lane], dim=-1))).squeeze(-1)
            return z, F.normalize(y + (1 - p_halt[:, None]) * update, dim=-1), p_halt
        y = F.normalize(y + update, dim=-1)
        p_halt = torch.sigmoid(self.halt(torch.cat([z, y, query, lane], dim=-1))).squeeze(-1)
        return z, y, p_halt

    def start(self, query, candidates, centroid, lanes):
        self.check_inputs(query, candidates, centroid)
        if centroid is None:
            centroid = F.normalize(candidates.mean(1), dim=-1)
        lane = self.lane_embedding(self.lane_ids(lanes, query.shape[0], query.device))
        z = query.new_zeros(query.shape[0], self.config.hidden_size)
        return z, self.pool(query, candidates), centroid, lane

    # -- the loops -----------------------------------------------------------------------------------------------

    def forward(self, query, candidates, centroid=None, lanes=None, steps=None, target=None, grad_steps=None):
        r"""
        query (`(batch, dim)`), candidates (`(batch, K, dim)`), centroid (`(batch, dim)`, *optional*, default: the
        normalised mean candidate), lanes (`str` or `list[str]`, *optional*), steps (`int`, default
        `config.train_steps`), target (`(batch, dim)`, *optional*): y*, gives the loss.
        grad_steps (`int`, *optional*): only the last `grad_steps` steps get gradients (the paper: 1); None = all.
        """
        steps = steps or self.config.train_steps
        z, y, centroid, lane = self.start(query, candidates, centroid, lanes)
        first_grad_step = 0 if grad_steps is None else steps - grad_steps
        answers, halt_probs = [], []
        for s in range(steps):
            previous_answer = y
            with torch.set_grad_enabled(torch.is_grad_enabled() and s >= first_grad_step):
                z, y, p_halt = self.step(z, y, query, centroid, lane)
            answers.append(y)
            halt_probs.append(p_halt)
        loss = None
        if target is not None:
            cosine = F.cosine_similarity(y, target, dim=-1)
            ok = (cosine >= self.config.ok_cosine).float().detach()
            halt_loss = F.binary_cross_entropy(p_halt.float(), ok)
            loss = (1 - cosine).mean() + self.config.halt_loss_weight * halt_loss
            if self.config.monotone_loss_weight:
                # Only a step that moves an example's answer away from the target pays; the step before is fixed.
                previous_cosine = F.cosine_similarity(previous_answer.detach(), target, dim=-1)
                loss = loss + self.config.monotone_loss_weight * F.relu(previous_cosine - cosine).mean()
        return RecursiveRefinerOutput(
            loss=loss, answer=y, halt_probs=torch.stack(halt_probs, 1), answers=torch.stack(answers, 1)
        )

    @torch.no_grad()
    def refine(self, query, candidates, centroid=None, lanes=None, max_steps=None, threshold=None):
        """Step until each example's p_halt >= `threshold` (default `config.halt_threshold`) or `max_steps`
        (default `config.max_steps`). Examples that stopped leave the batch."""
        max_steps = max_steps or self.config.max_steps
        threshold = self.config.halt_threshold if threshold is None else threshold
        z, y, centroid, lane = self.start(query, candidates, centroid, lanes)
        B = query.shape[0]
        answer, halt_prob = y.clone(), query.new_zeros(B)
        steps = torch.zeros(B, dtype=torch.long, device=query.device)
        trace = query.new_zeros(B, max_steps, self.config.dim)
        active = torch.arange(B, device=query.device)
        row_adapters = self.row_adapters
        for s in range(max_steps):
            z, y, p_halt = self.step(z, y, query[active], centroid[active], lane[active])
            answer[active], halt_prob[active], steps[active] = y, p_halt, s + 1
            trace[active, s:] = y[:, None]
            keep = (p_halt < threshold).nonzero().squeeze(1)
            if keep.numel() < active.numel():
                active, z, y = active[keep], z[keep], y[keep]
                if row_adapters is not None:
                    row_adapters = self.row_adapters = [row_adapters[i] for i in keep.tolist()]
                if active.numel() == 0:
                    break
        return RecursiveRefinerRefineOutput(answer=answer, halt_prob=halt_prob, steps=steps, trace=trace[:, : int(steps.max())])


def ctr_refine(model, q, Y, rbar=None, t=None, steps=None, tau=None):
    """The white paper's entry point: refine with `model`, return (y_hat, p_halt, trace with the steps used)."""
    out = model.refine(q, Y, rbar, lanes=t, max_steps=steps, threshold=tau)
    return out.answer, out.halt_prob, {"steps": out.steps, "answers": out.trace}


RecursiveRefinerConfig.register_for_auto_class()
RecursiveRefinerModel.register_for_auto_class("AutoModel")

__all__ = ["RecursiveRefinerModel", "RecursiveRefinerPreTrainedModel", "ctr_refine"]
