"""Recursive Latent Forcing: train a RecursiveLatent model, supervising every loop.

    python trainers/rlf.py --config trainers/configs/default.yaml [--key value ...]
    python trainers/rlf.py --config trainers/configs/default.yaml --train_file F.json [--validation_file V.json]
    accelerate launch trainers/rlf.py --config trainers/configs/default.yaml
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        trainers/rlf.py --config trainers/configs/default.yaml          # 2-process data parallel on the CPU

Options come in four groups: the model (every `RecursiveLatentConfig` field, as `--model.<field>` or a `model:`
block of the YAML; the short `--<field>` also works), how the backbone is built, the data and the recursion
schedule, and any `TrainingArguments` field. Data: the built-in hop-chain generator (default), or examples of the
package's format (`recursive_latent.examples`) from `--train_file` / `--validation_file` (JSON or JSONL) or
`--dataset_name` (a Hub dataset id or a `save_to_disk` directory).

Without pretrained backbone weights (`--backbone_name_or_path`), a `frozen` or `lora` run has two stages:
stage 1 trains the tiny backbone as a language model on the task's text, stage 2 freezes it and trains the
looped core. Output: `<output_dir>/checkpoint-*` and `<output_dir>/final`, each a complete remote-code checkpoint,
written atomically (a checkpoint folder is whole or absent whenever the run is stopped).
"""

import argparse
import copy
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from huggingface_hub import get_token
from safetensors.torch import load_file, save_file
from transformers import EarlyStoppingCallback, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from dataset_scripts.collator import LoopLabelCollator
from dataset_scripts.hop_chains import ARITH_OPS, LANES, VARIANTS, check_arith_ops
from dataset_scripts.sources import ExampleStream, HopChainStream, generated_validation, lm_collator
from dataset_scripts.tokenizer import build_tokenizer, load_tokenizer, task_words, vocabulary_from_examples
from model_cards.generate import write_model_card
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM
from recursive_latent.evaluation import evaluate_examples
from recursive_latent.examples import HALT_TOKEN, ExampleError, LoopTargets, load_examples
from recursive_latent.hub import HubPushError, push_checkpoint
from recursive_latent.optimization import muon_with_adamw

CURRICULUM_FILE = "curriculum.json"
EMA_FILE = "ema.safetensors"
STAGING_DIR = ".staging"  # checkpoints are written here, then renamed into place
# Config fields the trainer fills in itself: from the backbone options, the tokenizer, the data and the lanes.
TRAINER_SET_FIELDS = ("backbone_config", "backbone_name_or_path", "halt_token_id", "base_lane", "lane_adapters")


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """How the model is built; its architecture itself is the `RecursiveLatentConfig` fields (`--model.<field>`)."""

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
    lora_r: int = field(default=8, metadata={"help": "LoRA rank in `lora` backbone mode."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha in `lora` backbone mode."})
    init_from: str | None = field(
        default=None, metadata={"help": "Start from this trained checkpoint (its architecture replaces the model "
                                        "options, except more --max_loops, --halt_head, --halting and lora)."}
    )
    lane_r: int = field(default=4, metadata={"help": "LoRA rank of a lane adapter (`--lane` other than the base)."})
    lane_alpha: int = field(default=8, metadata={"help": "LoRA alpha of a lane adapter."})

    def __post_init__(self):
        if self.backbone_type not in ("gpt2", "mamba2"):
            raise ValueError(f"--backbone_type must be `gpt2` or `mamba2` (got {self.backbone_type!r})")
        for name in ("backbone_hidden_size", "backbone_num_layers", "backbone_num_heads", "backbone_max_positions",
                     "mamba_state_size", "mamba_chunk_size", "lora_r", "lora_alpha", "lane_r", "lane_alpha"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.init_from is not None and not os.path.isfile(os.path.join(self.init_from, "config.json")):
            raise ValueError(f"--init_from {self.init_from} is not a checkpoint directory")


@dataclass
class DataArguments:
    train_file: str | None = field(
        default=None, metadata={"help": "Training examples, JSON list or JSONL of {question, steps, answer[, trace, "
                                        "lane]}; trains for epochs. Default: the hop-chain generator."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation examples, same format."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset id or a `save_to_disk` directory with a `train` (and "
                                        "optionally `validation`) split in the same format."}
    )
    lane: str | None = field(
        default=None,
        metadata={"help": "Task lane (generator: `pointer`, the default, or `arith`). A lane other than the "
                          "--init_from model's base lane trains its own LoRA adapter on the core while every shared "
                          "weight stays frozen (if the checkpoint has this lane's adapter already, that one trains "
                          "on); without --init_from, the whole new model trains on this lane (it becomes its base "
                          "lane). File examples without a `lane` field take this one."},
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

    @property
    def from_files(self):
        return self.train_file is not None or self.dataset_name is not None

    def __post_init__(self):
        if self.train_file is not None and self.dataset_name is not None:
            raise ValueError("give --train_file or --dataset_name, not both")
        if self.validation_file is not None and not self.from_files:
            raise ValueError("--validation_file needs --train_file or --dataset_name (the generator makes its own)")
        if self.from_files and self.mix_arith:
            raise ValueError("--mix_arith mixes generated arith chains into generated data; it does not apply to "
                             "--train_file / --dataset_name")
        if not self.from_files:
            self.lane = self.lane or "pointer"
            if self.lane not in LANES:
                raise ValueError(f"--lane must be one of {', '.join(LANES)} (got {self.lane!r})")
        if self.variant not in VARIANTS:
            raise ValueError(f"--variant must be one of {', '.join(VARIANTS)} (got {self.variant!r})")
        if not 1 <= self.min_hops <= self.max_hops:
            raise ValueError(f"need 1 <= --min_hops <= --max_hops (got {self.min_hops} and {self.max_hops})")
        try:
            check_arith_ops(self.arith_ops)
        except ValueError:
            raise ValueError(f"--arith_ops must be some of {''.join(ARITH_OPS)!r} (got {self.arith_ops!r})") from None
        if not 0 <= self.mix_arith < 1:
            raise ValueError(f"--mix_arith must be in [0, 1) (got {self.mix_arith})")
        if self.mix_arith and self.lane != "pointer":
            raise ValueError("--mix_arith trains a new pointer model's shared weights on arith rows too; it does not "
                             "apply to --lane arith")
        if self.eval_size < 1 or min(self.eval_hops, default=1) < 1:
            raise ValueError("--eval_size and every --eval_hops value must be >= 1")


@dataclass
class RecursionArguments:
    curriculum: bool = field(
        default=True, metadata={"help": "Start at `curriculum_start_hops` steps, add one at a time (also on files)."}
    )
    curriculum_start_hops: int = field(default=2, metadata={"help": "Max hops (steps) of the first curriculum stage."})
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
    pretrain_hops: int = field(default=1, metadata={"help": "Stage 1 text (generator): prompts of this many hops + answer."})
    ema_decay: float | None = field(
        default=None, metadata={"help": "Keep an EMA of the trainable weights (e.g. 0.999) for eval and the final save."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evals without a better `exact_match`."}
    )

    def __post_init__(self):
        if self.core_optimizer not in ("adamw", "muon"):
            raise ValueError(f"--core_optimizer must be `adamw` or `muon` (got {self.core_optimizer!r})")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be between 0 and 1 (got {self.ema_decay})")
        if not 0 < self.curriculum_threshold <= 1:
            raise ValueError(f"--curriculum_threshold must be in (0, 1] (got {self.curriculum_threshold})")
        for name, least in (("curriculum_start_hops", 1), ("curriculum_window", 1), ("extra_loops", 0),
                            ("pretrain_steps", 0), ("pretrain_hops", 1), ("grad_loops", 1),
                            ("early_stopping_patience", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"--{name} must be >= {least} (got {value})")
        if self.pretrain_learning_rate <= 0:
            raise ValueError(f"--pretrain_learning_rate must be > 0 (got {self.pretrain_learning_rate})")


def check_training_arguments(args):
    """Ranges the Trainer itself would only trip over mid-run (or after stage 1)."""
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max_steps must be >= 1 (or -1 to train --num_train_epochs; got {args.max_steps})")
    if args.max_steps == -1 and args.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs must be > 0 (got {args.num_train_epochs})")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be > 0 (got {args.learning_rate})")
    check_output_dir(args)


def check_output_dir(args):
    """The output directory must be a directory we may write, holding nothing but this trainer's output."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file, not a directory")
    existing = next(parent for parent in [out, *out.parents] if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {out} is not writable ({existing} refuses writes)")
    if args.resume_from_checkpoint or not out.is_dir():
        return
    ours = {"final", "runs", "training_config.yaml", STAGING_DIR}
    if not all(p.name in ours or p.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") for p in out.iterdir()):
        raise ValueError(f"output dir {out} holds files this trainer did not write; choose another --output_dir")


# -- model options: the RecursiveLatentConfig fields, documented once, in the config's docstring ---------------------


def model_fields():
    """{field: help} for every `RecursiveLatentConfig` argument the user sets, help taken from its docstring."""
    doc = inspect.getdoc(RecursiveLatentConfig)
    names = [name for name in inspect.signature(RecursiveLatentConfig.__init__).parameters
             if name not in ("self", "kwargs", *TRAINER_SET_FIELDS)]
    fields = {}
    for name in names:
        match = re.search(rf"^    {name} \((.*?)\):\n((?:        .*\n?)+)", doc, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"RecursiveLatentConfig's docstring does not document `{name}`")
        kind = re.sub(r"[`*]", "", match.group(1)).replace("optional, ", "").replace("optional", "")
        kind = kind.replace("defaults to", "default").strip(", ")
        text = " ".join(match.group(2).split())
        fields[name] = f"[{kind}] {text.split('. ')[0].rstrip('.')}."
    return fields


def parse_value(text):
    """A command-line value typed as YAML would: true/false, null, int, float (also `1e-3`), else the string (so
    `binding_conv none` stays the choice `"none"`)."""
    if not isinstance(text, str):
        return text
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_parser():
    parser = HfArgumentParser((ModelArguments, DataArguments, RecursionArguments, TrainingArguments))
    group = parser.add_argument_group("model (RecursiveLatentConfig fields; a `model:` block in the YAML; `--<field>` "
                                      "works too)")
    for name, help_text in model_fields().items():
        group.add_argument(f"--model.{name}", f"--{name}", dest=f"model.{name}", type=parse_value,
                           default=argparse.SUPPRESS, help=help_text.replace("%", "%%"), metavar="VALUE")
    return parser


def yaml_defaults(parser, config_path):
    """The parser defaults a YAML config sets, each value checked by its option's own type (YAML values bypass
    argparse, so `max_steps: 1.5` would otherwise reach the Trainer). A `model:` block holds config fields."""
    if not os.path.isfile(config_path):
        parser.error(f"config file not found: {config_path}")
    try:
        with open(config_path) as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as error:
        parser.error(f"{config_path} is not valid YAML ({' '.join(str(error).split())})")
    config = {} if config is None else config
    if not isinstance(config, dict):
        parser.error(f"{config_path} must be a YAML mapping of option: value (got {type(config).__name__})")
    model_block = config.pop("model", None) or {}
    if not isinstance(model_block, dict):
        parser.error(f"{config_path}: `model` must be a mapping of RecursiveLatentConfig fields")
    fields = model_fields()
    unknown = sorted(set(model_block) - set(fields))
    if unknown:
        parser.error(f"unknown model field(s) in {config_path}: {', '.join(unknown)} (fields: {', '.join(fields)})")
    actions = {action.dest: action for action in parser._actions}
    defaults = {f"model.{name}": parse_value(value) for name, value in model_block.items()}
    for key, value in config.items():
        dest = f"model.{key}" if key in fields else key  # an old flat key that is a config field
        if dest not in actions:
            hint = " (set by the trainer)" if key in TRAINER_SET_FIELDS else ""
            parser.error(f"unknown key in {config_path}: {key}{hint}")
        action = actions[dest]
        values = value if isinstance(value, list) else [value]
        if action.type is not None and value is not None and not isinstance(value, dict):
            try:
                typed = [action.type(str(v)) if action.type is not parse_value else parse_value(v) for v in values]
            except (TypeError, ValueError):
                parser.error(f"{config_path}: {key}: invalid value {value!r}")
            value = typed if isinstance(value, list) else typed[0]
        defaults[dest] = value
    defaults.setdefault("output_dir", os.path.join("outputs", Path(config_path).stem))
    return defaults


@dataclass
class RunArguments:
    model: ModelArguments
    data: DataArguments
    recursion: RecursionArguments
    training: TrainingArguments
    model_config: dict  # the RecursiveLatentConfig fields set by the YAML or the command line
    config_path: str | None
    argv: list


def parse_arguments(argv=None):
    """`--config FILE.yaml` sets defaults; any `--key value` after it overrides them. Every bad value is a one-line
    parser error (exit 2), before anything is built or written."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    rest, config_path = list(argv), None
    if "--config" in rest:
        index = rest.index("--config")
        if index + 1 >= len(rest):
            parser.error("--config needs a YAML file")
        config_path = rest[index + 1]
        del rest[index : index + 2]
        parser.set_defaults(**yaml_defaults(parser, config_path))
    try:
        *outputs, remaining = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
        if remaining:
            parser.error(f"unrecognized arguments: {' '.join(remaining)}")
        model_args, data_args, recursion_args, training_args, *extra = outputs
        check_training_arguments(training_args)
    except ValueError as error:
        parser.error(" ".join(str(error).split()))
    model_config = {key.removeprefix("model."): value for key, value in vars(extra[0]).items()} if extra else {}
    return RunArguments(model_args, data_args, recursion_args, training_args, model_config, config_path, argv)


def command_line(script, argv=None):
    """The command that ran `trainers/<script>` with `argv`, as recorded in a checkpoint's training_config.yaml."""
    return " ".join(["python", f"trainers/{script}", *(sys.argv[1:] if argv is None else argv)])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic writes, and resuming from the newest complete one
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_step(path):
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def missing_files(checkpoint, needs):
    """What a resume would read but `checkpoint` lacks (or holds unreadable), as short reasons."""
    reasons = [f"no {name}" for name in needs if not (Path(checkpoint) / name).is_file()]
    state = Path(checkpoint) / "trainer_state.json"
    if state.is_file():
        try:
            json.loads(state.read_text())
        except ValueError:
            reasons.append("trainer_state.json is not valid JSON")
    return reasons


def resume_needs(run):
    """The files a resume of this run reads from a checkpoint."""
    needs = ["config.json", "model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt"]
    needs.append("rng_state.pth" if run.training.world_size == 1 else f"rng_state_{run.training.process_index}.pth")
    if run.recursion.curriculum:
        needs.append(CURRICULUM_FILE)
    if run.recursion.ema_decay:
        needs.append(EMA_FILE)
    return needs


def resolve_resume(run):
    """The checkpoint to resume from: a path as given (it must be complete), or for `latest` the newest complete
    `checkpoint-N`, saying which ones it skipped and why; None (train from scratch, said) when there is none."""
    resume = run.training.resume_from_checkpoint
    if not resume:
        return None
    needs = resume_needs(run)
    if resume not in ("last", "latest", "True", "true"):
        if not os.path.isfile(os.path.join(resume, "config.json")):
            raise SystemExit(f"error: --resume_from_checkpoint {resume} is not a checkpoint directory")
        reasons = missing_files(resume, needs)
        if reasons:
            raise SystemExit(f"error: --resume_from_checkpoint {resume} is incomplete ({', '.join(reasons)})")
        return resume
    out = Path(run.training.output_dir)
    found = sorted((p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if checkpoint_step(p) is not None),
                   key=checkpoint_step, reverse=True) if out.is_dir() else []
    for checkpoint in found:
        reasons = missing_files(checkpoint, needs)
        if not reasons:
            print(f"[resume] from {checkpoint}")
            return str(checkpoint)
        print(f"[resume] skipping {checkpoint}: {', '.join(reasons)}")
    print(f"[resume] no complete checkpoint in {out}: training from scratch")
    return None


def commit_directory(staged, target):
    """Move a fully written folder into place: after this, `target` is the new folder, whole. A kill before the
    rename leaves the old `target` (or none); the rename itself is atomic on one filesystem."""
    target = Path(target)
    if target.exists():
        # A re-save of the same step (a resumed run): move the old one aside first, then drop it.
        trash = Path(staged).parent / f"old-{target.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(target, trash)
        os.replace(staged, target)
        shutil.rmtree(trash)
    else:
        os.replace(staged, target)
    descriptor = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def drop_old_checkpoints(output_dir, limit, keep=None):
    """`save_total_limit`: remove the oldest checkpoints, each renamed into the staging folder first so that a kill
    mid-removal never leaves a half-deleted `checkpoint-N` behind."""
    if not limit:
        return
    checkpoints = sort_checkpoints(output_dir)  # oldest first, by step
    doomed = [c for c in checkpoints[: max(len(checkpoints) - limit, 0)] if c != keep]
    for checkpoint in doomed:
        trash = Path(output_dir, STAGING_DIR, f"old-{Path(checkpoint).name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(checkpoint, trash)
        shutil.rmtree(trash)


# ----------------------------------------------------------------------------------------------------------------
# Curriculum, EMA and trainers
# ----------------------------------------------------------------------------------------------------------------


def write_train_results(final_dir, train_output, train_data):
    """`train_results.json`, read by the benchmarks: the Trainer's metrics and the hops the curriculum reached, which
    may fall short of --max_hops (the trained range)."""
    metrics = {**train_output.metrics, "trained_max_hops": train_data.max_hops}
    Path(final_dir, "train_results.json").write_text(json.dumps(metrics, indent=2))


class CurriculumCallback(TrainerCallback):
    """Raises the training max hops (steps) by one when the sequence accuracy of recent batches (summed over ranks)
    passes the threshold. Its state is saved inside every checkpoint, so a resumed run continues the same stage."""

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
            totals = totals.to(args.device)
            torch.distributed.all_reduce(totals)
        accuracy = (totals[0] / totals[1].clamp(min=1)).item()
        self.correct, self.count = 0, 0
        if accuracy >= self.args.curriculum_threshold:
            self.dataset.max_hops += 1
            if state.is_world_process_zero:
                print(f"[curriculum] step {state.global_step}: sequence accuracy {accuracy:.3f} -> max hops "
                      f"{self.dataset.max_hops}")

    def save(self, checkpoint_dir):
        state = {"max_hops": self.dataset.max_hops, "correct": self.correct, "count": self.count}
        Path(checkpoint_dir, CURRICULUM_FILE).write_text(json.dumps(state))

    def restore(self, checkpoint_dir):
        state = json.loads(Path(checkpoint_dir, CURRICULUM_FILE).read_text())
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

    def save(self, checkpoint_dir):
        save_file({name: t.detach().cpu().contiguous() for name, t in self.shadow.items()},
                  Path(checkpoint_dir, EMA_FILE))

    def restore(self, checkpoint_dir):
        for name, tensor in load_file(Path(checkpoint_dir, EMA_FILE)).items():
            self.shadow[name].copy_(tensor)


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
    """Stage 2: the loop-supervision loss, the curriculum's accuracy feed, exact-match evaluation per number of
    steps, and atomic checkpoints that carry the curriculum and EMA state with the Trainer's own."""

    def __init__(self, *args, recursion_args=None, curriculum=None, ema=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.recursion_args, self.curriculum, self.ema = recursion_args, curriculum, ema
        self.staging = False

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
        """Exact match of `reason()` per number of steps on the validation examples, and over all of them."""
        model = self.accelerator.unwrap_model(self.model)
        examples = eval_dataset if eval_dataset is not None else self.eval_dataset
        with self.averaged_weights():
            results = evaluate_examples(model, self.processing_class, examples)["per_steps"]
        model.train()
        metrics = {f"{metric_key_prefix}_exact_match_hop_{h}": r["answer_exact_match"] for h, r in results.items()}
        metrics |= {f"{metric_key_prefix}_trace_match_hop_{h}": r["trace_exact_match"] for h, r in results.items()}
        right = sum(r["answer_exact_match"] * r["n"] for r in results.values())
        metrics[f"{metric_key_prefix}_exact_match"] = right / sum(r["n"] for r in results.values())
        self.log(metrics)
        if self.is_world_process_zero():
            print("[eval] step", self.state.global_step, " ".join(
                f"{h}:{r['answer_exact_match']:.3f}/{r['trace_exact_match']:.3f}" for h, r in results.items()))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _get_output_dir(self, trial):
        # While a checkpoint is being written, the Trainer writes it under the staging folder (see _save_checkpoint).
        return os.path.join(self.args.output_dir, STAGING_DIR) if self.staging else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint plus our state (curriculum, EMA), written whole into the staging folder and then
        renamed into place: `checkpoint-N` is complete or absent, wherever the run is killed."""
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = Path(self.args.output_dir, STAGING_DIR, name)
        self.staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.staging = False
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            if self.curriculum is not None:
                self.curriculum.save(staged)
            if self.ema is not None:
                self.ema.save(staged)
            commit_directory(staged, Path(self.args.output_dir, name))
            best = self.state.best_model_checkpoint
            if best is not None and STAGING_DIR in Path(best).parts:
                self.state.best_model_checkpoint = str(Path(self.args.output_dir, Path(best).name))
            drop_old_checkpoints(self.args.output_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

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
        return dict(
            model_type="gpt2", vocab_size=len(tokenizer), n_positions=model_args.backbone_max_positions,
            n_embd=model_args.backbone_hidden_size, n_layer=model_args.backbone_num_layers,
            n_head=model_args.backbone_num_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            # The exact (erf) GELU instead of GPT-2's tanh approximation: a backbone trained from scratch has no
            # reason to approximate, and on the CPU its forward + backward takes half the time of the fused tanh op.
            activation_function="gelu", **special,
        )
    width = model_args.backbone_hidden_size
    return dict(
        model_type="mamba2", vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=model_args.backbone_num_layers,
        expand=2, head_dim=2 * width // model_args.backbone_num_heads, num_heads=model_args.backbone_num_heads,
        n_groups=1, state_size=model_args.mamba_state_size, chunk_size=model_args.mamba_chunk_size, **special,
    )


def build_model(model_args, model_config, tokenizer, base_lane):
    """A new model: the config fields the run sets (`model_config`), the halt token from the tokenizer, the base
    lane from the data, and a backbone built from `model_args` or loaded from `backbone_name_or_path`."""
    kwargs = dict(model_config, halt_token_id=tokenizer.convert_tokens_to_ids(HALT_TOKEN), base_lane=base_lane)
    if model_args.backbone_name_or_path:
        return RecursiveLatentForCausalLM.from_backbone(
            model_args.backbone_name_or_path, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **kwargs
        )
    return RecursiveLatentForCausalLM(RecursiveLatentConfig(backbone_config=backbone_config(model_args, tokenizer), **kwargs))


def load_trained(path, model_config):
    """A trained checkpoint to continue from. Switches that only add to it apply: more `max_loops`, `halt_head`
    adds a new halting head, and `halting` (the rest of the model keeps its trained weights)."""
    config = RecursiveLatentConfig.from_pretrained(path)
    config.max_loops = max(config.max_loops, model_config.get("max_loops", config.max_loops))
    config.halt_head = config.halt_head or model_config.get("halt_head", False)
    config.halting = model_config.get("halting", config.halting)
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


# ----------------------------------------------------------------------------------------------------------------
# Setup: data, tokenizer, model and every check, before anything trains or is written
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    args: RunArguments
    tokenizer: object
    model: RecursiveLatentForCausalLM
    train_examples: list | None  # file data; None with the generator
    validation: list | None
    data_source: dict
    resume: str | None
    continues_lane: bool

    @property
    def training(self):
        return self.args.training

    @property
    def recursion(self):
        return self.args.recursion


def load_file_data(data_args):
    """Training and validation examples of `--train_file` / `--validation_file` / `--dataset_name`, checked."""
    try:
        if data_args.train_file is not None:
            train = load_examples(data_args.train_file)
            validation = load_examples(data_args.validation_file) if data_args.validation_file else None
        else:
            train = load_examples(data_args.dataset_name, split="train")
            try:
                validation = load_examples(data_args.validation_file or data_args.dataset_name, split="validation")
            except ExampleError:
                if data_args.validation_file:
                    raise
                validation = None
    except ExampleError as error:
        raise SystemExit(f"error: {error}") from None
    for examples in (train, validation or []):
        for example in examples:
            example["lane"] = example["lane"] or data_args.lane
    return train, validation


def describe_data(data_args, train, validation):
    """What the model card says about the training data."""
    if train is None:
        return {"source": "generator", "generator": "dataset_scripts.hop_chains", "lane": data_args.lane,
                "variant": data_args.variant, "hops": [data_args.min_hops, data_args.max_hops],
                "distractors": [data_args.min_distractors, data_args.max_distractors],
                "distractor_hops": [data_args.min_distractor_hops, data_args.max_distractor_hops],
                "mix_arith": data_args.mix_arith}
    source = data_args.train_file or data_args.dataset_name
    described = {"source": "file" if data_args.train_file else "dataset", "train": source, "train_examples": len(train),
                 "steps": [min(len(e["trace"]) for e in train), max(len(e["trace"]) for e in train)],
                 "example_question": (validation or train)[0]["question"]}
    if data_args.train_file:
        described["train_sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    if validation is not None:
        described |= {"validation": data_args.validation_file or source, "validation_examples": len(validation)}
    return described


def task_tokenizer(model_args, train):
    """The checkpoint's tokenizer (--init_from), the pretrained backbone's (with `<HALT>`), or the word-level one:
    over the training file's words, or the hop chains' fixed vocabulary for the generator."""
    if model_args.init_from or model_args.backbone_name_or_path:
        return load_tokenizer(model_args.init_from or model_args.backbone_name_or_path)
    return build_tokenizer(vocabulary_from_examples(train) if train is not None else None)


def setup(args):
    """Load the data, build the tokenizer and the model, and check the run as a whole. Raises SystemExit with a
    one-line message on anything that would fail later; writes nothing."""
    model_args, data_args, recursion = args.model, args.data, args.recursion
    train, validation = load_file_data(data_args) if data_args.from_files else (None, None)
    tokenizer = task_tokenizer(model_args, train)
    targets = LoopTargets(tokenizer)
    for index, example in enumerate(train or []):
        try:
            targets.ids(example["trace"], index)
        except ExampleError as error:
            raise SystemExit(f"error: {data_args.train_file or data_args.dataset_name}: {error}") from None

    torch.manual_seed(args.training.seed)
    try:
        if model_args.init_from is None:
            lanes = {example["lane"] for example in train} if train is not None else {data_args.lane}
            # A model trained from scratch is its lane's base model: no adapter.
            model = build_model(model_args, args.model_config, tokenizer, lanes.pop() if len(lanes) == 1 else None)
        else:
            model = load_trained(model_args.init_from, args.model_config)
    except ValueError as error:  # the config's own checks
        raise SystemExit(f"error: {' '.join(str(error).split())}") from None
    config = model.config
    if config.halting == "fixed" and not 1 <= config.fixed_loops <= config.max_loops:
        raise SystemExit(f"error: fixed_loops must be in 1..max_loops ({config.max_loops}), got {config.fixed_loops}")
    longest = (max(len(e["trace"]) for e in train) if train is not None else data_args.max_hops)
    longest += 1 + recursion.extra_loops
    if config.halting != "fixed" and longest > config.max_loops:
        raise SystemExit(f"error: max_loops {config.max_loops} is too few for {longest - 1 - recursion.extra_loops} "
                         f"steps + <HALT> + {recursion.extra_loops} extra loops: give --max_loops {longest}")
    if model_args.init_from and data_args.mix_arith:
        raise SystemExit("error: --mix_arith trains a new pointer model's shared weights; it does not apply to --init_from")
    if validation is None and train is not None and args.training.eval_strategy != "no":
        print("[eval] no validation examples (--validation_file): evaluation is off")
        args.training.eval_strategy = "no"
    resume = resolve_resume(args) if args.training.resume_from_checkpoint else None
    lane_run = data_args.lane is not None and data_args.lane != config.base_lane
    if resume and args.model_config.get("backbone_mode") == "lora":
        raise SystemExit("error: resuming a `lora` run is not supported (checkpoints hold merged weights)")
    if resume and model_args.init_from and lane_run:
        raise SystemExit("error: resuming a lane run is not supported; restart it from --init_from")
    push_to = args.training.hub_model_id if args.training.push_to_hub else None
    if args.training.push_to_hub and push_to is None:
        raise SystemExit("error: --push_to_hub needs --hub_model_id user/name")
    if push_to and (args.training.hub_token or get_token()) is None:
        raise SystemExit("error: --push_to_hub needs a Hugging Face token: log in with `hf auth login` or set HF_TOKEN")

    continues_lane = data_args.lane in config.lane_adapters
    if lane_run:
        add_lane_adapter(model, data_args.lane, model_args)
    if validation is None and train is None:
        validation = generated_validation(data_args, task_words(tokenizer))
    return Run(args, tokenizer, model, train, validation, describe_data(data_args, train, validation), resume,
               continues_lane)


def training_stream(run, size, seed, max_hops, curriculum=False, **options):
    """The run's training examples: the generator's stream, or the file's examples (with the curriculum's knob)."""
    if run.train_examples is None:
        return HopChainStream(run.args.data, task_words(run.tokenizer), size, seed=seed, max_hops=max_hops, **options)
    return ExampleStream(run.train_examples, max_hops if curriculum else None)


# ----------------------------------------------------------------------------------------------------------------
# Stage 1, stage 2, save
# ----------------------------------------------------------------------------------------------------------------


def pretrain_backbone(run):
    """Stage 1: a backbone built from config knows nothing; train it as an LM on the task's text, then freeze it."""
    model, args = run.model, run.training
    core = [p for p in model.parameters() if p.requires_grad]
    model.model.backbone.requires_grad_(True)
    if model.model.binding is not None:
        model.model.binding.requires_grad_(True)
    for p in core:
        p.requires_grad_(False)
    stage1_args = copy.deepcopy(args)
    stage1_args.max_steps, stage1_args.learning_rate = run.recursion.pretrain_steps, run.recursion.pretrain_learning_rate
    stage1_args.save_strategy, stage1_args.eval_strategy, stage1_args.report_to = "no", "no", []
    stage1_args.load_best_model_at_end = False
    size = run.recursion.pretrain_steps * args.per_device_train_batch_size * args.world_size
    data = training_stream(run, size, seed=args.seed + 1, max_hops=1, fixed_hops=run.recursion.pretrain_hops)
    BackboneLMTrainer(model=model, args=stage1_args, train_dataset=data, data_collator=lm_collator(run.tokenizer),
                      recursion_args=run.recursion).train()
    for p in core:
        p.requires_grad_(True)
    model.model.freeze_backbone()


def train_core(run):
    """Stage 2: the looped core (and a `full` backbone) under loop supervision. Returns the trainer and its output."""
    args, recursion, data_args, model = run.training, run.recursion, run.args.data, run.model
    final_hops = data_args.max_hops if run.train_examples is None else max(len(e["trace"]) for e in run.train_examples)
    start_hops = min(recursion.curriculum_start_hops, final_hops) if recursion.curriculum else final_hops
    size = args.max_steps * args.per_device_train_batch_size * args.world_size
    train_data = training_stream(run, size, seed=args.seed, max_hops=start_hops, curriculum=recursion.curriculum,
                                 extra_loops=recursion.extra_loops)
    curriculum = CurriculumCallback(train_data, recursion, final_hops) if recursion.curriculum else None
    ema = WeightEMA(model, recursion.ema_decay) if recursion.ema_decay else None
    callbacks = [callback for callback in (curriculum, ema) if callback is not None]
    if recursion.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(recursion.early_stopping_patience))
    if run.resume:
        for state in (curriculum, ema):
            if state is not None:
                state.restore(run.resume)

    if args.process_index == 0:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        lane = data_args.lane
        what = f"lane `{lane}` adapter" if lane is not None and lane != model.config.base_lane else \
            f"{model.config.backbone_mode} backbone"
        print(f"[model] {total:,} parameters, {trainable:,} trainable ({what})")
        if run.continues_lane:
            print(f"[lane] training the checkpoint's `{lane}` adapter on (rank {model.peft_config[lane].r}; "
                  f"--lane_r and --lane_alpha apply to new adapters only)")
    # Fixed-depth training (Ouro/Huginn): no path targets, no <HALT>, only the answer at the last loop.
    fixed_loops = model.config.fixed_loops if model.config.halting == "fixed" else None
    trainer = RLFTrainer(
        model=model, args=args, train_dataset=train_data, eval_dataset=run.validation, processing_class=run.tokenizer,
        data_collator=LoopLabelCollator(run.tokenizer, answer_only_loops=fixed_loops), callbacks=callbacks,
        recursion_args=recursion, curriculum=curriculum, ema=ema,
    )
    return trainer, trainer.train(resume_from_checkpoint=run.resume), train_data


def run_record(run):
    """training_config.yaml: how the run was started, so that it can be repeated and described."""
    args = run.args
    return {"command": command_line("rlf.py", args.argv), "model": asdict(args.model), "model_config": args.model_config,
            "data": asdict(args.data), "data_source": run.data_source, "recursion": asdict(args.recursion),
            "config_file": args.config_path, "seed": args.training.seed}


def save_final(run, trainer, train_output, train_data):
    """`<output_dir>/final`, written whole in the staging folder and renamed into place: the (EMA) weights, the
    tokenizer (its `model_max_length` what the model reads), the run's record, its results and the model card."""
    final_dir = Path(run.training.output_dir, "final")
    staged = Path(run.training.output_dir, STAGING_DIR, "final")
    shutil.rmtree(staged, ignore_errors=True)
    with trainer.averaged_weights():
        trainer.save_model(str(staged))
    if not trainer.is_world_process_zero():
        return final_dir
    (staged / "training_args.bin").unlink(missing_ok=True)  # pickled and redundant with training_config.yaml
    run.tokenizer.model_max_length = run.model.config.max_prompt_tokens or int(1e30)
    run.tokenizer.save_pretrained(staged)
    Path(staged, "training_config.yaml").write_text(Path(run.training.output_dir, "training_config.yaml").read_text())
    write_train_results(staged, train_output, train_data)
    write_model_card(staged)
    commit_directory(staged, final_dir)
    print(f"[done] final checkpoint in {final_dir}")
    return final_dir


def push_final(run, final_dir):
    push_to = run.training.hub_model_id
    try:
        info = push_checkpoint(final_dir, push_to, token=run.training.hub_token,
                               private=run.training.hub_private_repo or False)
    except HubPushError as error:
        raise SystemExit(f"error: {error}. The final checkpoint is saved in {final_dir}; push it later with: "
                         f"python -m recursive_latent.hub push {final_dir} {push_to}") from None
    print(f"[hub] pushed {final_dir} to {push_to}: {info.commit_url}")


def main(argv=None):
    args = parse_arguments(argv)
    run = setup(args)
    training = run.training
    training.remove_unused_columns = False  # batches carry questions and traces, not just forward() arguments
    # The final checkpoint is pushed once, with its card; the Trainer's own push would sync every checkpoint.
    push_to_hub = training.push_to_hub
    training.push_to_hub = False
    staging = Path(training.output_dir, STAGING_DIR)
    if staging.is_dir():
        print(f"[checkpoints] removing {staging}: half-written checkpoints of an interrupted run")
        shutil.rmtree(staging)
    if training.process_index == 0:
        os.makedirs(training.output_dir, exist_ok=True)
        Path(training.output_dir, "training_config.yaml").write_text(yaml.safe_dump(run_record(run), sort_keys=False))

    pretrained = args.model.backbone_name_or_path or args.model.init_from
    if not pretrained and run.model.config.backbone_mode != "full" and not run.resume and run.recursion.pretrain_steps:
        pretrain_backbone(run)
    if args.model_config.get("backbone_mode") == "lora":  # also on a frozen --init_from checkpoint
        add_lora(run.model, args.model)
    trainer, train_output, train_data = train_core(run)

    # Data-parallel ranks must end with the same weights; each prints a digest so runs (and tests) can check.
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in run.model.parameters())).hexdigest()
    print(f"[rank {training.process_index}] world size {training.world_size} weights digest {digest[:16]}")
    final_dir = save_final(run, trainer, train_output, train_data)
    if push_to_hub and trainer.is_world_process_zero():
        push_final(run, final_dir)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the process group down on every rank together: a rank that exits with it alive can abort at exit.
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
