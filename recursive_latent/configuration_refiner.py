"""RecursiveRefiner (CTR) model configuration."""

from transformers import PretrainedConfig

POOLS = ("mean", "attn")


class RecursiveRefinerConfig(PretrainedConfig):
    r"""
    Configuration of a [`RecursiveRefinerModel`]: the contextual tiny recursive refiner (CTR) of the CTR-SGPS white
    paper. A 2-layer MLP is looped over a latent `z` and an answer vector `y`, fed the query vector `q`, the top-K
    candidate vectors `Y`, their retrieval centroid `r̄` and a lane embedding `t`; a halting head stops it.

    Args:
        dim (`int`, *optional*, defaults to 64):
            Width of the vector space of `q`, `Y`, `r̄` and the answer (768 in the paper's Semantic GPS).
        hidden_size (`int`, *optional*, defaults to 128):
            Width of the latent `z` (the paper's `h`, `--ctr.h`).
        lane_names (`list[str]`, *optional*, defaults to `["default"]`):
            The lanes (the paper's TMD lanes); each has a learned embedding `t`.
        lane_dim (`int`, *optional*, defaults to 8):
            Width of the lane embedding (the paper's `d_TMD`).
        pool (`str`, *optional*, defaults to `"mean"`):
            How `y_0` is pooled from the candidates: `"mean"`, or `"attn"` (softmax attention from `q`, `--ctr.pool`).
        use_query (`bool`, *optional*, defaults to `True`):
            Feed `q` to the latent update (ablation switch).
        use_centroid (`bool`, *optional*, defaults to `True`):
            Feed `r̄` to the latent update (ablation switch).
        latent_norm (`bool`, *optional*, defaults to `True`):
            LayerNorm z after each residual update (the paper's "residual + norm").
        gated_update (`bool`, *optional*, defaults to `False`):
            Scale each answer update by 1 - p_halt (p_halt read before the update): once the halting head is sure
            the answer is right, y stops moving, so extra steps cannot pull it off the target.
        max_steps (`int`, *optional*, defaults to 32):
            `S_max`: most refinement steps at inference (`--ctr.steps`).
        train_steps (`int`, *optional*, defaults to 32):
            Most steps in training; each batch draws its depth S in 1..train_steps. Trained only to 16 of 32, the
            answer drifted past step 16 (cos 0.916 at its best step, 0.889 at 32); trained to 32 it stays flat.
        halt_threshold (`float`, *optional*, defaults to 0.88):
            `tau`: an example stops once its halting probability reaches it (`--ctr.tau`).
        ok_cosine (`float`, *optional*, defaults to 0.9):
            Training target of the halting head: 1 when cos(y_s, y*) >= ok_cosine.
        halt_loss_weight (`float`, *optional*, defaults to 0.2):
            Weight of the halting BCE next to the cosine-alignment loss (the paper's 0.2).
        monotone_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of a hinge max(0, cos(y_{S-1}, y*) - cos(y_S, y*)) that penalises the last step for moving an
            example's answer away from the target (0 = off).
        base_lane, lane_adapters:
            Lane LoRA adapters on the refiner's MLPs, as in [`RecursiveLatentConfig`].
    """

    model_type = "recursive_refiner"

    def __init__(
        self,
        dim=64,
        hidden_size=128,
        lane_names=None,
        lane_dim=8,
        pool="mean",
        use_query=True,
        use_centroid=True,
        latent_norm=True,
        gated_update=False,
        max_steps=32,
        train_steps=32,
        halt_threshold=0.88,
        ok_cosine=0.9,
        halt_loss_weight=0.2,
        monotone_loss_weight=0.0,
        base_lane=None,
        lane_adapters=None,
        initializer_range=0.02,
        **kwargs,
    ):
        self.dim = dim
        self.hidden_size = hidden_size
        self.lane_names = list(lane_names or ["default"])
        self.lane_dim = lane_dim
        self.pool = pool
        self.use_query = use_query
        self.use_centroid = use_centroid
        self.latent_norm = latent_norm
        self.gated_update = gated_update
        self.max_steps = max_steps
        self.train_steps = train_steps
        self.halt_threshold = halt_threshold
        self.ok_cosine = ok_cosine
        self.halt_loss_weight = halt_loss_weight
        self.monotone_loss_weight = monotone_loss_weight
        self.base_lane = base_lane  # None: every lane may have an adapter; rows without one use the shared body
        self.lane_adapters = list(lane_adapters or [])
        self.initializer_range = initializer_range
        kwargs.setdefault("auto_map", {
            "AutoConfig": "configuration_refiner.RecursiveRefinerConfig",
            "AutoModel": "modeling_refiner.RecursiveRefinerModel",
        })
        self._validate()
        super().__init__(**kwargs)

    def _validate(self):
        if self.pool not in POOLS:
            raise ValueError(f"`pool` must be one of {POOLS} (got {self.pool!r}).")
        for name in ("dim", "hidden_size", "lane_dim", "max_steps", "train_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1 (got {value!r}).")
        if self.monotone_loss_weight < 0:
            raise ValueError(f"`monotone_loss_weight` must be >= 0 (got {self.monotone_loss_weight!r}).")
        for name in ("halt_threshold", "ok_cosine"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in (0, 1] (got {getattr(self, name)!r}).")
        if len(set(self.lane_names)) != len(self.lane_names):
            raise ValueError(f"`lane_names` must be distinct (got {self.lane_names}).")


__all__ = ["RecursiveRefinerConfig"]
