"""Train the CTR refiner (RecursiveRefinerModel) on the synthetic retrieval task with the HF Trainer.

    python trainers/ctr.py --output_dir outputs/ctr [--ctr.steps 32 --ctr.tau 0.88 --ctr.h 128 --ctr.pool mean
                           --ctr.adapters lora-rank=4 --ctr.lane match] [any TrainingArguments]

Per batch (the white paper's schedule): a depth S is drawn in 1..train_steps, S-1 steps run without gradients and
the last one with them (`--grad all` backpropagates through every step); the loss is 1 - cos(y_S, y*) plus 0.2 x
the halting BCE against cos(y_S, y*) >= ok_cosine, plus 10 x max(0, cos(y_{S-1}, y*) - cos(y_S, y*)), a hinge on
the last step moving an example's answer away from the target (`--monotone_loss_weight 0`: the paper's loss).
Evaluation and the saved model use an EMA of the weights. Drawing S per batch supervises every depth up to S_max,
so the answer has to improve (or hold) at each step.
"""

import json
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import HfArgumentParser, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlf import WeightEMA  # noqa: E402  (trainers/ is a folder of scripts)

from dataset_scripts.retrieval import LANES, build_dataset  # noqa: E402
from recursive_latent import RecursiveRefinerConfig, RecursiveRefinerModel  # noqa: E402


@dataclass
class RefinerArguments:
    dim: int = field(default=64, metadata={"help": "Vector width of q, Y, r̄ and the answer."})
    hidden_size: int = field(default=128, metadata={"help": "Latent width h.", "aliases": ["--ctr.h"]})
    steps: int = field(default=32, metadata={"help": "S_max at inference.", "aliases": ["--ctr.steps"]})
    train_steps: int | None = field(
        default=None, metadata={"help": "Deepest S drawn in training (default: --ctr.steps, every depth inference uses)."}
    )
    tau: float = field(default=0.88, metadata={"help": "Halting threshold on p_halt.", "aliases": ["--ctr.tau"]})
    ok_cosine: float = field(default=0.9, metadata={"help": "Halting target: cos(y, y*) >= ok_cosine."})
    pool: str = field(default="mean", metadata={"help": "`mean` or `attn` pooling of y_0.", "aliases": ["--ctr.pool"]})
    adapters: str | None = field(
        default=None, metadata={"help": "Per-lane LoRA adapters, e.g. `lora-rank=4`.", "aliases": ["--ctr.adapters"]}
    )
    lane: str | None = field(default=None, metadata={"help": "Train on one lane only.", "aliases": ["--ctr.lane"]})
    use_query: bool = field(default=True, metadata={"help": "Feed q to the latent update."})
    use_centroid: bool = field(default=True, metadata={"help": "Feed r̄ to the latent update."})
    latent_norm: bool = field(default=True, metadata={"help": "LayerNorm z after each update."})
    gated_update: bool = field(default=False, metadata={"help": "Scale each answer update by 1 - p_halt."})
    monotone_loss_weight: float = field(
        default=10.0,
        metadata={"help": "Weight of the hinge on the last step moving the answer away from y* (0 = the paper's loss). "
                          "Measured: without it the held-out cos falls at steps 22-32 at fixed depth "
                          "(docs/experiments.md)."},
    )
    grad: str = field(default="last", metadata={"help": "`last`: S-1 no-grad steps then 1 with; `all`: full backprop."})
    ema_decay: float | None = field(
        default=0.99,
        metadata={"help": "EMA of the weights for eval and saving; 0 = off. Measured at 2,000 steps: 0.999 lags (best "
                          "held-out cos 0.948 vs 0.982 with 0.99) and drifts down at fixed depth (docs/experiments.md)."},
    )
    train_size: int = field(default=50_000, metadata={"help": "Training examples (fresh, seed = --seed)."})
    eval_size: int = field(default=2_000, metadata={"help": "Held-out examples (seed + 1,000,000)."})


def adapter_rank(spec):
    if spec is None:
        return None
    if not spec.startswith("lora-rank=") or not spec.split("=", 1)[1].isdigit():
        raise SystemExit(f"error: --ctr.adapters must look like `lora-rank=4` (got {spec!r})")
    return int(spec.split("=", 1)[1])


def collate(examples):
    batch = {key: torch.stack([e[key] for e in examples]) for key in ("query", "candidates", "centroid", "target")}
    batch["lanes"] = [e["lane"] for e in examples]
    return batch


def significant_falls(cosine):
    """Steps s (1-based) whose mean change cos_s - cos_{s-1} over the examples is below zero by more than its 95%
    interval (paired over the same examples): the falls that are not noise. cosine: (examples, steps)."""
    change = cosine[:, 1:] - cosine[:, :-1]
    half_width = 1.96 * change.std(0) / change.shape[0] ** 0.5
    return [s + 2 for s in (change.mean(0) + half_width < 0).nonzero().flatten().tolist()]


@torch.no_grad()
def evaluate_refiner(model, data, max_steps=None, threshold=None):
    """Held-out figures: mean cos(y_s, y*) after every step s of a fixed-depth run; with halting (`refine`, as
    `ctr_refine` runs): mean cos of its per-step trace (a stopped example keeps its answer), mean cos at the stop,
    mean steps, and mean steps per difficulty quartile."""
    model.eval()
    rows = [data[i] for i in range(len(data))]  # read the dataset once
    batch = collate(rows)
    steps = max_steps or model.config.max_steps
    fixed = model(batch["query"], batch["candidates"], batch["centroid"], batch["lanes"], steps=steps)
    cosine = F.cosine_similarity(fixed.answers, batch["target"][:, None], dim=-1)  # (examples, steps)
    out = model.refine(batch["query"], batch["candidates"], batch["centroid"], batch["lanes"], steps, threshold)
    halted_cosine = F.cosine_similarity(out.answer, batch["target"], dim=-1)
    trace_cosine = F.cosine_similarity(out.trace, batch["target"][:, None], dim=-1)
    difficulty = torch.stack([row["difficulty"] for row in rows])
    quartiles = torch.quantile(difficulty, torch.tensor([0.25, 0.5, 0.75], device=difficulty.device))
    bucket = torch.bucketize(difficulty, quartiles)
    return {
        "cosine_per_step": cosine.mean(0).tolist(),
        "significant_falls": significant_falls(cosine),
        "start_cosine": F.cosine_similarity(model.pool(batch["query"], batch["candidates"]), batch["target"]).mean().item(),
        "halted_cosine": halted_cosine.mean().item(),
        "trace_cosine_per_step": trace_cosine.mean(0).tolist(),
        "trace_significant_falls": significant_falls(trace_cosine),
        "mean_steps": out.steps.float().mean().item(),
        "steps_by_difficulty_quartile": [out.steps[bucket == q].float().mean().item() for q in range(4)],
        "cosine_by_difficulty_quartile": [halted_cosine[bucket == q].mean().item() for q in range(4)],
        "n": len(data),
    }


class RefinerTrainer(Trainer):
    def __init__(self, *args, refiner_args=None, ema=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.refiner_args, self.ema = refiner_args, ema

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The depth is drawn from the step number, so a rerun (or a resumed run) draws the same depths.
        steps = random.Random(self.args.seed * 1_000_003 + self.state.global_step).randint(1, self.refiner_args.train_steps)
        outputs = model(inputs["query"], inputs["candidates"], inputs["centroid"], inputs["lanes"], steps=steps,
                        target=inputs["target"], grad_steps=1 if self.refiner_args.grad == "last" else None)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        with self.ema.applied() if self.ema is not None else nullcontext():
            result = evaluate_refiner(self.model, eval_dataset or self.eval_dataset)
        metrics = {f"{metric_key_prefix}_{key}": result[key] for key in ("halted_cosine", "mean_steps", "start_cosine")}
        self.log(metrics)
        print(f"[eval] step {self.state.global_step}: cos start {result['start_cosine']:.3f} -> halted "
              f"{result['halted_cosine']:.3f} in {result['mean_steps']:.1f} steps")
        return metrics


def main(argv=None):
    parser = HfArgumentParser((RefinerArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if args.grad not in ("last", "all"):
        raise SystemExit(f"error: --grad must be `last` or `all` (got {args.grad!r})")
    lanes = (args.lane,) if args.lane else LANES
    if args.lane and args.lane not in LANES:
        raise SystemExit(f"error: --ctr.lane must be one of {', '.join(LANES)} (got {args.lane!r})")
    rank = adapter_rank(args.adapters)
    args.train_steps = args.train_steps or args.steps
    training_args.remove_unused_columns = False
    torch.manual_seed(training_args.seed)

    config = RecursiveRefinerConfig(
        dim=args.dim, hidden_size=args.hidden_size, lane_names=list(LANES), pool=args.pool, use_query=args.use_query,
        use_centroid=args.use_centroid, latent_norm=args.latent_norm, gated_update=args.gated_update,
        max_steps=args.steps,
        train_steps=args.train_steps, halt_threshold=args.tau,
        ok_cosine=args.ok_cosine, monotone_loss_weight=args.monotone_loss_weight,
    )
    model = RecursiveRefinerModel(config)
    if rank:
        for lane in lanes:
            model.add_lane(lane, r=rank, lora_alpha=2 * rank)
        model.requires_grad_(True)  # PEFT freezes the body when it injects; here body and lane adapters train together
    train = build_dataset(args.train_size, training_args.seed, dim=args.dim, lanes=lanes)
    validation = build_dataset(args.eval_size, training_args.seed + 1_000_000, dim=args.dim, lanes=lanes)
    ema = WeightEMA(model, args.ema_decay) if args.ema_decay else None
    trainer = RefinerTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                             data_collator=collate, callbacks=[ema] if ema else [], refiner_args=args, ema=ema)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    final = os.path.join(training_args.output_dir, "final")
    with ema.applied() if ema else nullcontext():
        model.save_pretrained(final)
        result = evaluate_refiner(model, build_dataset(args.eval_size, training_args.seed + 2_000_000, dim=args.dim,
                                                       lanes=lanes))
    Path(final, "refiner_eval.json").write_text(json.dumps({"test": result, "args": vars(args)}, indent=2))
    print(f"[done] {final}: test cos {result['start_cosine']:.3f} -> {result['halted_cosine']:.3f} in "
          f"{result['mean_steps']:.1f} steps; steps by difficulty quartile "
          f"{[round(s, 1) for s in result['steps_by_difficulty_quartile']]}")
    return final


if __name__ == "__main__":
    main()
