"""RecursiveLatent: a pretrained backbone read once, then a tiny core looped over a latent until it predicts <HALT>."""

import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.models.mamba2.modeling_mamba2 import Mamba2Block, Mamba2Mixer, causal_conv1d_fn, mamba2_chunk_scan
from transformers.utils import ModelOutput, logging

from .configuration_recursive import RecursiveLatentConfig
from .halting import LoopStep, halting_rule
from .lanes import LaneAdaptersMixin, LaneRouting

logger = logging.get_logger(__name__)

# Lanes (`lanes.py`): a PEFT LoRA adapter per task on these linear layers of the core, chosen per example.
LANE_TARGETS = r"model\.(memory_proj|blocks\.\d+\.(attn\.(query|key_value|out)|mlp\.(up|down)|mixer\.(in_proj|out_proj)))"


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def last_token_index(attention_mask):
    """Index of the last real token of each row; right for left and right padding alike. (B, T) -> (B,)"""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.flip(1).int().argmax(1)


def rotate_by_loop(x, loop, base=10000.0):
    """The RLF seed's loop RoPE: rotate channel pairs of `x` (..., D) by angles loop * base^(-2i/D)."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    cos, sin = torch.cos(loop * inv_freq).to(x.dtype), torch.sin(loop * inv_freq).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], dim=-1)


def read_prompt(module, input_ids, attention_mask, position_ids=None):
    """Run `module.backbone` over the prompt, after the binding conv on its embeddings (`module.binding`, when the
    config puts it there); the backbone's output with every layer's hidden states."""
    config = module.config
    embeddings = module.backbone.get_input_embeddings()(input_ids)
    if config.binding_conv == "embeddings":
        embeddings = module.binding(embeddings, attention_mask)
    kwargs = {}
    if config.backbone_type == "gpt2":
        # GPT2Model numbers positions with arange and would ignore left padding; number the real tokens.
        if position_ids is None:
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        if not config.backbone_positions:
            position_ids = torch.zeros_like(position_ids)
        kwargs["position_ids"] = position_ids
    return module.backbone(inputs_embeds=embeddings, attention_mask=attention_mask, output_hidden_states=True, **kwargs)


def set_cross_entropy(loop_logits, loop_labels, mode):
    """Loop supervision where a loop's target is a set of tokens: `loop_labels` (B, L, K) holds each loop's token ids,
    -100 padding. `"all"`: cross-entropy against the uniform distribution over the set, so the loop must hold every
    member (e.g. the frontier of a breadth-first search); `"any"`: -log of the set's total probability, so any member
    will do (e.g. the next node on any shortest path). A one-token set is plain cross-entropy in both. Mean over the
    loops that have a target."""
    log_probs = F.log_softmax(loop_logits.float(), dim=-1)  # (B, L, V)
    members = loop_labels != -100  # (B, L, K)
    picked = log_probs.gather(-1, loop_labels.clamp(min=0)).masked_fill(~members, float("-inf"))
    supervised = members.any(-1)  # (B, L)
    if mode == "any":
        per_loop = -torch.logsumexp(picked, dim=-1)
    else:
        per_loop = -picked.masked_fill(~members, 0.0).sum(-1) / members.sum(-1).clamp(min=1)
    return per_loop[supervised].mean()


def newton_schulz(x, rows, steps=5):
    """Seed 003's latent "reality check": view the last dim of `x` (..., D) as a (rows, D / rows) matrix and push it
    towards orthogonal with Muon's quintic Newton-Schulz iteration; rescaled so entries keep an RMS of about 1."""
    a, b, c = 3.4445, -4.7750, 2.0315
    m = x.reshape(*x.shape[:-1], rows, x.shape[-1] // rows)
    m = m / m.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)
    for _ in range(steps):
        gram = m @ m.transpose(-2, -1)
        m = a * m + (b * gram + c * gram @ gram) @ m
    return (m * (x.shape[-1] // rows) ** 0.5).reshape(x.shape)


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


class CausalConv(nn.Module):
    """Short causal conv over tokens (as in Mamba), added residually: lets the tokens of `A = B .` see each other."""

    def __init__(self, width, kernel_size):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size, padding=kernel_size - 1)

    def forward(self, x, mask):  # x: (B, T, D), mask: (B, T)
        # Padding is zeroed first, so a left-padded row sees exactly what the conv's own zero padding gives.
        h = (x * mask[..., None].to(x.dtype)).transpose(1, 2)
        return x + self.conv(h)[..., : x.shape[1]].transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, width, ratio):
        super().__init__()
        self.up = nn.Linear(width, ratio * width)
        self.down = nn.Linear(ratio * width, width)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Attention(nn.Module):
    """Multi-head attention from queries `x` to keys/values `memory`. Keys and values can be projected once and
    reused across loops (`project_memory`), since the memory a latent core reads never changes."""

    def __init__(self, width, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def project_memory(self, memory):  # (B, T, D) -> 2 x (B, H, T, D/H)
        B, T, D = memory.shape
        k, v = self.key_value(memory).view(B, T, 2, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, key_value, mask):  # x: (B, S, D), mask: (B, 1, S, T) bool, True = may attend
        B, S, D = x.shape
        q = self.query(x).view(B, S, self.num_heads, D // self.num_heads).transpose(1, 2)  # (B, H, S, D/H)
        k, v = key_value
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, S, D))


class CoreBlock(nn.Module):
    """One pre-LN transformer block of the core. In the latent design it cross-attends from the latent to the
    prompt memory; in the sequence design it is a causal self-attention block over the looped sequence."""

    def __init__(self, config):
        super().__init__()
        width = config.core_hidden_size
        self.attn_norm = nn.LayerNorm(width)
        self.attn = Attention(width, config.core_num_heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = MLP(width, config.core_mlp_ratio)

    def read_memory(self, memory, mask):
        """What every loop reads of the fixed memory, computed once: its keys and values."""
        return self.attn.project_memory(memory)

    def forward(self, x, key_value=None, mask=None, residual=True):
        h = self.attn_norm(x)
        if key_value is None:  # sequence design: self-attention over x itself
            key_value = self.attn.project_memory(h)
        read = self.attn(h, key_value, mask)
        # Without the residual, what the block read replaces x: the latent becomes the pointer it just followed.
        x = x + read if residual else read
        return x + self.mlp(self.mlp_norm(x))


class MambaCoreBlock(nn.Module):
    """A transformers `Mamba2Block` as core block. In the latent design each loop continues the block's scan of the
    memory by one token, the latent: the memory is scanned once (`read_memory`), and every loop advances a copy of
    that state by one recurrent step, which is exactly what re-scanning [memory; latent] would give."""

    def __init__(self, config):
        super().__init__()
        from transformers import Mamba2Config

        width = config.core_hidden_size
        head_dim = 16 if width % 16 == 0 else width
        # Mamba2's own defaults for a block of this width (expand 2, heads of 16 channels), a 32-wide state as the
        # tiny Mamba2 backbones here use, and chunks of 16 tokens: the pure-torch scan on the CPU is ~12x slower at
        # the default chunk of 256 on prompts this short (platform measurements).
        mamba_config = Mamba2Config(
            hidden_size=width, expand=2, head_dim=head_dim, num_heads=2 * width // head_dim, n_groups=1,
            state_size=32, chunk_size=16, num_hidden_layers=1, vocab_size=1,
            pad_token_id=None, bos_token_id=None, eos_token_id=None,
        )
        self.block = Mamba2Block(mamba_config, layer_idx=0)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = MLP(width, config.core_mlp_ratio)

    def _project(self, hidden):
        """The mixer's input projection of the normalised block input: gate, conv input, time step."""
        mixer = self.block.mixer
        return self.block.mixer.in_proj(self.block.norm(hidden)).split(
            [mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1
        )

    def _split_conv_output(self, x_b_c):
        mixer = self.block.mixer
        state = mixer.n_groups * mixer.ssm_state_size
        return x_b_c.split([mixer.intermediate_size, state, state], dim=-1)

    def read_memory(self, memory, mask):
        """Scan the memory once (B, T, D): the conv inputs of its last tokens (B, kernel - 1, conv width) and the SSM
        state after its last token (B, heads, head width, state), as the mixer's own scan computes them."""
        mixer = self.block.mixer
        B, T, _ = memory.shape
        padding = mask[..., None].to(memory.dtype)
        _, conv_input, dt = self._project(memory * padding)
        x_b_c = causal_conv1d_fn(conv_input.transpose(1, 2), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias,
                                 activation=mixer.activation).transpose(1, 2) * padding
        x, b, c = self._split_conv_output(x_b_c)
        _, state = mamba2_chunk_scan(
            x.reshape(B, T, mixer.num_heads, mixer.head_dim), dt, -torch.exp(mixer.A_log.float()),
            b.reshape(B, T, mixer.n_groups, -1), c.reshape(B, T, mixer.n_groups, -1), chunk_size=mixer.chunk_size,
            D=mixer.D, dt_bias=mixer.dt_bias, dt_softplus=True, dt_limit=mixer.time_step_limit,
            return_final_states=True,
        )
        return conv_input[:, -(mixer.conv_kernel_size - 1):], state

    def step(self, latent, memory_state):
        """The block's output for the latent as the token after the memory: one recurrent step. (B, D) -> (B, D)"""
        mixer = self.block.mixer
        conv_inputs, state = memory_state
        gate, conv_input, dt = self._project(latent)
        # 1. The depthwise causal conv at the latent's position: the memory's last inputs, then the latent's.
        window = torch.cat([conv_inputs, conv_input[:, None]], dim=1)  # (B, kernel, conv width)
        x_b_c = (window * mixer.conv1d.weight.squeeze(1).T).sum(1) + mixer.conv1d.bias
        x, b, c = self._split_conv_output(mixer.act(x_b_c))
        # 2. One step of the SSM from the memory's state: h = exp(dt A) h + dt B x, y = C h + D x (one group).
        dt = F.softplus(dt + mixer.dt_bias).clamp(*mixer.time_step_limit)  # (B, heads)
        x = x.reshape(x.shape[0], mixer.num_heads, mixer.head_dim)  # (B, heads, head width)
        decay = torch.exp(dt * -torch.exp(mixer.A_log.float()))
        state = state * decay[..., None, None] + (dt[..., None] * x)[..., None] * b[:, None, None, :]
        y = (state * c[:, None, None, :]).sum(-1) + mixer.D[:, None] * x
        # 3. The gated norm and output projection of the mixer, then the block's residual.
        y = mixer.out_proj(mixer.norm(y.reshape(y.shape[0], 1, -1), gate[:, None]))[:, 0]
        return latent + y.to(latent.dtype)

    def forward(self, x, memory_state=None, mask=None):  # x: (B, D) latent or (B, T, D) sequence; mask: (B, T)
        x = self.block(x, attention_mask=mask) if memory_state is None else self.step(x, memory_state)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------------------------------------------
# Pretrained model base and outputs
# ----------------------------------------------------------------------------------------------------------------


class RecursiveLatentPreTrainedModel(PreTrainedModel):
    config: RecursiveLatentConfig
    config_class = RecursiveLatentConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CoreBlock", "MambaCoreBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        # The backbone is a PreTrainedModel and initialises itself; this only sees the core's modules.
        super()._init_weights(module)
        if isinstance(module, Mamba2Mixer):
            # A Mamba2Block built outside Mamba2Model leaves A_log, D and dt_bias uninitialised.
            module.init_mamba2_weights()
        if isinstance(module, RecursiveLatentModel) and module.gate is not None:
            module.gate.fill_(self.config.lifeline_gate_init)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a checkpoint with non-finite weights (it would answer `<pad>`
        at every loop), then a `frozen` or `lora` backbone frozen again: loading makes every weight trainable."""
        model = super().from_pretrained(*args, **kwargs)
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(f"{args[0] if args else 'The checkpoint'}: weight `{name}` holds NaN or inf values "
                                 "(a corrupted file, or saved from a diverged run).")
        for module in model.modules():
            if isinstance(module, RecursiveLatentModel) and module.config.backbone_mode != "full":
                module.freeze_backbone()
        return model


@dataclass
class RecursiveLatentModelOutput(ModelOutput):
    """
    Args:
        last_latent (`torch.FloatTensor` of shape `(batch_size, core_hidden_size)`):
            The latent after the last loop (read at the last prompt token in the sequence design).
        latents (`torch.FloatTensor` of shape `(batch_size, num_loops, core_hidden_size)`):
            The latent after every loop.
    """

    last_latent: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


@dataclass
class RecursiveLatentCausalLMOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `loop_labels` is given):
            Mean cross-entropy over all supervised loops (labels -100 are ignored), plus the terms `answer_ids`
            switches on (see `RecursiveLatentForCausalLM.forward`).
        logits (`torch.FloatTensor` of shape `(batch_size, 1, vocab_size)`):
            Logits of the answer: the loop before the first predicted `<HALT>` (or the last loop). This is what
            `generate()` and `pipeline("text-generation")` read as the next token.
        loop_logits (`torch.FloatTensor` of shape `(batch_size, num_loops, vocab_size)`):
            The head's logits at every loop.
        latents (`torch.FloatTensor` of shape `(batch_size, num_loops, core_hidden_size)`):
            The latent after every loop.
        halt_logits (`torch.FloatTensor` of shape `(batch_size, num_loops)`, returned with `config.halt_head`):
            The halting head's logit of p_halt at every loop.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    loop_logits: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    halt_logits: torch.FloatTensor | None = None


@dataclass
class RecursiveLatentReasonOutput(ModelOutput):
    """
    Args:
        answer_ids (`torch.LongTensor` of shape `(batch_size,)`):
            The token predicted at the loop before `<HALT>` (the last loop if the example never halted; the pad id
            if it halted at its first loop).
        loops (`torch.LongTensor` of shape `(batch_size,)`):
            Loops run for each example, counting the `<HALT>` loop.
        halted (`torch.BoolTensor` of shape `(batch_size,)`):
            Whether the example's halting rule stopped it within `max_loops` (`token`: it predicted `<HALT>`;
            `velocity`: its latent converged; `fixed`: always).
        trace_ids (`torch.LongTensor` of shape `(batch_size, max loops run)`):
            The token predicted at each loop; the pad id after an example stopped.
    """

    answer_ids: torch.LongTensor | None = None
    loops: torch.LongTensor | None = None
    halted: torch.BoolTensor | None = None
    trace_ids: torch.LongTensor | None = None


@dataclass
class LoopContext:
    """What every loop reads, computed once per prompt. Rows can be dropped with `select` as examples halt.

    memory (B, T, D), mask (B, T) bool, prompt_state: the lifeline source, (B, D) in the latent design and
    (B, T, D) in the sequence design, block_memory: in the latent design, what each core block reads of the memory
    (`read_memory`: a transformer block's keys and values, a Mamba2 block's scan state), tensors with B first.
    """

    memory: torch.Tensor
    mask: torch.Tensor
    last_index: torch.Tensor
    prompt_state: torch.Tensor
    block_memory: list | None = None
    adapter_names: list | None = None  # lane adapter of each row, None when no row uses one

    def select(self, rows):
        block_memory = None
        if self.block_memory is not None:
            block_memory = [tuple(tensor[rows] for tensor in read) for read in self.block_memory]
        adapter_names = None if self.adapter_names is None else [self.adapter_names[i] for i in rows.tolist()]
        return LoopContext(
            self.memory[rows], self.mask[rows], self.last_index[rows], self.prompt_state[rows], block_memory,
            adapter_names,
        )


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class RecursiveLatentModel(RecursiveLatentPreTrainedModel, LaneRouting):
    """The backbone, the memory it hands to the core, and the looped core. Returns latents, no logits."""

    # Loading a RecursiveLatentForCausalLM checkpoint as the base model leaves its head behind, by design.
    _keys_to_ignore_on_load_unexpected = [r"^head_", r"^lm_head"]

    def __init__(self, config: RecursiveLatentConfig):
        super().__init__(config)
        backbone_width = config.backbone_config.hidden_size
        width = config.core_hidden_size
        # __init__ never downloads: pretrained weights come in through `RecursiveLatentForCausalLM.from_backbone`.
        self.backbone = AutoModel.from_config(config.backbone_config)
        binding_width = backbone_width if config.binding_conv == "embeddings" else width
        self.binding = CausalConv(binding_width, config.binding_conv_kernel) if config.binding_conv != "none" else None
        num_memory_layers = config.backbone_config.num_hidden_layers + 1 if config.memory == "all" else 1
        self.memory_norms = nn.ModuleList([nn.LayerNorm(backbone_width) for _ in range(num_memory_layers)])
        self.memory_proj = nn.Linear(num_memory_layers * backbone_width, width)
        self.memory_norm = nn.LayerNorm(width)
        block_class = CoreBlock if config.core_block == "transformer" else MambaCoreBlock
        self.blocks = nn.ModuleList([block_class(config) for _ in range(config.core_num_layers)])
        self.latent_norm = nn.LayerNorm(width) if config.latent_norm else None
        # The lifeline gate stays float32 (as in the RLF seed) so tiny per-channel changes survive low precision.
        self.gate = nn.Parameter(torch.empty(width, dtype=torch.float32)) if config.lifeline else None
        self.gradient_checkpointing = False
        self.post_init()
        if config.backbone_mode != "full":
            self.freeze_backbone()

    def freeze_backbone(self):
        """Stop gradients into the backbone and into a binding conv on its input embeddings (trained with it)."""
        self.backbone.requires_grad_(False)
        if self.config.binding_conv == "embeddings":
            self.binding.requires_grad_(False)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    # -- 1. read the prompt once ---------------------------------------------------------------------------------

    def check_inputs(self, input_ids, attention_mask):
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"`input_ids` must be a non-empty (batch, tokens) tensor (got shape {tuple(input_ids.shape)}).")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` shape {tuple(attention_mask.shape)} does not match `input_ids` {tuple(input_ids.shape)}."
            )
        if not attention_mask.bool().any(1).all():
            raise ValueError("Every row of `attention_mask` needs at least one real token.")
        vocab_size = self.config.vocab_size
        if input_ids.min() < 0 or input_ids.max() >= vocab_size:
            raise ValueError(
                f"`input_ids` holds ids outside the model's vocabulary [0, {vocab_size}) (got min {input_ids.min().item()}, "
                f"max {input_ids.max().item()}): is the tokenizer the one this model was trained with?"
            )
        max_positions = self.config.max_prompt_tokens
        if max_positions is not None and input_ids.shape[1] > max_positions:
            raise ValueError(
                f"The prompt has {input_ids.shape[1]} tokens but the backbone reads at most {max_positions}."
            )

    def run_backbone(self, input_ids, attention_mask, position_ids=None):
        """Backbone hidden states, one (B, T, D_backbone) tensor per layer (embeddings first) or the last only."""
        outputs = read_prompt(self, input_ids, attention_mask, position_ids)
        return list(outputs.hidden_states) if self.config.memory == "all" else [outputs.last_hidden_state]

    def encode(self, input_ids, attention_mask=None, position_ids=None, adapter_names=None):
        """Run the backbone ONCE and build everything the loops read (a `LoopContext`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.check_inputs(input_ids, attention_mask)
        self.row_adapters = adapter_names
        hidden_states = self.run_backbone(input_ids, attention_mask, position_ids)
        # Each layer is normalised before mixing: layer scales differ by orders of magnitude.
        memory = torch.cat([norm(h) for norm, h in zip(self.memory_norms, hidden_states)], dim=-1)
        memory = self.memory_norm(self.memory_proj(memory))  # (B, T, D)
        if self.config.binding_conv == "memory":
            memory = self.binding(memory, attention_mask)
        mask = attention_mask.bool()
        last_index = last_token_index(mask)
        rows = torch.arange(memory.shape[0], device=memory.device)
        if self.config.core_design == "latent":
            prompt_state = memory[rows, last_index]  # (B, D): x_prompt at the last real token
            block_memory = [block.read_memory(memory, mask) for block in self.blocks]
        else:
            prompt_state = memory  # (B, T, D): the whole prompt is re-injected
            block_memory = None
        return LoopContext(memory, mask, last_index, prompt_state, block_memory, adapter_names)

    def init_latent(self, context):
        """The latent the first loop starts from: the prompt state itself (x_prompt at the last token in the latent
        design, the whole memory in the sequence design), as the RLF seed starts its loop from the backbone's output."""
        return context.prompt_state

    # -- 2. one loop ---------------------------------------------------------------------------------------------

    def loop_step(self, latent, context, loop):
        """One loop: normalise the latent, re-inject the prompt (lifeline), optionally rotate by the loop index,
        then the core blocks. Returns the new latent and the vector the head reads, (B, D)."""
        self.row_adapters = context.adapter_names
        if self.latent_norm is not None:
            latent = self.latent_norm(latent)
        if self.gate is not None:
            latent = latent + self.gate.to(latent.dtype) * context.prompt_state
        if self.config.loop_rotary:
            latent = rotate_by_loop(latent, loop)
        if self.config.core_design == "latent":
            # Only padding is masked: the latent may read every real prompt token. (B, 1, 1, T)
            attn_mask = context.mask[:, None, None, :]
            for i, (block, read) in enumerate(zip(self.blocks, context.block_memory)):
                if isinstance(block, CoreBlock):
                    residual = self.config.latent_residual or i > 0
                    latent = block(latent[:, None], read, attn_mask, residual)[:, 0]
                else:
                    latent = block(latent, read)
            if self.config.latent_newton_schulz:
                latent = newton_schulz(latent, self.config.newton_schulz_rows)
            return latent, latent
        for block in self.blocks:
            if isinstance(block, CoreBlock):
                T = context.mask.shape[1]
                causal = torch.ones(T, T, dtype=torch.bool, device=latent.device).tril()
                # Causal and blind to padding; a padded query row still sees itself, so softmax never sees all -inf.
                attn_mask = (causal & context.mask[:, None, None, :]) | torch.eye(T, dtype=torch.bool, device=latent.device)
                latent = block(latent, mask=attn_mask)
            else:
                latent = block(latent, mask=context.mask)
        rows = torch.arange(latent.shape[0], device=latent.device)
        return latent, latent[rows, context.last_index]

    # -- 3. the loops --------------------------------------------------------------------------------------------

    def forward(
        self, input_ids, attention_mask=None, num_loops=None, position_ids=None, grad_loops=None, adapter_names=None,
        **kwargs,
    ):
        r"""
        num_loops (`int`, *optional*):
            Loops to run; defaults to `config.max_inference_loops`.
        grad_loops (`int`, *optional*):
            Truncated backprop (as in Huginn and TRM): only the last `grad_loops` loops get gradients, the earlier
            ones run under `torch.no_grad()`. `None` backpropagates through every loop.
        adapter_names (`list[str]`, *optional*):
            The lane adapter of each row (`RecursiveLatentForCausalLM` builds it from `lanes`).
        """
        num_loops = num_loops or self.config.max_inference_loops
        if num_loops < 1:
            raise ValueError(f"`num_loops` must be >= 1 (got {num_loops}).")
        context = self.encode(input_ids, attention_mask, position_ids, adapter_names)
        latent = self.init_latent(context)
        first_grad_loop = 0 if grad_loops is None else max(num_loops - grad_loops, 0)
        outputs = []
        for loop in range(num_loops):
            with torch.set_grad_enabled(torch.is_grad_enabled() and loop >= first_grad_loop):
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    latent, out = torch.utils.checkpoint.checkpoint(
                        self.loop_step, latent, context, loop, use_reentrant=False
                    )
                else:
                    latent, out = self.loop_step(latent, context, loop)
            outputs.append(out)
        latents = torch.stack(outputs, dim=1)  # (B, L, D)
        return RecursiveLatentModelOutput(last_latent=latents[:, -1], latents=latents)


class RecursiveLatentForCausalLM(LaneAdaptersMixin, RecursiveLatentPreTrainedModel, GenerationMixin):
    """The looped model with its head: per-loop logits, the loop-supervision loss, `reason()` with per-example
    halting, and lane adapters on the core."""

    lane_targets = LANE_TARGETS

    def __init__(self, config: RecursiveLatentConfig):
        super().__init__(config)
        self.model = RecursiveLatentModel(config)
        width, embedding_width = config.core_hidden_size, config.backbone_config.hidden_size
        self.head_norm = nn.LayerNorm(width)
        # The head projects onto the (tied) embedding matrix; a linear bridges a core narrower or wider than it.
        self.head_proj = nn.Linear(width, embedding_width) if width != embedding_width else nn.Identity()
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(embedding_width, config.vocab_size, bias=False)
        self.halt_head = nn.Linear(width, 1) if config.halt_head else None
        self.post_init()
        # The answer is one token read from the loops, so `generate()` and pipelines stop after it by default.
        self.generation_config.max_new_tokens = 1
        self.generation_config.do_sample = False

    @classmethod
    def from_backbone(cls, backbone_name_or_path, vocab_size=None, **config_kwargs):
        """Build a model around pretrained backbone weights: a Hub id (`openai-community/gpt2`,
        `AntonV/mamba2-130m-hf`) or a local directory saved in the plain transformers format. `vocab_size`
        grows the embeddings to a tokenizer with added tokens (`<HALT>`); they never shrink."""
        backbone = AutoModel.from_pretrained(backbone_name_or_path)
        if vocab_size is not None and vocab_size > backbone.get_input_embeddings().num_embeddings:
            backbone.resize_token_embeddings(vocab_size)
        config = RecursiveLatentConfig(
            backbone_config=backbone.config, backbone_name_or_path=str(backbone_name_or_path), **config_kwargs
        )
        model = cls(config)
        model.model.backbone.load_state_dict(backbone.state_dict())
        if config.binding_conv == "embeddings":
            # Start the conv at the identity, so the pretrained backbone first reads its own embeddings unchanged.
            nn.init.zeros_(model.model.binding.conv.weight)
            nn.init.zeros_(model.model.binding.conv.bias)
        return model

    @property
    def lane_router(self):
        return self.model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the weights, lane adapters and remote code, then make the weight files as readable as the others:
        safetensors writes them with mode 0600 whatever the umask."""
        super().save_pretrained(save_directory, *args, **kwargs)
        umask = os.umask(0)
        os.umask(umask)
        for path in Path(save_directory).rglob("*.safetensors"):
            path.chmod(0o666 & ~umask)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head if self.lm_head is not None else self.get_input_embeddings()

    def head(self, x):
        """(..., D) -> (..., V)"""
        return F.linear(self.head_proj(self.head_norm(x)), self.get_output_embeddings().weight)

    def halt_logit(self, x):
        """Logit of p_halt, "this loop's answer is already right". (..., D) -> (...)"""
        return self.halt_head(self.head_norm(x)).squeeze(-1)

    def without_halt(self, loop_logits):
        """The logits with `<HALT>` ruled out: their argmax is the loop's answer."""
        if self.config.halt_token_id is None:
            return loop_logits.float()
        halt = torch.tensor([self.config.halt_token_id], device=loop_logits.device)
        return loop_logits.float().index_fill(-1, halt, float("-inf"))

    def halts(self, logits):
        """Whether a loop's `<HALT>` stops the `token` mode: its best token, with p >= `halt_token_threshold`.
        (..., V) -> (...)"""
        halt_id = self.config.halt_token_id
        if halt_id is None:
            return torch.zeros(logits.shape[:-1], dtype=torch.bool, device=logits.device)
        stop = logits.argmax(-1) == halt_id
        if self.config.halt_token_threshold > 0:
            stop &= logits.float().softmax(-1)[..., halt_id] >= self.config.halt_token_threshold
        return stop

    def answer_loop(self, loop_logits):
        """Index of the answer loop, as `reason()` answers in `token` mode: the last loop before the first stopping
        `<HALT>` (all loops if none stops) whose best token is not `<HALT>`, else the first. (B, L, V) -> (B,)"""
        B, L, _ = loop_logits.shape
        stops = self.halts(loop_logits)
        first_stop = torch.where(stops.any(1), stops.int().argmax(1), torch.full((B,), L, device=stops.device))
        loop = torch.arange(L, device=stops.device)
        halt_id = -1 if self.config.halt_token_id is None else self.config.halt_token_id
        answers = (loop_logits.argmax(-1) != halt_id) & (loop < first_stop[:, None])
        last_answer = L - 1 - answers.flip(1).int().argmax(1)
        return torch.where(answers.any(1), last_answer, torch.zeros_like(last_answer))

    def forward(
        self, input_ids, attention_mask=None, loop_labels=None, num_loops=None, position_ids=None, grad_loops=None,
        lanes=None, answer_ids=None, hold_answer=False, **kwargs,
    ):
        r"""
        loop_labels (`torch.LongTensor` of shape `(batch_size, num_loops)` or `(batch_size, num_loops, set_size)`, *optional*):
            Target token of every loop (the path's nodes, then `<HALT>`); -100 marks loops that do not count. With a
            third dimension, a loop's target is a set of tokens (-100 pads it), scored as `config.loop_set_loss`
            says. Sets the number of loops run.
        num_loops (`int`, *optional*):
            Loops to run without labels; defaults to `config.max_inference_loops`.
        position_ids (`torch.LongTensor` of shape `(batch_size, tokens)`, *optional*):
            GPT-2 positions (training shifts them by random offsets); ignored by Mamba2.
        grad_loops (`int`, *optional*):
            Backpropagate only through the last `grad_loops` loops.
        lanes (`str` or `list[str]`, *optional*):
            The task lane of every example (or one for all): its LoRA adapter runs on the core. Default: the base lane.
        answer_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The answer token of every example. With `loop_labels`, it trains the halting head (if the model has one)
            with binary cross-entropy against "the loop's best token other than `<HALT>` is the answer", on every
            supervised loop.
        hold_answer (`bool`, *optional*, defaults to `False`):
            With `answer_ids`: every loop labelled `<HALT>` must also keep the answer as its best other token (one
            more cross-entropy term), so that loops run past the halt point do not drift off the answer.
        """
        if loop_labels is not None:
            if loop_labels.shape[1] > self.config.max_loops:
                raise ValueError(
                    f"`loop_labels` asks for {loop_labels.shape[1]} loops but `max_loops` is {self.config.max_loops}."
                )
            num_loops = loop_labels.shape[1]
        outputs = self.model(
            input_ids, attention_mask, num_loops=num_loops, position_ids=position_ids, grad_loops=grad_loops,
            adapter_names=self.adapter_names(lanes, input_ids.shape[0]),
        )
        loop_logits = self.head(outputs.latents)  # (B, L, V)
        if loop_labels is None and not torch.isfinite(loop_logits).all():  # training checks its loss instead
            broken = int((~torch.isfinite(loop_logits)).any(-1).any(0).int().argmax()) + 1
            raise FloatingPointError(f"The logits of loop {broken} hold NaN or inf: the weights or the inputs are "
                                     "broken (a diverged or corrupted checkpoint?).")
        halt_logits = self.halt_logit(outputs.latents) if self.halt_head is not None else None
        loss = None
        if loop_labels is not None and loop_labels.dim() == 2:
            # Deep supervision: every loop is one cross-entropy term; -100 loops (after <HALT>) do not count.
            loss = F.cross_entropy(loop_logits.flatten(0, 1).float(), loop_labels.flatten(), ignore_index=-100)
        elif loop_labels is not None:
            loss = set_cross_entropy(loop_logits, loop_labels, self.config.loop_set_loss)
            loop_labels = loop_labels[..., 0]  # one token per loop for the terms below: <HALT> loops have no set
        if loop_labels is not None and answer_ids is not None:
            loop_answers = self.without_halt(loop_logits)
            answers = answer_ids[:, None].expand_as(loop_labels)
            at_halt = loop_labels == self.config.halt_token_id
            if hold_answer and at_halt.any():
                loss = loss + F.cross_entropy(loop_answers[at_halt], answers[at_halt])
            if halt_logits is not None:
                supervised = loop_labels != -100
                answer_right = (loop_answers.argmax(-1) == answers).float()
                loss = loss + F.binary_cross_entropy_with_logits(halt_logits[supervised].float(), answer_right[supervised])
        rows = torch.arange(loop_logits.shape[0], device=loop_logits.device)
        answer_logits = loop_logits[rows, self.answer_loop(loop_logits)]
        return RecursiveLatentCausalLMOutput(
            loss=loss, logits=answer_logits[:, None], loop_logits=loop_logits, latents=outputs.latents,
            halt_logits=halt_logits,
        )

    @torch.no_grad()
    def reason(self, input_ids, attention_mask=None, max_loops=None, lanes=None, halting=None):
        """Loop each example until its halting rule stops it or it hits `max_loops` (default
        `config.max_inference_loops`). Examples that stopped leave the batch, so a batch costs the sum of its
        examples' loops, and the outputs grow with the loops actually run. `halting` overrides `config.halting`
        (`token`, `head`, `fixed`, `velocity`: `HALTING_RULES`); `lanes` picks each example's lane adapter, as in
        `forward`. The answer is the last prediction that is not `<HALT>`: in `token` mode the loop before `<HALT>`,
        in the others the last loop run (or the last one before it that did not predict `<HALT>`)."""
        halting = halting or self.config.halting
        should_stop = halting_rule(halting)
        if halting == "head" and self.halt_head is None:
            raise ValueError("`halting='head'` needs a halting head; this model was built without one (`halt_head`).")
        if max_loops is None:
            max_loops = self.config.fixed_loops if halting == "fixed" else self.config.max_inference_loops
        if isinstance(max_loops, bool) or not isinstance(max_loops, numbers.Integral) or max_loops < 1:
            raise ValueError(f"`max_loops` must be a positive integer (got {max_loops!r}).")
        context = self.model.encode(input_ids, attention_mask, adapter_names=self.adapter_names(lanes, input_ids.shape[0]))
        latent = self.model.init_latent(context)
        B, device = input_ids.shape[0], input_ids.device
        pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        answer = torch.full((B,), pad_id, dtype=torch.long, device=device)
        loops = torch.zeros(B, dtype=torch.long, device=device)
        halted = torch.zeros(B, dtype=torch.bool, device=device)
        active = torch.arange(B, device=device)  # original row of each example still looping
        trace, previous = [], None  # trace: one (B,) row of predictions per loop run
        for loop in range(max_loops):
            latent, out = self.model.loop_step(latent, context, loop)
            logits = self.head(out)  # (b, V)
            if not torch.isfinite(logits).all():
                raise FloatingPointError(f"The logits of loop {loop + 1} hold NaN or inf: the weights or the inputs "
                                         "are broken (a diverged or corrupted checkpoint?).")
            prediction = logits.argmax(-1)  # (b,)
            trace.append(torch.full((B,), pad_id, dtype=torch.long, device=device).index_copy(0, active, prediction))
            loops[active] += 1
            is_halt = prediction == self.config.halt_token_id
            answer[active[~is_halt]] = prediction[~is_halt]
            stop = should_stop(self, LoopStep(loop, max_loops, logits, prediction, out, previous))
            halted[active[stop]] = True
            previous = out
            if stop.any():
                keep = (~stop).nonzero().squeeze(1)
                active, latent, context, previous = active[keep], latent[keep], context.select(keep), previous[keep]
                if active.numel() == 0:
                    break
        return RecursiveLatentReasonOutput(answer_ids=answer, loops=loops, halted=halted, trace_ids=torch.stack(trace, 1))

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No cache: every generated token re-reads the whole prompt (generation is one token: the answer).
        return {"input_ids": input_ids, "attention_mask": attention_mask}


# ----------------------------------------------------------------------------------------------------------------
# HF registration: `save_pretrained` copies this file and the config file next to the weights.
# ----------------------------------------------------------------------------------------------------------------

RecursiveLatentConfig.register_for_auto_class()
RecursiveLatentModel.register_for_auto_class("AutoModel")
RecursiveLatentForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["RecursiveLatentForCausalLM", "RecursiveLatentModel", "RecursiveLatentPreTrainedModel"]
