"""Recursive Latent Forcing: train a RecursiveLatent model, supervising every loop.

    python trainers/rlf.py --config trainers/configs/default.yaml [--key value ...]
    python trainers/rlf.py --config trainers/configs/default.yaml --train_file F.json [--validation_file V.json]
    accelerate launch trainers/rlf.py --config trainers/configs/default.yaml
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        trainers/rlf.py --config trainers/configs/default.yaml          # 2-process data parallel on the CPU

Options (`trainers/arguments.py`) come in four groups: the model (every `RecursiveLatentConfig` field, as
`--model.<field>` or a `model:` block of the YAML; the short `--<field>` also works), how the backbone is built, the
data and the recursion schedule, and any `TrainingArguments` field. Data: the built-in hop-chain generator (default),
or examples of the package's format (`recursive_latent.examples`) from `--train_file` / `--validation_file` (JSON or
JSONL) or `--dataset_name` (a Hub dataset id or a `save_to_disk` directory).

`main` reads top to bottom: setup (data, tokenizer, model, every check; nothing written), stage 1 (without
pretrained backbone weights, a `frozen` or `lora` run first trains the tiny backbone as a language model on the task's
text), stage 2 (the looped core under loop supervision), then the final checkpoint and the push. Output:
`<output_dir>/checkpoint-*` and `<output_dir>/final`, each a complete remote-code checkpoint, written atomically
(`trainers/checkpoints.py`).
"""

import copy
import hashlib
import os
import shutil
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from huggingface_hub import get_token
from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

if __package__ in (None, ""):  # run as `python trainers/rlf.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset_scripts.collator import LoopLabelCollator  # noqa: E402
from dataset_scripts.prosqa import CURRICULUM, VOCABULARY, trace_length  # noqa: E402
from dataset_scripts.sources import (  # noqa: E402
    ExampleStream, HopChainStream, ProsQAStream, generated_prosqa_validation, generated_validation, lm_collator,
    parse_prompt_stage,
)
from dataset_scripts.tokenizer import build_tokenizer, load_tokenizer, task_words, vocabulary_from_examples  # noqa: E402
from model_cards.generate import write_model_card  # noqa: E402
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM  # noqa: E402
from recursive_latent.evaluation import evaluate_examples, machine_facts  # noqa: E402
from recursive_latent.examples import HALT_TOKEN, ExampleError, LoopTargets, load_examples  # noqa: E402
from recursive_latent.hub import HubPushError, push_checkpoint  # noqa: E402
from recursive_latent.optimization import muon_with_adamw  # noqa: E402
from trainers.arguments import (  # noqa: E402
    DataArguments, ModelArguments, RecursionArguments, RunArguments, command_line, parse_arguments,
)
from trainers.checkpoints import (  # noqa: E402
    STAGING_DIR, BackboneFreezeCallback, CurriculumCallback, PromptStageCallback, TrainingClock, WeightEMA,
    commit_directory, drop_old_checkpoints, resolve_resume, save_tokenizer, write_train_results, writing_final,
)

__all__ = ["DataArguments", "HopChainStream", "ModelArguments", "RecursionArguments", "main"]


# ----------------------------------------------------------------------------------------------------------------
# Trainers: stage 1 (the backbone as an LM) and stage 2 (loop supervision)
# ----------------------------------------------------------------------------------------------------------------


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


class StreamTrainer(Trainer):
    """A Trainer that reads a generated stream that groups its own batches by prompt length (`group_by_length` on
    `HopChainStream`) in order; any other dataset gets the Trainer's own sampler."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if getattr(dataset, "batch_size", None) is not None:
            return torch.utils.data.SequentialSampler(dataset)
        return super()._get_train_sampler(train_dataset)


class BackboneLMTrainer(StreamTrainer):
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


class RLFTrainer(StreamTrainer):
    """Stage 2: the loop-supervision loss, the curriculum's accuracy feed, exact-match evaluation per number of
    steps, and atomic checkpoints that carry the curriculum, EMA and training-time state with the Trainer's own."""

    def __init__(self, *args, recursion_args=None, curriculum=None, ema=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.recursion_args, self.curriculum, self.ema = recursion_args, curriculum, ema
        self.clock = TrainingClock()
        self.add_callback(self.clock)
        self.staging = False

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            self.clock.restore(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

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
            labels = labels if labels.dim() == 3 else labels[..., None]  # (B, L, set size)
            said = outputs.loop_logits.argmax(-1)[..., None]
            right = (said == labels).any(-1) | (labels == -100).all(-1)  # a set member, or nothing to say
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
        seconds = self.clock.elapsed()
        if seconds is not None:  # wall seconds of training so far (evaluations included), for curves against time
            metrics[f"{metric_key_prefix}_train_seconds"] = seconds
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
            self.clock.save(staged)
            commit_directory(staged, Path(self.args.output_dir, name))
            best = self.state.best_model_checkpoint
            if best is not None and STAGING_DIR in Path(best).parts:
                self.state.best_model_checkpoint = str(Path(self.args.output_dir, Path(best).name))
            drop_old_checkpoints(self.args.output_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict=state_dict if state_dict is not None else merged_state_dict(self.model))
        if self.is_world_process_zero():
            output_dir = Path(output_dir or self.args.output_dir)
            # Written in the staging folder: the card names the place the checkpoint is renamed to.
            location = Path(*(part for part in output_dir.parts if part != STAGING_DIR))
            write_model_card(output_dir, location=location)


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


def load_file_data(data_args, validation_only=False):
    """Training and validation examples of `--train_file` / `--validation_file` / `--dataset_name`, checked (only the
    validation examples with `validation_only`)."""
    try:
        if validation_only:
            return load_examples(data_args.validation_file)
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
    if train is None and data_args.task == "prosqa":
        return {"source": "generator", "generator": "dataset_scripts.prosqa", "lane": data_args.lane,
                "supervision": data_args.prosqa_supervision, "curriculum": [list(stage) for stage in CURRICULUM],
                "replay": data_args.prosqa_replay, "large_graphs": data_args.prosqa_large_graphs,
                "even_depths": data_args.prosqa_even_depths,
                "validation": data_args.validation_file}
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


def task_tokenizer(model_args, data_args, train):
    """The checkpoint's tokenizer (--init_from), the pretrained backbone's (with `<HALT>`), or the word-level one:
    over the training file's words, or the generator's fixed vocabulary."""
    if model_args.init_from or model_args.backbone_name_or_path:
        return load_tokenizer(model_args.init_from or model_args.backbone_name_or_path)
    if train is not None:
        return build_tokenizer(vocabulary_from_examples(train))
    return build_tokenizer(VOCABULARY if data_args.task == "prosqa" else None)


def longest_trace(data_args, train):
    """The most steps a training example of this run may have (the curriculum's last stage)."""
    if train is not None:
        return max(len(e["trace"]) for e in train)
    if data_args.task == "prosqa":
        return trace_length(max(CURRICULUM[-1][1]), data_args.prosqa_supervision)
    return data_args.max_hops


def setup(args):
    """Load the data, build the tokenizer and the model, and check the run as a whole. Raises SystemExit with a
    one-line message on anything that would fail later; writes nothing."""
    model_args, data_args, recursion = args.model, args.data, args.recursion
    train, validation = load_file_data(data_args) if data_args.from_files else (None, None)
    tokenizer = task_tokenizer(model_args, data_args, train)
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
    stage_walks = [walks[1] for *_, walks in map(parse_prompt_stage, data_args.prompt_stages) if walks]
    longest = max([longest_trace(data_args, train), *stage_walks]) + 1 + recursion.extra_loops
    if config.halting != "fixed" and longest > config.max_loops:
        raise SystemExit(f"error: max_loops {config.max_loops} is too few for {longest - 1 - recursion.extra_loops} "
                         f"steps + <HALT> + {recursion.extra_loops} extra loops: give --max_loops {longest}")
    if recursion.freeze_backbone_from and (config.backbone_mode != "full" or args.training.world_size > 1):
        raise SystemExit(f"error: --freeze_backbone_from stops a `full` backbone's training in a single process "
                         f"(this run: `{config.backbone_mode}` backbone, {args.training.world_size} processes)")
    if args.training.train_sampling_strategy == "group_by_length" and (train is not None or data_args.task == "prosqa"):
        raise SystemExit("error: --train_sampling_strategy group_by_length applies to generated hop chains; a file's "
                         "or ProsQA's examples train in random order (give --train_sampling_strategy random)")
    if data_args.stage_grouped_batches > 1 and (args.training.train_sampling_strategy != "group_by_length"
                                                or not data_args.prompt_stages):
        raise SystemExit("error: --stage_grouped_batches groups the --prompt_stages of a run with "
                         "--train_sampling_strategy group_by_length; this run has no such stages to group")
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
    if data_args.validation_file and train is None:  # a generator's run validated on a file
        validation = load_file_data(data_args, validation_only=True)
    elif validation is None and train is None:
        validation = (generated_prosqa_validation(data_args) if data_args.task == "prosqa"
                      else generated_validation(data_args, task_words(tokenizer)))
    return Run(args, tokenizer, model, train, validation, describe_data(data_args, train, validation), resume,
               continues_lane)


def training_stream(run, size, seed, max_hops, curriculum=False, **options):
    """The run's training examples: a generator's stream, or the file's examples (with the curriculum's knob)."""
    data_args = run.args.data
    if run.train_examples is not None:
        return ExampleStream(run.train_examples, max_hops if curriculum else None)
    if data_args.task == "prosqa":
        return ProsQAStream(size, seed, max_hops, data_args.prosqa_supervision, data_args.prosqa_replay,
                            data_args.prosqa_large_graphs, data_args.prosqa_even_depths)
    grouped = run.training.train_sampling_strategy == "group_by_length"
    batch_size = run.training.per_device_train_batch_size if grouped else None
    return HopChainStream(data_args, task_words(run.tokenizer), size, seed=seed, max_hops=max_hops,
                          batch_size=batch_size, **options)


def final_stage(run):
    """The curriculum's last `max_hops`: the most steps of the data, or the generator's last stage."""
    if run.args.data.task == "prosqa" and run.train_examples is None:
        return len(CURRICULUM)
    return longest_trace(run.args.data, run.train_examples)


def core_training_data(run, **options):
    """Stage 2's training data and its hop curriculum (None without one), the curriculum restored from the checkpoint
    a run resumes."""
    args, recursion = run.training, run.recursion
    final_hops = final_stage(run)
    start_hops = min(recursion.curriculum_start_hops, final_hops) if recursion.curriculum else final_hops
    size = args.max_steps * args.per_device_train_batch_size * args.world_size
    train_data = training_stream(run, size, seed=args.seed, max_hops=start_hops, curriculum=recursion.curriculum,
                                 **options)
    curriculum = CurriculumCallback(train_data, recursion, final_hops) if recursion.curriculum else None
    if curriculum is not None and run.resume:
        curriculum.restore(run.resume)
    return train_data, curriculum


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
    # LM text: hop chains of `pretrain_hops` hops, a file's examples, or ProsQA graphs of the published size.
    stage = final_stage(run) if run.args.data.task == "prosqa" else 1
    data = training_stream(run, size, seed=args.seed + 1, max_hops=stage, fixed_hops=run.recursion.pretrain_hops)
    BackboneLMTrainer(model=model, args=stage1_args, train_dataset=data, data_collator=lm_collator(run.tokenizer),
                      recursion_args=run.recursion).train()
    for p in core:
        p.requires_grad_(True)
    model.model.freeze_backbone()


def train_core(run):
    """Stage 2: the looped core (and a `full` backbone) under loop supervision. Returns the trainer and its output."""
    args, recursion, data_args, model = run.training, run.recursion, run.args.data, run.model
    train_data, curriculum = core_training_data(run, extra_loops=recursion.extra_loops)
    ema = WeightEMA(model, recursion.ema_decay) if recursion.ema_decay else None
    stages = PromptStageCallback(train_data) if getattr(train_data, "stages", None) else None
    freeze = BackboneFreezeCallback(model, recursion.freeze_backbone_from) if recursion.freeze_backbone_from else None
    callbacks = [callback for callback in (curriculum, ema, stages, freeze) if callback is not None]
    if recursion.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(recursion.early_stopping_patience))
    if run.resume and ema is not None:
        ema.restore(run.resume)

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
    """training_config.yaml: how the run was started and on what, so that it can be repeated and described."""
    args = run.args
    return {"command": command_line("rlf.py", args.argv), "model": asdict(args.model), "model_config": args.model_config,
            "data": asdict(args.data), "data_source": run.data_source, "recursion": asdict(args.recursion),
            "config_file": args.config_path, "seed": args.training.seed,
            "machine": machine_facts()}


def save_final(run, trainer, train_output, train_data):
    """`<output_dir>/final`, written whole in the staging folder and renamed into place: the (EMA) weights, the
    tokenizer, the run's record, its results and the model card."""
    output_dir = run.training.output_dir
    main_process = trainer.is_world_process_zero()
    with writing_final(output_dir, main_process) as staged:
        with trainer.averaged_weights():
            trainer.save_model(str(staged))
        if main_process:
            (staged / "training_args.bin").unlink(missing_ok=True)  # pickled and redundant with training_config.yaml
            save_tokenizer(run.tokenizer, run.model.config, staged)
            Path(staged, "training_config.yaml").write_text(Path(output_dir, "training_config.yaml").read_text())
            write_train_results(staged, train_output, train_data, trainer.clock)
            write_model_card(staged, location=Path(output_dir, "final"))
    return Path(output_dir, "final")


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
