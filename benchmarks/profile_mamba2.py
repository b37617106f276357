"""Profile a training step of the Mamba2 default (or of any config) on the CPU: milliseconds per step (forward,
backward, optimizer) and where the time goes.

    python benchmarks/profile_mamba2.py [--threads 2] [--variant "" --variant "--mamba_chunk_size 32" ...]
                                        [--config trainers/configs/prosqa.yaml] [--compile_backbone] [--out DIR]

Each `--variant` is a set of trainer options on top of `--config` (default `trainers/configs/default_mamba2.yaml`;
the empty string: the config as it is). The model and the batches come from the trainer's own setup, collator and
optimizer, the batches at the config's last curriculum stage, so a step here is a step of `trainers/rlf.py` without
the Trainer's bookkeeping. Variants are timed interleaved (A B A B ...) at the
same thread count on the same batches, `--rounds` times `--steps` steps each after a warm-up; `torch.profiler` then
breaks one variant's steps down by operator (self CPU time). With `--compile_backbone` each variant is timed a
second time with its Mamba2 backbone under `torch.compile` (static shapes: one compile per prompt length, all done in
the warm-up, whose time is reported). Writes DIR/profile_mamba2.json.
"""

import argparse
import json
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset_scripts.collator import LoopLabelCollator  # noqa: E402
from trainers.arguments import parse_arguments  # noqa: E402
from trainers.rlf import final_stage, offset_positions, setup, training_stream  # noqa: E402
from recursive_latent.optimization import muon_with_adamw  # noqa: E402
from ood_hops import command_line  # noqa: E402


COMPILED = "[backbone under torch.compile]"


def build(config, variant, batch_size, batches, seed, compile_backbone=False):
    """The model, an optimizer and `batches` training batches of `config` with `variant`'s options."""
    argv = ["--config", str(config), "--output_dir", tempfile.mkdtemp(), "--per_device_train_batch_size",
            str(batch_size), *shlex.split(variant)]
    args = parse_arguments(argv)
    run = setup(args)
    model = run.model.train()
    if compile_backbone:
        model.model.backbone = torch.compile(model.model.backbone, dynamic=False)  # dynamic=True fails to compile
    optimizer = muon_with_adamw(model, args.training.learning_rate, args.training.weight_decay,
                                {name for name, _ in model.named_parameters()}, betas=(0.9, 0.98))
    stream = training_stream(run, batches * batch_size, seed=seed, max_hops=final_stage(run))
    collate = LoopLabelCollator(run.tokenizer)
    data = [collate([stream[i * batch_size + j] for j in range(batch_size)]) for i in range(batches)]
    return model, optimizer, data, args


def config_name(config):
    """The config as the repository names it (the default is an absolute path): relative to the root when inside."""
    path = Path(config).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(config)


def step(model, optimizer, batch, args):
    mask = batch["attention_mask"]
    positions = offset_positions(mask, model.config, args.recursion.position_offsets)
    loss = model(input_ids=batch["input_ids"], attention_mask=mask, loop_labels=batch["loop_labels"],
                 position_ids=positions).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed_steps(setup_, batches, steps):
    model, optimizer, data, args = setup_
    start = time.perf_counter()
    for i in range(steps):
        step(model, optimizer, data[i % len(data)], args)
    return 1000 * (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None,
                        help="trainer options on top of --config (repeat; default: the config alone)")
    parser.add_argument("--config", default=str(ROOT / "trainers" / "configs" / "default_mamba2.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile_steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile_backbone", action="store_true",
                        help="also time each variant with its backbone under torch.compile")
    parser.add_argument("--out", default="outputs/profile_mamba2")
    args = parser.parse_args()
    variants = args.variant or [""]
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    built = {variant: build(args.config, variant, args.batch_size, args.steps, args.seed) for variant in variants}
    if args.compile_backbone:
        built |= {f"{variant} {COMPILED}".strip(): build(args.config, variant, args.batch_size, args.steps, args.seed,
                                                         compile_backbone=True) for variant in variants}
        variants = list(built)
    warm_up = {}
    for variant in variants:  # warm-up: first calls allocate and dispatch (and compile, once per prompt length)
        start = time.perf_counter()
        timed_steps(built[variant], args.steps, args.steps if COMPILED in variant else 2)
        warm_up[variant] = time.perf_counter() - start
    times = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            times[variant].append(timed_steps(built[variant], args.steps, args.steps))
    rows = {}
    for variant in variants:
        rows[variant or "(config)"] = {"ms_per_step_median": statistics.median(times[variant]),
                                       "ms_per_step_rounds": times[variant], "warm_up_seconds": warm_up[variant]}
        print(f"{variant or '(config)':<50} {statistics.median(times[variant]):7.1f} ms/step  rounds "
              f"{' '.join(f'{t:.1f}' for t in times[variant])}")

    model, optimizer, data, train_args = built[variants[0]]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False) as profile:
        for i in range(args.profile_steps):
            with torch.profiler.record_function("data_step"):
                step(model, optimizer, data[i % len(data)], train_args)
    table = profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(table)
    ops = sorted(profile.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    total = sum(e.self_cpu_time_total for e in profile.key_averages())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": command_line(), "config": config_name(args.config),
        "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
        "seed": args.seed, "variants": rows,
        "profiled_variant": variants[0] or "(config)",
        "top_ops_self_cpu": [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / args.profile_steps,
                              "share": e.self_cpu_time_total / total, "calls_per_step": e.count / args.profile_steps}
                             for e in ops],
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
    }
    (out / "profile_mamba2.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'profile_mamba2.json'}")


if __name__ == "__main__":
    main()
