"""Recursive Latent Forcing: train a RecursiveLatent model on hop chains, supervising every loop.

    python trainers/rlf.py --config trainers/configs/default.yaml [--key value ...]
    accelerate launch trainers/rlf.py --config trainers/configs/default.yaml
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        trainers/rlf.py --config trainers/configs/default.yaml          # 2-process data parallel on the CPU

Without pretrained backbone weights (`--backbone_name_or_path`), a `frozen` or `lora` run has two stages:
stage 1 trains the tiny backbone as a language model on 1-hop text, stage 2 freezes it and trains the looped core.
Output: `<output_dir>/checkpoint-*` and `<output_dir>/final`, each a complete remote-code checkpoint.
"""

import copy
import hashlib
import json
import math
import os
import random
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from huggingface_hub import get_token
from safetensors.torch import load_file, save_file
from transformers import EarlyStoppingCallback, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from dataset_scripts.collator import LoopLabelCollator, tokenize
from dataset_scripts.hop_chains import ARITH_OPS, LANES, check_arith_ops, generate_examples, make_arith_example, make_example
from dataset_scripts.tokenizer import load_tokenizer, task_words
from model_cards.generate import write_model_card
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM
from recursive_latent.evaluation import evaluate_examples
from recursive_latent.hub import HubPushError, push_checkpoint
from recursive_latent.optimization import muon_with_adamw

CURRICULUM_FILE = "curriculum.json"
EMA_FILE = "ema.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    backbone_type: str = field(default="gpt2", metadata={"help": "`gpt2` or `mamba2` (built from the sizes below)."})
    backbone_name_or_path: str | None = field(
        default=None, metadata={"help": "Pretrained backbone (Hub id or local dir); skips stage 1."}
    )
    backbone_hidden_size: int = field(default=64, metadata={"help": "Width of a backbone built from config."})
    backbone_num_layers: int = field(default=2, metadata={"help": "Layers of a backbone built from config."})
    backbone_num_heads: int = field(default=4, metadata={"help": "GPT-2 heads / Mamba2 head count."})
    backbone_max_positions: int = field(default=512, metadata={"help": "GPT-2 context length."})
    mamba_state_size: int = field(default=32, metadata={"help": "Mamba2 SSM state size."})
    mamba_chunk_size: int = field(default=16, metadata={"help": "Mamba2 chunk size (small is faster on CPU)."})
    backbone_mode: str = field(default="frozen", metadata={"help": "`frozen`, `lora` or `full`."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank in `lora` mode."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha in `lora` mode."})
    core_design: str = field(default="latent", metadata={"help": "`latent` or `sequence`."})
    core_block: str = field(default="transformer", metadata={"help": "`transformer` or `mamba2`."})
    core_hidden_size: int | None = field(default=None, metadata={"help": "Core width (default: the backbone's)."})
    core_num_heads: int = field(default=4, metadata={"help": "Heads of a transformer core block."})
    core_num_layers: int = field(default=1, metadata={"help": "Core blocks per loop."})
    memory: str = field(default="all", metadata={"help": "`all` backbone layers or the `last` one."})
    binding_conv: str = field(default="embeddings", metadata={"help": "`embeddings`, `memory` or `none`."})
    latent_residual: bool = field(default=True, metadata={"help": "Keep the old latent in the core's residual."})
    backbone_positions: bool = field(
        default=True, metadata={"help": "GPT-2 position embeddings; false gives every token position 0's (no positions)."}
    )
    latent_norm: bool = field(default=True, metadata={"help": "LayerNorm the latent every loop."})
    latent_newton_schulz: bool = field(default=False, metadata={"help": "Orthogonalise the latent every loop (seed 003)."})
    lifeline: bool = field(default=True, metadata={"help": "Re-inject the prompt state every loop."})
    loop_rotary: bool = field(default=False, metadata={"help": "Rotate the latent by the loop index."})
    max_loops: int = field(default=8, metadata={"help": "Most loops a training example may need (hops + 1)."})
    max_inference_loops: int = field(default=72, metadata={"help": "Loop limit of `reason()`."})
    halting: str = field(
        default="token",
        metadata={"help": "`token` (supervise the path, then <HALT>), `head` (the same, and `reason()` stops on the "
                          "halting head; needs --halt_head) or `fixed` (run `fixed_loops`, supervise only the answer at "
                          "the last loop: the fixed-depth and, with 1 loop, the no-loop baseline)."},
    )
    fixed_loops: int = field(default=6, metadata={"help": "Loops of `--halting fixed`."})
    halt_head: bool = field(default=False, metadata={"help": "Add and train a halting head (p_halt)."})
    halt_threshold: float = field(default=0.5, metadata={"help": "p_halt at which `--halting head` stops."})
    init_from: str | None = field(
        default=None, metadata={"help": "Start from this trained checkpoint (its architecture replaces the above)."}
    )
    lane_r: int = field(default=4, metadata={"help": "LoRA rank of a lane adapter (`--lane` other than the base)."})
    lane_alpha: int = field(default=8, metadata={"help": "LoRA alpha of a lane adapter."})


@dataclass
class DataArguments:
    lane: str = field(
        default="pointer",
        metadata={"help": "Task lane (`pointer`, `arith`). A lane other than the --init_from model's base lane trains "
                          "its own LoRA adapter on the core while every shared weight stays frozen (if the checkpoint has "
                          "this lane's adapter already, that one trains on); without --init_from, the whole new "
                          "model trains on this lane (it becomes its base lane)."},
    )
    variant: str = field(default="shuffled", metadata={"help": "`shuffled` (distractors) or `chain` (seed format)."})
    min_hops: int = field(default=1, metadata={"help": "Fewest hops in training."})
    max_hops: int = field(default=5, metadata={"help": "Most hops in training (the curriculum ends here)."})
    min_distractors: int = field(default=1, metadata={"help": "Fewest distractor chains (`shuffled`)."})
    max_distractors: int = field(default=3, metadata={"help": "Most distractor chains (`shuffled`)."})
    min_distractor_hops: int = field(default=1, metadata={"help": "Shortest distractor chain."})
    max_distractor_hops: int = field(default=5, metadata={"help": "Longest distractor chain."})
    arith_ops: str = field(default="+-*", metadata={"help": "Operations of the `arith` lane's statements."})
    mix_arith: float = field(
        default=0.0,
        metadata={"help": "Share of a new pointer model's training examples drawn from the `arith` lane (with "
                          "--arith_ops): its shared weights then learn from both tasks, as TREX's shared body does. "
                          "Validation and the curriculum stay on `pointer`."},
    )
    eval_hops: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8, 10], metadata={"help": "Hops at eval."})
    eval_size: int = field(default=200, metadata={"help": "Fresh validation prompts per hop count at each eval."})


@dataclass
class RecursionArguments:
    curriculum: bool = field(default=True, metadata={"help": "Start at `curriculum_start_hops`, add one hop at a time."})
    curriculum_start_hops: int = field(default=2, metadata={"help": "Max hops of the first curriculum stage."})
    curriculum_threshold: float = field(
        default=0.95, metadata={"help": "Sequence accuracy (every loop right) on recent batches that opens the next stage."}
    )
    curriculum_window: int = field(default=50, metadata={"help": "Steps between curriculum checks."})
    position_offsets: bool = field(
        default=True, metadata={"help": "Shift GPT-2 positions by a random offset per example in training."}
    )
    grad_loops: int | None = field(
        default=None,
        metadata={"help": "Backprop through the last k loops of each batch only. A batch runs as many loops as its "
                          "longest example, so shorter examples' first loops get no gradient (measured: with k=2 "
                          "the default recipe did not learn; docs/experiments.md)."},
    )
    core_optimizer: str = field(
        default="adamw", metadata={"help": "`adamw`, or `muon` for the core blocks' weight matrices (AdamW for the rest)."}
    )
    extra_loops: int = field(
        default=0,
        metadata={"help": "Run each training example 0..k extra loops past its <HALT> (drawn per example), labelled "
                          "<HALT> and trained to keep the answer as the best other token."},
    )
    pretrain_steps: int = field(default=1500, metadata={
        "help": "Stage 1: LM steps for a backbone built from config. To walk past the trained hops the frozen and "
                "LoRA modes need far more: 15,000 meet the depth targets, 1,500 reach 31% at 16 hops "
                "(docs/experiments.md)."})
    pretrain_learning_rate: float = field(default=2e-3, metadata={"help": "Stage 1 learning rate."})
    pretrain_hops: int = field(default=1, metadata={"help": "Stage 1 text: prompts of this many hops + answer."})
    ema_decay: float | None = field(
        default=None, metadata={"help": "Keep an EMA of the trainable weights (e.g. 0.999) for eval and the final save."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evals without a better `exact_match`."}
    )


def command_line(script, argv=None):
    """The command that ran `trainers/<script>` with `argv`, as recorded in a checkpoint's training_config.yaml."""
    return " ".join(["python", f"trainers/{script}", *(sys.argv[1:] if argv is None else argv)])


def parse_arguments(argv=None):
    """`--config FILE.yaml` sets defaults; any `--key value` after it overrides them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, RecursionArguments, TrainingArguments))
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise SystemExit("error: --config needs a YAML file")
        config_path = argv[index + 1]
        del argv[index : index + 2]
    defaults = {}
    if config_path is not None:
        if not os.path.isfile(config_path):
            raise SystemExit(f"error: config file not found: {config_path}")
        with open(config_path) as f:
            defaults = yaml.safe_load(f) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise SystemExit(f"error: unknown key(s) in {config_path}: {', '.join(unknown)}")
        defaults.setdefault("output_dir", os.path.join("outputs", Path(config_path).stem))
    parser.set_defaults(**defaults)
    model_args, data_args, recursion_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, recursion_args, training_args, config_path


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def example_kwargs(data_args, words, lane=None):
    """Options for `make_example` / `generate_examples` in `lane` (default: the run's): the `shuffled` variant's
    distractor settings and the tokenizer's name and value pools (`words`, from `task_words`), or the arith ops."""
    if (lane or data_args.lane) == "arith":
        return {"names": words["names"], "ops": data_args.arith_ops}
    return dict(
        num_distractors=(data_args.min_distractors, data_args.max_distractors),
        distractor_hops=(data_args.min_distractor_hops, data_args.max_distractor_hops),
        **words,
    )


class HopChainStream(torch.utils.data.Dataset):
    """Fresh training examples made on the fly: example `i` depends only on (seed, i, current max hops), so a
    resumed run sees the same data in the same order. `max_hops` is raised by the curriculum."""

    def __init__(self, data_args, words, size, seed, max_hops, fixed_hops=None, extra_loops=0):
        self.data_args, self.size, self.seed, self.max_hops, self.fixed_hops = data_args, size, seed, max_hops, fixed_hops
        self.options = {lane: example_kwargs(data_args, words, lane) for lane in LANES}
        self.extra_loops = extra_loops

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        args = self.data_args
        rng = random.Random(self.seed * 1_000_003 + index)
        hops = self.fixed_hops or rng.randint(args.min_hops, self.max_hops)
        # The draw for --mix_arith happens only when it is on, so runs without it keep their data.
        if args.lane == "arith" or (args.mix_arith and rng.random() < args.mix_arith):
            example = make_arith_example(rng, hops, **self.options["arith"])
        else:
            example = make_example(rng, hops, variant=args.variant, **self.options["pointer"])
        if self.extra_loops:
            example["loop_targets"] = example["loop_targets"] + ["<HALT>"] * rng.randint(0, self.extra_loops)
        return example


def lm_collator(tokenizer):
    """Stage 1 batches: the prompt followed by its answer, as next-token LM text."""

    def collate(examples):
        batch = tokenize(tokenizer, [f"{e['prompt']} {e['answer']}" for e in examples])
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    return collate


def validation_examples(data_args, words):
    """Fresh prompts per eval hop count. Their seeds (10,000 + hops) differ from every training stream's seed;
    the benchmarks use other seeds again."""
    examples = []
    for hops in data_args.eval_hops:
        examples += generate_examples(data_args.eval_size, hops, variant=data_args.variant, seed=10_000 + hops,
                                      lane=data_args.lane, **example_kwargs(data_args, words))
    return examples


def offset_positions(attention_mask, config, enabled):
    """Real-token positions, shifted by a random offset per example in training so that a backbone with learned
    absolute positions sees every position and reads long test prompts (offset 0 at test time). A position-free
    backbone (`backbone_positions=False`) gets no offset: it numbers every token 0 and reads any length."""
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    max_positions = config.max_prompt_tokens
    if enabled and max_positions is not None:
        room = max_positions - attention_mask.shape[1]
        positions = positions + torch.randint(0, room + 1, (attention_mask.shape[0], 1), device=positions.device)
    return positions


# ----------------------------------------------------------------------------------------------------------------
# Curriculum and trainers
# ----------------------------------------------------------------------------------------------------------------


def write_train_results(final_dir, train_output, train_data):
    """`train_results.json`, read by the benchmarks: the Trainer's metrics and the hops the curriculum reached, which
    may fall short of --max_hops (the trained range)."""
    metrics = {**train_output.metrics, "trained_max_hops": train_data.max_hops}
    Path(final_dir, "train_results.json").write_text(json.dumps(metrics, indent=2))


def checkpoint_file(args, state, name):
    """Where a callback stores its own state inside the checkpoint the Trainer just saved."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}" / name


class CurriculumCallback(TrainerCallback):
    """Raises the training max hops by one when the sequence accuracy of recent batches (summed over ranks)
    passes the threshold; saves its state into every checkpoint so a resumed run continues the same stage."""

    def __init__(self, dataset, recursion_args, final_hops):
        self.dataset, self.args, self.final_hops = dataset, recursion_args, final_hops
        self.correct, self.count = 0, 0

    def record(self, correct, count):
        self.correct += correct
        self.count += count

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.args.curriculum_window or self.dataset.max_hops >= self.final_hops:
            return
        totals = torch.tensor([self.correct, self.count], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        accuracy = (totals[0] / totals[1].clamp(min=1)).item()
        self.correct, self.count = 0, 0
        if accuracy >= self.args.curriculum_threshold:
            self.dataset.max_hops += 1
            if state.is_world_process_zero:
                print(f"[curriculum] step {state.global_step}: sequence accuracy {accuracy:.3f} -> max hops "
                      f"{self.dataset.max_hops}")

    def on_save(self, args, state, control, **kwargs):
        path = checkpoint_file(args, state, CURRICULUM_FILE)
        if state.is_world_process_zero and path.parent.is_dir():
            path.write_text(json.dumps({"max_hops": self.dataset.max_hops, "correct": self.correct, "count": self.count}))

    def restore(self, checkpoint_dir):
        path = Path(checkpoint_dir) / CURRICULUM_FILE
        if path.is_file():
            state = json.loads(path.read_text())
            self.dataset.max_hops, self.correct, self.count = state["max_hops"], state["correct"], state["count"]


class WeightEMA(TrainerCallback):
    """Exponential moving average of the trainable weights, updated after every optimizer step. Evaluation and
    the final checkpoint use the average; `checkpoint-*` keep the raw weights (to resume) plus `ema.safetensors`."""

    def __init__(self, model, decay):
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        for name, p in self.params.items():
            self.shadow[name].lerp_(p, 1 - self.decay)

    @contextmanager
    def applied(self):
        """Swap the averaged weights in for the duration of the block."""
        raw = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])

    def on_save(self, args, state, control, **kwargs):
        path = checkpoint_file(args, state, EMA_FILE)
        if state.is_world_process_zero and path.parent.is_dir():
            save_file({name: t.contiguous() for name, t in self.shadow.items()}, path)

    def restore(self, checkpoint_dir):
        path = Path(checkpoint_dir) / EMA_FILE
        if not path.is_file():
            raise SystemExit(f"error: {checkpoint_dir} has no {EMA_FILE}; it was not trained with --ema_decay")
        self.shadow.update(load_file(path))


class BackboneLMTrainer(Trainer):
    """Stage 1: next-token LM loss of the backbone through the tied embeddings."""

    def __init__(self, *args, recursion_args=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.recursion_args = recursion_args

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inner = self.accelerator.unwrap_model(model).model
        mask = inputs["attention_mask"]
        positions = offset_positions(mask, inner.config, self.recursion_args.position_offsets)
        hidden = inner.run_backbone(inputs["input_ids"], mask, positions)[-1]
        logits = hidden[:, :-1] @ inner.get_input_embeddings().weight.T
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), inputs["labels"][:, 1:].flatten(), ignore_index=-100)
        return (loss, None) if return_outputs else loss


class RLFTrainer(Trainer):
    """Stage 2: the loop-supervision loss, the curriculum's accuracy feed, and per-hop exact-match evaluation."""

    def __init__(self, *args, recursion_args=None, data_args=None, curriculum=None, ema=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.recursion_args, self.data_args, self.curriculum, self.ema = recursion_args, data_args, curriculum, ema

    def create_optimizer(self, model=None):
        if self.recursion_args.core_optimizer == "muon" and self.optimizer is None:
            args = self.args
            self.optimizer = muon_with_adamw(self.model, args.learning_rate, args.weight_decay,
                                             set(self.get_decay_parameter_names(self.model)),
                                             betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        return super().create_optimizer(model)

    def averaged_weights(self):
        """The EMA weights in place if the run keeps an EMA, else nothing changes."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        config = self.accelerator.unwrap_model(model).config
        # Lanes route rows to adapters; a model without any trains its shared weights on every row (--mix_arith).
        lanes = inputs.get("lanes") if config.lane_adapters else None
        mask = inputs["attention_mask"]
        positions = offset_positions(mask, config, self.recursion_args.position_offsets)
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=mask, loop_labels=inputs["loop_labels"],
            position_ids=positions, grad_loops=self.recursion_args.grad_loops, lanes=lanes,
            answer_ids=inputs["answer_ids"], hold_answer=self.recursion_args.extra_loops > 0,
        )
        if not torch.isfinite(outputs.loss):
            raise RuntimeError(
                f"Loss is {outputs.loss.item()} at step {self.state.global_step}: stopping. The last good checkpoint "
                f"in {self.args.output_dir} is untouched; lower the learning rate or resume from it."
            )
        if self.curriculum is not None:
            labels = inputs["loop_labels"]
            right = (outputs.loop_logits.argmax(-1) == labels) | (labels == -100)
            self.curriculum.record(int(right.all(1).sum()), labels.shape[0])
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Exact match of `reason()` per hop count on the validation prompts (see `validation_examples`)."""
        model = self.accelerator.unwrap_model(self.model)
        examples = eval_dataset if eval_dataset is not None else self.eval_dataset
        with self.averaged_weights():
            results = evaluate_examples(model, self.processing_class, examples)["per_hop"]
        model.train()
        metrics = {f"{metric_key_prefix}_exact_match_hop_{h}": r["answer_exact_match"] for h, r in results.items()}
        metrics |= {f"{metric_key_prefix}_trace_match_hop_{h}": r["trace_exact_match"] for h, r in results.items()}
        metrics[f"{metric_key_prefix}_exact_match"] = sum(r["answer_exact_match"] for r in results.values()) / len(results)
        self.log(metrics)
        if self.is_world_process_zero():
            print("[eval] step", self.state.global_step, " ".join(
                f"{h}:{r['answer_exact_match']:.3f}/{r['trace_exact_match']:.3f}" for h, r in results.items()))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict=state_dict if state_dict is not None else merged_state_dict(self.model))
        if self.is_world_process_zero():
            write_model_card(output_dir or self.args.output_dir)


# ----------------------------------------------------------------------------------------------------------------
# Model setup
# ----------------------------------------------------------------------------------------------------------------


def backbone_config(model_args, tokenizer):
    """The config (a dict with its `model_type`) of a backbone built from scratch at the size `model_args` asks for."""
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    # Fan-in init: the backbones' default std 0.02 is tuned for width 768 and gives a 64-wide LM flat logits.
    special["initializer_range"] = model_args.backbone_hidden_size**-0.5
    if model_args.backbone_type == "gpt2":
        backbone = dict(
            model_type="gpt2", vocab_size=len(tokenizer), n_positions=model_args.backbone_max_positions,
            n_embd=model_args.backbone_hidden_size, n_layer=model_args.backbone_num_layers,
            n_head=model_args.backbone_num_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            # The exact (erf) GELU instead of GPT-2's tanh approximation: a backbone trained from scratch has no
            # reason to approximate, and on the CPU its forward + backward takes half the time of the fused tanh op.
            activation_function="gelu", **special,
        )
    elif model_args.backbone_type == "mamba2":
        width = model_args.backbone_hidden_size
        backbone = dict(
            model_type="mamba2", vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=model_args.backbone_num_layers,
            expand=2, head_dim=2 * width // model_args.backbone_num_heads, num_heads=model_args.backbone_num_heads,
            n_groups=1, state_size=model_args.mamba_state_size, chunk_size=model_args.mamba_chunk_size, **special,
        )
    else:
        raise SystemExit(f"error: --backbone_type must be `gpt2` or `mamba2` (got {model_args.backbone_type!r})")
    return backbone


def build_model(model_args, tokenizer):
    core_kwargs = dict(
        backbone_mode=model_args.backbone_mode, core_design=model_args.core_design, core_block=model_args.core_block,
        core_hidden_size=model_args.core_hidden_size, core_num_heads=model_args.core_num_heads,
        core_num_layers=model_args.core_num_layers, memory=model_args.memory,
        binding_conv=model_args.binding_conv, latent_residual=model_args.latent_residual,
        backbone_positions=model_args.backbone_positions, latent_norm=model_args.latent_norm,
        latent_newton_schulz=model_args.latent_newton_schulz, lifeline=model_args.lifeline,
        loop_rotary=model_args.loop_rotary, max_loops=model_args.max_loops,
        max_inference_loops=model_args.max_inference_loops, halt_token_id=tokenizer.convert_tokens_to_ids("<HALT>"),
        halting=model_args.halting, fixed_loops=model_args.fixed_loops, halt_head=model_args.halt_head,
        halt_threshold=model_args.halt_threshold,
    )
    if model_args.backbone_name_or_path:
        return RecursiveLatentForCausalLM.from_backbone(
            model_args.backbone_name_or_path, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **core_kwargs
        )
    backbone = backbone_config(model_args, tokenizer)
    return RecursiveLatentForCausalLM(RecursiveLatentConfig(backbone_config=backbone, **core_kwargs))


def load_trained(path, model_args):
    """A trained checkpoint to continue from. Switches that only add to it apply: more `--max_loops`, and
    `--halt_head true` adds a new halting head (the rest of the model keeps its trained weights)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"error: --init_from {path} is not a checkpoint directory")
    config = RecursiveLatentConfig.from_pretrained(path)
    config.max_loops = max(config.max_loops, model_args.max_loops)
    config.halt_head = config.halt_head or model_args.halt_head
    if model_args.halting != "token":
        config.halting = model_args.halting
    return RecursiveLatentForCausalLM.from_pretrained(path, config=config)


def add_lane_adapter(model, lane, model_args):
    """Freeze every shared weight and add the lane's LoRA adapter on the core: only the adapter trains. If the
    checkpoint already has this lane's adapter, that one trains on (with its saved rank and alpha)."""
    model.requires_grad_(False)
    if lane in model.config.lane_adapters:
        for p in model.lane_parameters(lane):
            p.requires_grad_(True)
        return
    try:
        model.add_lane(lane, r=model_args.lane_r, lora_alpha=model_args.lane_alpha)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def add_lora(model, model_args):
    """PEFT LoRA adapters on the frozen backbone's attention and MLP projections (GPT-2) or mixer input projection
    (Mamba2: PEFT refuses `out_proj` there, which mamba-ssm's fused kernels bypass)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = ["c_attn", "c_proj", "c_fc"] if model.config.backbone_type == "gpt2" else ["in_proj"]
    lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, target_modules=targets)
    inject_adapter_in_model(lora, model.model.backbone)
    model.config.backbone_mode = "lora"  # also on a frozen --init_from checkpoint: the config records the adapters


def merged_state_dict(model):
    """The weights to save: backbone LoRA adapters (if any) merged in, so every checkpoint is a plain one. (Lane
    adapters on the core are not merged: `save_pretrained` writes them as PEFT folders.)"""
    if not any("lora_" in name for name, _ in model.model.backbone.named_parameters()):
        return None
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(model)
    backbone = merged.model.backbone
    for name, module in list(backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent_name), child, module.get_base_layer())
    return merged.state_dict()


def check_output_dir(training_args):
    """Refuse to write into a directory that holds something other than this trainer's output."""
    out = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint or not out.exists() or not any(out.iterdir()):
        return
    ours = {"final", "runs", "training_config.yaml"}
    if not all(p.name in ours or p.name.startswith("checkpoint-") for p in out.iterdir()):
        raise SystemExit(
            f"error: output dir {out} holds files this trainer did not write; choose another --output_dir"
        )


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, data_args, recursion_args, training_args, config_path = parse_arguments(argv)
    check_output_dir(training_args)
    if model_args.halting == "fixed" and not 1 <= model_args.fixed_loops <= model_args.max_loops:
        raise SystemExit(f"error: --fixed_loops must be in 1..max_loops ({model_args.max_loops}), got {model_args.fixed_loops}")
    if recursion_args.core_optimizer not in ("adamw", "muon"):
        raise SystemExit(f"error: --core_optimizer must be `adamw` or `muon` (got {recursion_args.core_optimizer!r})")
    if model_args.halting == "head" and not model_args.halt_head:
        raise SystemExit("error: --halting head needs --halt_head true (a halting head to train)")
    longest = data_args.max_hops + 1 + recursion_args.extra_loops
    if model_args.halting != "fixed" and longest > model_args.max_loops:
        raise SystemExit(f"error: --max_loops {model_args.max_loops} is too few for {data_args.max_hops} hops + <HALT> + "
                         f"{recursion_args.extra_loops} extra loops: give --max_loops {longest}")
    if data_args.lane not in LANES:
        raise SystemExit(f"error: --lane must be one of {', '.join(LANES)} (got {data_args.lane!r})")
    try:
        check_arith_ops(data_args.arith_ops)
    except ValueError:
        raise SystemExit(f"error: --arith_ops must be some of {''.join(ARITH_OPS)!r} (got {data_args.arith_ops!r})") from None
    if not 0 <= data_args.mix_arith < 1:
        raise SystemExit(f"error: --mix_arith must be in [0, 1) (got {data_args.mix_arith})")
    if data_args.mix_arith and (data_args.lane != "pointer" or model_args.init_from):
        raise SystemExit("error: --mix_arith trains a new pointer model's shared weights on arith rows too; "
                         "it does not apply to --lane arith or to --init_from")
    if recursion_args.ema_decay is not None and not 0 < recursion_args.ema_decay < 1:
        raise SystemExit(f"error: --ema_decay must be between 0 and 1 (got {recursion_args.ema_decay})")
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "latest", "True", "true"):
        out = training_args.output_dir
        resume = get_last_checkpoint(out) if os.path.isdir(out) else None
        if resume is None:
            raise SystemExit(f"error: no checkpoint to resume from in {training_args.output_dir}")
    if resume and not os.path.isfile(os.path.join(resume, "config.json")):
        raise SystemExit(f"error: --resume_from_checkpoint {resume} is not a checkpoint directory")
    if resume and model_args.backbone_mode == "lora":
        raise SystemExit("error: resuming a `lora` run is not supported (checkpoints hold merged weights)")
    if resume and model_args.init_from and data_args.lane != "pointer":
        raise SystemExit("error: resuming a lane run is not supported; restart it from --init_from")
    # The final checkpoint is pushed once, with its card; the Trainer's own push would sync every checkpoint.
    push_to = training_args.hub_model_id if training_args.push_to_hub else None
    if training_args.push_to_hub and push_to is None:
        raise SystemExit("error: --push_to_hub needs --hub_model_id user/name")
    training_args.push_to_hub = False
    if push_to and (training_args.hub_token or get_token()) is None:
        raise SystemExit("error: --push_to_hub needs a Hugging Face token: log in with `hf auth login` or set HF_TOKEN")

    # Batches carry prompts and loop targets, not just forward() arguments: keep every column.
    training_args.remove_unused_columns = False
    torch.manual_seed(training_args.seed)
    # The word-level tokenizer, or the pretrained backbone's (or the checkpoint's) own with `<HALT>` added.
    tokenizer = load_tokenizer(model_args.init_from or model_args.backbone_name_or_path)
    words = task_words(tokenizer)
    if model_args.init_from is None:
        model = build_model(model_args, tokenizer)
        model.config.base_lane = data_args.lane  # a model trained from scratch is its lane's base model: no adapter
    else:
        model = load_trained(model_args.init_from, model_args)
    continues_lane = data_args.lane in model.config.lane_adapters  # said once, on rank 0, with the start-up lines
    if data_args.lane != model.config.base_lane:
        add_lane_adapter(model, data_args.lane, model_args)
    train_size = training_args.max_steps * training_args.per_device_train_batch_size * training_args.world_size

    # Stage 1: a backbone built from config knows nothing; train it as an LM before freezing it.
    needs_pretraining = (model_args.backbone_name_or_path is None and model_args.init_from is None
                         and model_args.backbone_mode != "full")
    if needs_pretraining and not resume and recursion_args.pretrain_steps > 0:
        core = [p for n, p in model.named_parameters() if p.requires_grad]
        model.model.backbone.requires_grad_(True)
        if model.model.binding is not None:
            model.model.binding.requires_grad_(True)
        for p in core:
            p.requires_grad_(False)
        stage1_args = copy.deepcopy(training_args)
        stage1_args.max_steps, stage1_args.learning_rate = recursion_args.pretrain_steps, recursion_args.pretrain_learning_rate
        stage1_args.save_strategy, stage1_args.eval_strategy, stage1_args.report_to = "no", "no", []
        stage1_args.load_best_model_at_end = False
        stage1_data = HopChainStream(data_args, words, recursion_args.pretrain_steps * training_args.per_device_train_batch_size
                                     * training_args.world_size, seed=training_args.seed + 1, max_hops=1,
                                     fixed_hops=recursion_args.pretrain_hops)
        BackboneLMTrainer(model=model, args=stage1_args, train_dataset=stage1_data, data_collator=lm_collator(tokenizer),
                          recursion_args=recursion_args).train()
        for p in core:
            p.requires_grad_(True)
        model.model.freeze_backbone()
    if model_args.backbone_mode == "lora":
        add_lora(model, model_args)

    start_hops = recursion_args.curriculum_start_hops if recursion_args.curriculum else data_args.max_hops
    train_data = HopChainStream(data_args, words, train_size, seed=training_args.seed, max_hops=min(start_hops, data_args.max_hops),
                                extra_loops=recursion_args.extra_loops)
    curriculum = CurriculumCallback(train_data, recursion_args, data_args.max_hops) if recursion_args.curriculum else None
    callbacks = [curriculum] if curriculum else []
    ema = WeightEMA(model, recursion_args.ema_decay) if recursion_args.ema_decay else None
    if ema is not None:
        callbacks.append(ema)
    if recursion_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(recursion_args.early_stopping_patience))
    if resume and curriculum:
        curriculum.restore(resume)
    if resume and ema:
        ema.restore(resume)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if training_args.process_index == 0:
        what = f"lane `{data_args.lane}` adapter" if data_args.lane != model.config.base_lane else \
            f"{model.config.backbone_mode} backbone"
        print(f"[model] {total:,} parameters, {trainable:,} trainable ({what})")
        if continues_lane:
            print(f"[lane] training the checkpoint's `{data_args.lane}` adapter on (rank {model.peft_config[data_args.lane].r}; "
                  f"--lane_r and --lane_alpha apply to new adapters only)")
        os.makedirs(training_args.output_dir, exist_ok=True)
        run_config = {"command": command_line("rlf.py", argv), "model": asdict(model_args), "data": asdict(data_args), "recursion": asdict(recursion_args),
                      "config_file": config_path, "seed": training_args.seed}
        Path(training_args.output_dir, "training_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))

    # Fixed-depth training (Ouro/Huginn): no path targets, no <HALT>, only the answer at the last loop.
    fixed_loops = model.config.fixed_loops if model.config.halting == "fixed" else None
    trainer = RLFTrainer(
        model=model, args=training_args, train_dataset=train_data, eval_dataset=validation_examples(data_args, words),
        processing_class=tokenizer,
        data_collator=LoopLabelCollator(tokenizer, answer_only_loops=fixed_loops), callbacks=callbacks,
        recursion_args=recursion_args,
        data_args=data_args, curriculum=curriculum, ema=ema,
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    # Data-parallel ranks must end with the same weights; each prints a digest so runs (and tests) can check.
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
    print(f"[rank {training_args.process_index}] world size {training_args.world_size} weights digest {digest}")
    final_dir = os.path.join(training_args.output_dir, "final")
    with trainer.averaged_weights():
        trainer.save_model(final_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(final_dir)
        Path(final_dir, "training_config.yaml").write_text(
            Path(training_args.output_dir, "training_config.yaml").read_text()
        )
        write_train_results(final_dir, train_output, train_data)
        write_model_card(final_dir)
        print(f"[done] final checkpoint in {final_dir}")
        if push_to:
            try:
                info = push_checkpoint(final_dir, push_to, token=training_args.hub_token,
                                       private=training_args.hub_private_repo or False)
            except HubPushError as error:
                raise SystemExit(f"error: {error} (the final checkpoint is saved in {final_dir})") from None
            print(f"[hub] pushed {final_dir} to {push_to}: {info.commit_url}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the process group down on every rank together: a rank that exits with it alive can abort at exit.
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
