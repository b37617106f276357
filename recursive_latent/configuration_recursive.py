"""RecursiveLatent model configuration."""

from transformers import AutoConfig, PretrainedConfig

BACKBONE_TYPES = ("gpt2", "mamba2")
BACKBONE_MODES = ("frozen", "lora", "full")
CORE_DESIGNS = ("latent", "sequence")
CORE_BLOCKS = ("transformer", "mamba2")
MEMORY_KINDS = ("last", "all")
BINDING_CONVS = ("none", "embeddings", "memory")
HALTING_MODES = ("token", "head", "fixed", "velocity")
SET_LOSSES = ("all", "any")
MAX_INFERENCE_LOOPS = 72  # default cap of `reason()`; the token-recurrence baseline's decoding uses it too


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, allowed))} (got {value!r}).")


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1 (got {value!r}).")


class RecursiveLatentConfig(PretrainedConfig):
    r"""
    Configuration of a [`RecursiveLatentForCausalLM`]: a pretrained backbone (GPT-2 or Mamba2) reads the prompt
    once, then a small core is looped over a latent state, supervised at every loop, and stops by predicting
    `<HALT>`.

    Args:
        backbone_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the backbone, a `GPT2Config` or a `Mamba2Config` (a dict must carry its `model_type`).
            Defaults to a tiny GPT-2 (2 layers, width 64, 4 heads, 256 positions, no dropout).
        backbone_name_or_path (`str`, *optional*):
            Where the backbone's pretrained weights came from (a Hub id or a local directory), recorded for
            reference. Weights are loaded by [`RecursiveLatentForCausalLM.from_backbone`], never by `__init__`.
        backbone_mode (`str`, *optional*, defaults to `"frozen"`):
            `"frozen"` (the backbone and the embedding-side binding conv get no gradient), `"lora"` (frozen, with
            PEFT LoRA adapters added by the trainer) or `"full"` (everything trains).
        core_design (`str`, *optional*, defaults to `"latent"`):
            `"latent"`: one latent vector per example is looped and cross-attends to the fixed prompt memory.
            `"sequence"`: the whole prompt sequence is looped through the core block (the RLF seed's design).
        core_block (`str`, *optional*, defaults to `"transformer"`):
            Block type of the core: `"transformer"` (attention + MLP) or `"mamba2"` (a transformers `Mamba2Block`).
        core_hidden_size (`int`, *optional*):
            Width of the core. Defaults to the backbone's hidden size.
        core_num_heads (`int`, *optional*, defaults to 4):
            Attention heads of a transformer core block; must divide `core_hidden_size`.
        core_num_layers (`int`, *optional*, defaults to 1):
            Core blocks applied in each loop.
        core_mlp_ratio (`int`, *optional*, defaults to 4):
            Hidden width of the core MLP as a multiple of `core_hidden_size`.
        memory (`str`, *optional*, defaults to `"all"`):
            What the core reads: `"last"` (the backbone's last layer) or `"all"` (the embeddings and every layer's
            output, each normalised, concatenated and projected to the core width). A next-token LM's last layer
            has dropped the token identities pointer-following needs; with a frozen backbone only `"all"` learned
            multi-hop in our probes.
        binding_conv (`str`, *optional*, defaults to `"embeddings"`):
            A short causal conv (Mamba-style) that lets the tokens of one statement see each other: over the token
            embeddings before the backbone (`"embeddings"`, part of the backbone: frozen with it), over the memory
            the core reads (`"memory"`, part of the core: always trained), or `"none"`.
        binding_conv_kernel (`int`, *optional*, defaults to 4):
            Kernel size of the binding conv (4, Mamba's default, spans a whole `A = dog .` statement).
        latent_residual (`bool`, *optional*, defaults to `True`):
            Latent design, transformer core: keep the previous latent in the residual stream of the loop's first
            block. Off, the latent is replaced each loop by what its attention read. Measured in `docs/experiments.md`:
            on learned the hops sooner.
        backbone_positions (`bool`, *optional*, defaults to `True`):
            Give a GPT-2 backbone its learned absolute position embeddings. Off, every token gets position 0's
            embedding (no positional signal): order then comes from causal attention and the binding conv, and a
            prompt longer than any seen in training meets no untrained position. Mamba2 has no positions.
        latent_norm (`bool`, *optional*, defaults to `True`):
            LayerNorm the latent at the start of every loop. Without it the latent's norm grows each loop and the
            model uses it as a loop counter, which breaks past the trained depth.
        latent_newton_schulz (`bool`, *optional*, defaults to `False`):
            Orthogonalise the new latent after every loop (seed 003's Newton-Schulz "reality check"): the latent is
            viewed as a (`newton_schulz_rows`, D / rows) matrix. Latent core design only.
        newton_schulz_rows (`int`, *optional*, defaults to 8):
            Rows of that matrix view; must divide `core_hidden_size`.
        lifeline (`bool`, *optional*, defaults to `True`):
            Re-inject the prompt state (`gate * x_prompt`) at every loop.
        lifeline_gate_init (`float`, *optional*, defaults to 1.0):
            Initial value of the per-channel lifeline gate.
        loop_rotary (`bool`, *optional*, defaults to `False`):
            Rotate the latent by the loop index (the RLF seed's loop RoPE). Off by default: it hands the model a
            loop counter and was measured harmful past the trained depth.
        max_loops (`int`, *optional*, defaults to 8):
            Loops run in training (hops + 1 for the `<HALT>` loop); labels may not ask for more.
        loop_set_loss (`str`, *optional*, defaults to `"all"`):
            How a loop whose target is a set of tokens (a trace element that is a list) is scored: `"all"`, against
            the uniform distribution over the set (the loop must hold every member, e.g. a search frontier), or
            `"any"`, by the set's total probability (any member will do, e.g. the next node of any shortest path).
        max_inference_loops (`int`, *optional*, defaults to 72):
            Upper limit of loops in `reason()` and in `forward` without labels.
        halt_token_id (`int`, *optional*):
            Token id of `<HALT>` in the model's tokenizer (the trainer sets it from the tokenizer). Needed by the
            `token` halting mode, which stops an example at this token.
        halt_token_threshold (`float`, *optional*, defaults to 0.0):
            Probability of `<HALT>` the `"token"` mode needs, besides `<HALT>` being the loop's best token, in [0, 1).
            At 0 the best token alone decides; above it an unsure `<HALT>` does not stop the loop, and the answer
            stays the last loop's best token that is not `<HALT>`.
        halting (`str`, *optional*, defaults to `"token"`):
            How `reason()` stops an example: `"token"` once its loop predicts `halt_token_id` (trained with a
            `<HALT>` target after the path; with p >= `halt_token_threshold`); `"head"` once the halting head's p_halt >= `halt_threshold` (needs
            `halt_head`); `"fixed"` after exactly `fixed_loops` loops (as Ouro/Huginn run; the
            trainer then supervises only the answer at the last loop); `"velocity"` once the latent stops moving,
            ||x_t - x_{t-1}|| / ||x_t|| < `halt_velocity`. Every mode but `"head"` applies at inference to any
            trained model.
        fixed_loops (`int`, *optional*, defaults to 6):
            Loops of the `"fixed"` mode.
        halt_velocity (`float`, *optional*, defaults to 0.01):
            Threshold of the `"velocity"` mode, > 0.
        halt_head (`bool`, *optional*, defaults to `False`):
            Add a halting head (as in TRM and the CTR paper): a linear map of the loop's output to p_halt, trained
            with binary cross-entropy against "this loop's answer (best token other than `<HALT>`) is already right".
        halt_threshold (`float`, *optional*, defaults to 0.5):
            p_halt at which the `"head"` mode stops.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Use the backbone's input embeddings as the output projection of the head. Off by default: a small
            backbone's embeddings (std 0.02) give logits too flat for the head to learn from (measured: the loop
            stays at uniform over the value words).
        initializer_range (`float`, *optional*):
            Std of the normal initialisation of the core's and head's linear layers, > 0. Defaults to
            `core_hidden_size ** -0.5` (fan-in scaling); GPT-2's 0.02 is tuned for width 768.
        base_lane (`str`, *optional*):
            The task lane the shared weights were trained on (the trainer sets it from the training data, e.g.
            `"pointer"` for the hop chains); its examples, and examples without a lane, run without an adapter.
        lane_adapters (`list[str]`, *optional*):
            Lanes with a PEFT LoRA adapter on the core, saved in `adapters/<lane>/` and loaded by `from_pretrained`.

    Example:

    ```python
    >>> from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM

    >>> config = RecursiveLatentConfig(halt_token_id=2)  # tiny GPT-2 backbone, latent core, all-layer memory
    >>> model = RecursiveLatentForCausalLM(config)
    ```"""

    model_type = "recursive_latent"

    def __init__(
        self,
        backbone_config=None,
        backbone_name_or_path=None,
        backbone_mode="frozen",
        core_design="latent",
        core_block="transformer",
        core_hidden_size=None,
        core_num_heads=4,
        core_num_layers=1,
        core_mlp_ratio=4,
        memory="all",
        binding_conv="embeddings",
        binding_conv_kernel=4,
        latent_residual=True,
        backbone_positions=True,
        latent_norm=True,
        latent_newton_schulz=False,
        newton_schulz_rows=8,
        lifeline=True,
        lifeline_gate_init=1.0,
        loop_rotary=False,
        max_loops=8,
        loop_set_loss="all",
        max_inference_loops=MAX_INFERENCE_LOOPS,
        halt_token_id=None,
        halt_token_threshold=0.0,
        halting="token",
        fixed_loops=6,
        halt_velocity=0.01,
        halt_head=False,
        halt_threshold=0.5,
        tie_word_embeddings=False,
        initializer_range=None,
        base_lane=None,
        lane_adapters=None,
        **kwargs,
    ):
        self.backbone_config = self._build_backbone_config(backbone_config)
        self.backbone_name_or_path = backbone_name_or_path
        self.backbone_mode = backbone_mode
        self.core_design = core_design
        self.core_block = core_block
        self.core_hidden_size = self.backbone_config.hidden_size if core_hidden_size is None else core_hidden_size
        self.core_num_heads = core_num_heads
        self.core_num_layers = core_num_layers
        self.core_mlp_ratio = core_mlp_ratio
        self.memory = memory
        self.binding_conv = binding_conv
        self.binding_conv_kernel = binding_conv_kernel
        self.latent_residual = latent_residual
        self.backbone_positions = backbone_positions
        self.latent_norm = latent_norm
        self.latent_newton_schulz = latent_newton_schulz
        self.newton_schulz_rows = newton_schulz_rows
        self.lifeline = lifeline
        self.lifeline_gate_init = lifeline_gate_init
        self.loop_rotary = loop_rotary
        self.max_loops = max_loops
        self.loop_set_loss = loop_set_loss
        self.max_inference_loops = max_inference_loops
        self.halt_token_id = halt_token_id
        self.halt_token_threshold = halt_token_threshold
        self.halting = halting
        self.fixed_loops = fixed_loops
        self.halt_velocity = halt_velocity
        self.halt_head = halt_head
        self.halt_threshold = halt_threshold
        self.tie_word_embeddings = tie_word_embeddings
        self.initializer_range = self.core_hidden_size**-0.5 if initializer_range is None else initializer_range
        self.base_lane = base_lane
        self.lane_adapters = list(lane_adapters or [])
        # Remote code: both Auto classes resolve to the files `save_pretrained` copies next to the weights.
        kwargs.setdefault("auto_map", {
            "AutoConfig": "configuration_recursive.RecursiveLatentConfig",
            "AutoModel": "modeling_recursive.RecursiveLatentModel",
            "AutoModelForCausalLM": "modeling_recursive.RecursiveLatentForCausalLM",
        })
        kwargs.setdefault("pad_token_id", self.backbone_config.pad_token_id)
        kwargs.setdefault("eos_token_id", self.backbone_config.eos_token_id)
        self._validate_choices()
        self._validate_sizes()
        super().__init__(**kwargs)

    @staticmethod
    def _build_backbone_config(backbone_config):
        if backbone_config is None:
            # A tiny GPT-2 with dropout off: GPT2Config silently defaults every dropout to 0.1.
            backbone_config = dict(
                model_type="gpt2", vocab_size=1024, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
            )
        if isinstance(backbone_config, PretrainedConfig):
            backbone_type = backbone_config.model_type
        elif isinstance(backbone_config, dict):
            backbone_config = dict(backbone_config)
            backbone_type = backbone_config.pop("model_type", None)
        else:
            raise ValueError(
                f"`backbone_config` must be a dict or a PretrainedConfig (got {type(backbone_config).__name__})."
            )
        _check_choice("backbone_config.model_type", backbone_type, BACKBONE_TYPES)
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(backbone_type, **backbone_config)
        return backbone_config

    def _validate_choices(self):
        _check_choice("backbone_mode", self.backbone_mode, BACKBONE_MODES)
        _check_choice("core_design", self.core_design, CORE_DESIGNS)
        _check_choice("core_block", self.core_block, CORE_BLOCKS)
        _check_choice("memory", self.memory, MEMORY_KINDS)
        _check_choice("binding_conv", self.binding_conv, BINDING_CONVS)
        _check_choice("halting", self.halting, HALTING_MODES)
        _check_choice("loop_set_loss", self.loop_set_loss, SET_LOSSES)
        if self.halting == "head" and not self.halt_head:
            raise ValueError("`halting='head'` needs `halt_head=True` (a halting head to read p_halt from).")
        for name in ("latent_residual", "backbone_positions", "latent_norm", "latent_newton_schulz", "lifeline",
                     "loop_rotary", "halt_head", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False (got {getattr(self, name)!r}).")

    def _validate_sizes(self):
        for name in ("core_hidden_size", "core_num_heads", "core_num_layers", "core_mlp_ratio",
                     "binding_conv_kernel", "max_loops", "max_inference_loops", "fixed_loops", "newton_schulz_rows"):
            _check_positive(name, getattr(self, name))
        if self.core_block == "transformer" and self.core_hidden_size % self.core_num_heads:
            raise ValueError(
                f"`core_hidden_size` must be divisible by `core_num_heads` (got {self.core_hidden_size} and "
                f"{self.core_num_heads})."
            )
        if self.base_lane in self.lane_adapters or len(set(self.lane_adapters)) != len(self.lane_adapters):
            raise ValueError(f"`lane_adapters` must name distinct lanes other than `base_lane` (got "
                             f"{self.lane_adapters} with base lane {self.base_lane!r}).")
        newton_schulz_fits = self.core_design == "latent" and self.core_hidden_size % self.newton_schulz_rows == 0
        if self.latent_newton_schulz and not newton_schulz_fits:
            raise ValueError(f"`latent_newton_schulz` needs the latent core design and `newton_schulz_rows` dividing "
                             f"`core_hidden_size` (got {self.core_design!r}, {self.newton_schulz_rows} rows, width "
                             f"{self.core_hidden_size}).")
        for name, low, high in (("halt_threshold", 0, 1), ("halt_velocity", 0, None), ("initializer_range", 0, None)):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not value > low or (high is not None and not value < high):
                allowed = f"in ({low}, {high})" if high is not None else f"> {low}"
                raise ValueError(f"`{name}` must be a number {allowed} (got {value!r}).")
        value = self.halt_token_threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"`halt_token_threshold` must be a number in [0, 1) (got {value!r}).")
        if isinstance(self.lifeline_gate_init, bool) or not isinstance(self.lifeline_gate_init, (int, float)):
            raise ValueError(f"`lifeline_gate_init` must be a number (got {self.lifeline_gate_init!r}).")
        vocab_size = self.backbone_config.vocab_size
        halt_id = self.halt_token_id
        if halt_id is not None and (not isinstance(halt_id, int) or isinstance(halt_id, bool) or not 0 <= halt_id < vocab_size):
            raise ValueError(f"`halt_token_id` must be a token id in [0, {vocab_size}) (got {halt_id!r}).")


    @property
    def backbone_type(self):
        return self.backbone_config.model_type

    @property
    def vocab_size(self):
        return self.backbone_config.vocab_size

    @property
    def max_prompt_tokens(self):
        """The longest prompt the backbone reads: GPT-2's `n_positions` while it numbers its tokens; no limit (None)
        for a position-free GPT-2 (`backbone_positions=False`: every token is position 0) or a Mamba2 backbone."""
        return getattr(self.backbone_config, "n_positions", None) if self.backbone_positions else None

    @property
    def hidden_size(self):
        return self.core_hidden_size

    @property
    def num_hidden_layers(self):
        # `generate()` reads this to size caches; the backbone's depth is the honest answer.
        return self.backbone_config.num_hidden_layers


class RecursiveLatentTokenLMConfig(RecursiveLatentConfig):
    r"""
    Configuration of [`RecursiveLatentTokenLM`], the token-recurrence baseline: the looped model's config, whose
    backbone and binding conv it shares (the core and halting fields are unused). Its own `model_type` lets the Auto
    classes tell a baseline checkpoint from a looped one.
    """

    model_type = "recursive_latent_token_lm"

    def __init__(self, **kwargs):
        kwargs.setdefault("auto_map", {
            "AutoConfig": "configuration_recursive.RecursiveLatentTokenLMConfig",
            "AutoModelForCausalLM": "modeling_token_recurrence.RecursiveLatentTokenLM",
        })
        super().__init__(**kwargs)


__all__ = ["RecursiveLatentConfig", "RecursiveLatentTokenLMConfig"]
