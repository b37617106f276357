"""Training state on disk: checkpoints written atomically (whole or absent, wherever a run is killed), the newest
complete one found for a resume, and the state of ours that each checkpoint carries with the Trainer's (the hop
curriculum, the EMA of the weights, the training time so far)."""

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

CLOCK_FILE = "clock.json"
CURRICULUM_FILE = "curriculum.json"
EMA_FILE = "ema.safetensors"
STAGING_DIR = ".staging"  # checkpoints are written here, then renamed into place


# ----------------------------------------------------------------------------------------------------------------
# Atomic checkpoints and resuming from the newest complete one
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


@contextmanager
def writing_final(output_dir, main_process=True):
    """Yields the staging folder of `<output_dir>/final`; the main process renames it into place once the block has
    written everything, so a kill mid-write leaves the previous `final` (or none), never half of one."""
    final_dir = Path(output_dir, "final")
    staged = Path(output_dir, STAGING_DIR, "final")
    if main_process:  # only the process that writes: another rank clearing it late would delete what was written
        shutil.rmtree(staged, ignore_errors=True)
    yield staged
    if main_process:
        commit_directory(staged, final_dir)
        shutil.rmtree(staged.parent)  # the staging folder: empty once everything is in place
        print(f"[done] final checkpoint in {final_dir}")


def save_tokenizer(tokenizer, config, folder):
    """The tokenizer, its `model_max_length` what the model reads, so that `truncation=True` gives a prompt the model
    accepts (the tokenizer cuts on the left)."""
    tokenizer.model_max_length = config.max_prompt_tokens or int(1e30)
    tokenizer.save_pretrained(folder)


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
# State saved inside every checkpoint: the curriculum and the EMA
# ----------------------------------------------------------------------------------------------------------------


def write_train_results(final_dir, train_output, train_data, clock=None):
    """`train_results.json`, read by the benchmarks: the Trainer's metrics, the training seconds summed over resumes
    (`train_seconds_total`, where the clock knows them) and the hops the curriculum reached, which may fall short of
    --max_hops (the trained range)."""
    metrics = dict(train_output.metrics)
    if clock is not None and clock.seconds is not None:
        metrics["train_seconds_total"] = clock.seconds
    if train_data.max_hops is not None:  # a file trained without the curriculum has no such limit
        metrics["trained_max_hops"] = train_data.max_hops
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


class TrainingClock(TrainerCallback):
    """Wall seconds of training summed over resumes: the Trainer's `train_runtime` counts the last process only, so
    every checkpoint records the seconds spent up to it (`clock.json`) and a resumed run counts on from there. Steps
    done after the last checkpoint of a killed run are not counted: they are trained again. A checkpoint without the
    file (written before it existed) leaves the total unknown (None)."""

    def __init__(self):
        self.earlier, self.started, self.seconds = 0.0, None, None

    def elapsed(self):
        if self.earlier is None or self.started is None:  # a checkpoint without the file, or training not begun
            return None
        return self.earlier + time.perf_counter() - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = self.elapsed()

    def save(self, checkpoint_dir):
        if self.earlier is not None:
            Path(checkpoint_dir, CLOCK_FILE).write_text(json.dumps({"seconds": self.elapsed()}))

    def restore(self, checkpoint_dir):
        path = Path(checkpoint_dir, CLOCK_FILE)
        self.earlier = json.loads(path.read_text())["seconds"] if path.is_file() else None


class PromptStageCallback(TrainerCallback):
    """Tells a generator stream how far training has come, so `--prompt_stages` lengthen its prompts at their share
    of the steps. Read from the step counter, it needs no state of its own in a checkpoint."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_step_begin(self, args, state, control, **kwargs):
        self.dataset.progress = state.global_step / state.max_steps


class BackboneFreezeCallback(TrainerCallback):
    """Freezes a `full` backbone from a share of the training steps on (`--freeze_backbone_from`): its weights get no
    gradient, so the optimizer leaves them as they are and autograd no longer runs its backward. Read from the step
    counter like `PromptStageCallback`, so a resumed run freezes it again."""

    def __init__(self, model, start):
        self.model, self.start = model, start

    def on_step_begin(self, args, state, control, **kwargs):
        backbone = self.model.model.backbone
        if state.global_step >= self.start * state.max_steps and any(p.requires_grad for p in backbone.parameters()):
            self.model.model.freeze_backbone()
            if args.process_index == 0:
                print(f"[backbone] frozen from step {state.global_step} (--freeze_backbone_from {self.start})")


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
