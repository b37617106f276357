"""Muon on the looped core's weight matrices, AdamW on everything else, as one optimizer for the HF Trainer."""

import torch


class OptimizerPair(torch.optim.Optimizer):
    """Several torch optimizers stepped as one. `param_groups` is the list of their own groups, so a learning-rate
    scheduler built on this object drives all of them; checkpoints hold each optimizer's state."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers
        super().__init__([p for o in optimizers for group in o.param_groups for p in group["params"]], {})
        self._share_groups()

    def _share_groups(self):
        self.param_groups = [group for o in self.optimizers for group in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict):
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"]):
            optimizer.load_state_dict(state)
        # torch builds new group dicts on load (and accelerate reloads every optimizer it wraps): without pointing at
        # them, a scheduler would set learning rates that no optimizer reads
        self._share_groups()


def muon_with_adamw(model, lr, weight_decay, decay_names, betas=(0.9, 0.999), eps=1e-8):
    """Muon (`torch.optim.Muon`, its learning rate matched to AdamW's RMS so both share `lr`) for the trainable
    2-D weights of the looped core's blocks; AdamW for every other trainable parameter, with weight decay only on
    the names in `decay_names` (as the Trainer's own AdamW)."""
    core = {id(p) for block in model.model.blocks for p in block.parameters() if p.ndim == 2}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [p for _, p in trainable if id(p) in core]
    if not matrices:
        raise ValueError("Muon needs trainable 2-D weights in the core's blocks; this model has none.")
    rest = [(name, p) for name, p in trainable if id(p) not in core]
    groups = [{"params": [p for name, p in rest if name in decay_names], "weight_decay": weight_decay},
              {"params": [p for name, p in rest if name not in decay_names], "weight_decay": 0.0}]
    muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)
    return OptimizerPair(muon, adamw)
