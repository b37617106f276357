"""The trainer's options: how the model is built, the data, the recursion schedule and the Trainer's own, parsed
from a YAML config and the command line. The model's architecture is `RecursiveLatentConfig` itself: its fields are
options (`--model.<field>`, a `model:` block, or the older flat `--<field>`), documented once, in its docstring. Every
value is checked here, before anything is built, trained or written; a bad one is a one-line parser error."""

import argparse
import inspect
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dataset_scripts.hop_chains import ARITH_OPS, LANES, VARIANTS, check_arith_ops
from dataset_scripts.prosqa import LARGE_NUM_NODES, SUPERVISIONS
from dataset_scripts.sources import parse_prompt_stage
from recursive_latent import RecursiveLatentConfig
from trainers.checkpoints import STAGING_DIR

TASKS = ("hop_chains", "prosqa")  # the built-in generators
# Config fields the trainer fills in itself: from the backbone options, the tokenizer, the data and the lanes.
TRAINER_SET_FIELDS = ("backbone_config", "backbone_name_or_path", "halt_token_id", "base_lane", "lane_adapters")


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
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation examples, same format (also with a generator: then they replace "
                                        "its fresh validation prompts)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset id or a `save_to_disk` directory with a `train` (and "
                                        "optionally `validation`) split in the same format."}
    )
    task: str = field(
        default="hop_chains",
        metadata={"help": "The generator, without --train_file: `hop_chains` (variable lookup) or `prosqa` "
                          "(ProsQA-style concept graphs, dataset_scripts/prosqa.py, with a graph-size curriculum)."},
    )
    prosqa_supervision: str = field(
        default="frontier",
        metadata={"help": "`prosqa` loop targets: `frontier` (loop k holds every concept k steps from the person, "
                          "then the reached option), `frontier_walk` (the same, then a walk back along one shortest "
                          "path and the option again: the path is in the trace), `reachable` (every concept within k "
                          "steps), `path` (loop k names a node of any shortest path) or `steps` (the published "
                          "path's concepts, one word per loop, as chain of thought writes them)."},
    )
    prosqa_replay: float = field(default=0.25, metadata={"help": "`prosqa`: share of examples from earlier stages."})
    prosqa_large_graphs: float = field(
        default=0.0,
        metadata={"help": "`prosqa`: share of the last curriculum stage's examples grown larger than published "
                          f"({LARGE_NUM_NODES[0]}-{LARGE_NUM_NODES[1]} nodes, up to the deep test's sizes) at the "
                          "published 3-6 step paths."},
    )
    prosqa_even_depths: float = field(
        default=0.0,
        metadata={"help": "`prosqa`: share of the last curriculum stage's examples whose shortest path length is "
                          "drawn uniformly from the published 3-6 steps (the published mix is about 42/42/14/2%)."},
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
    prompt_stages: list[str] = field(
        default_factory=list,
        metadata={"help": "Longer prompts late in training (`shuffled` hop chains), one entry per stage, "
                          "`FROM:D_LO-D_HI:H_LO-H_HI[:W_LO-W_HI]`: from this fraction of the training steps on, "
                          "D_LO-D_HI distractor chains of H_LO-H_HI hops each (e.g. `0.8:2-16:1-8`), and walks of "
                          "W_LO-W_HI hops when given (else --min_hops..--max_hops, as before): the prompts grow "
                          "towards the test's, and the walks past the depth the run learned first."},
    )
    stage_grouped_batches: int = field(
        default=1,
        metadata={"help": "With --train_sampling_strategy group_by_length, the prompt stages' batches are grouped "
                          "in blocks of this many batches (1: not grouped): each block's fresh examples sorted by "
                          "prompt length and cut into batches. A pair of batches keeps each batch mixed (the short "
                          "half or the long half of the stage's prompts) and cuts the padding a batch pays for."},
    )
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
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)} (got {self.task!r})")
        if self.prosqa_supervision not in SUPERVISIONS:
            raise ValueError(f"--prosqa_supervision must be one of {', '.join(SUPERVISIONS)} "
                             f"(got {self.prosqa_supervision!r})")
        if not 0 <= self.prosqa_replay < 1:
            raise ValueError(f"--prosqa_replay must be in [0, 1) (got {self.prosqa_replay})")
        for name in ("prosqa_large_graphs", "prosqa_even_depths"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be in [0, 1] (got {getattr(self, name)})")
        prosqa_options = [f"--{f.name}" for f in fields(self)
                          if f.name.startswith("prosqa_") and getattr(self, f.name) != f.default]
        if prosqa_options and (self.task != "prosqa" or self.from_files):
            raise ValueError(f"{', '.join(prosqa_options)}: options of the ProsQA generator, which this run does "
                             "not use (it needs --task prosqa, without --train_file / --dataset_name)")
        if self.from_files and self.mix_arith:
            raise ValueError("--mix_arith mixes generated arith chains into generated data; it does not apply to "
                             "--train_file / --dataset_name")
        if self.task == "prosqa" and not self.from_files:
            self.lane = self.lane or "prosqa"
        elif not self.from_files:
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
                             f"apply to --lane {self.lane}")
        try:
            for stage in self.prompt_stages:
                parse_prompt_stage(stage)
        except ValueError:
            raise ValueError(f"--prompt_stages entries must read FROM:D_LO-D_HI:H_LO-H_HI[:W_LO-W_HI] with 0 <= FROM < 1 "
                             f"and 1 <= W_LO <= W_HI, e.g. 0.8:2-16:1-8 or 0.8:2-16:1-8:1-8 (got "
                             f"{' '.join(map(str, self.prompt_stages))})") from None
        if self.stage_grouped_batches < 1:
            raise ValueError(f"--stage_grouped_batches must be >= 1 (got {self.stage_grouped_batches})")
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
    freeze_backbone_from: float | None = field(
        default=None,
        metadata={"help": "Share of the training steps (0-1) from which a `full` backbone stops training: the last "
                          "steps then skip its backward pass (a Mamba2 scan's backward costs more than its forward)."},
    )

    def __post_init__(self):
        if self.core_optimizer not in ("adamw", "muon"):
            raise ValueError(f"--core_optimizer must be `adamw` or `muon` (got {self.core_optimizer!r})")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be between 0 and 1 (got {self.ema_decay})")
        if self.freeze_backbone_from is not None and not 0 < self.freeze_backbone_from < 1:
            raise ValueError(f"--freeze_backbone_from must be between 0 and 1 (got {self.freeze_backbone_from})")
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
    existing = next(parent for parent in [out.absolute(), *out.absolute().parents] if parent.exists())
    try:  # a real write (removed at once): permission bits say nothing for root or a read-only filesystem
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as error:
        raise ValueError(f"--output_dir {out} is not writable ({error.strerror} in {existing})") from None
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


class ArgumentParser(HfArgumentParser):
    def error(self, message):
        """One line, not the usage of a few hundred options."""
        self.exit(2, f"{self.prog}: error: {message} (--help lists every option)\n")


def build_parser():
    parser = ArgumentParser((ModelArguments, DataArguments, RecursionArguments, TrainingArguments))
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
    return shlex.join(["python", f"trainers/{script}", *(sys.argv[1:] if argv is None else argv)])
