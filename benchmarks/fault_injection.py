"""Fault injection: kill the trainer (SIGKILL) at random moments, most of them while it writes a checkpoint, resume
every run with `--resume_from_checkpoint latest`, and count the runs that end with weights identical to an
uninterrupted run of the same config.

    python benchmarks/fault_injection.py [--trials 24] [--seed 0] [--out docs]

The config is the tests' tiny one (a 32-wide model, 24 steps) with a checkpoint every 2 steps, the hop curriculum and
an EMA, whose state every checkpoint must carry. Every process runs on one thread, so a resumed run repeats the
uninterrupted one bit for bit when it restarts from a whole checkpoint. A kill counts as "inside a checkpoint write"
when the staging folder held a half-written checkpoint afterwards. Writes DIR/fault_injection.json (every trial: kill
time, where it landed, the checkpoint resumed from, max abs weight difference).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ood_hops import command_line

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
backbone_hidden_size: 32
backbone_max_positions: 128
model: {backbone_mode: full}
core_optimizer: muon
ema_decay: 0.9
max_steps: 24
per_device_train_batch_size: 16
learning_rate: 0.003
warmup_steps: 0
eval_strategy: 'no'
save_strategy: steps
save_steps: 2
save_total_limit: 2
logging_steps: 4
curriculum_window: 4
use_cpu: true
report_to: none
seed: 0
"""


def command(work, output_dir, *extra):
    return [sys.executable, str(ROOT / "trainers" / "rlf.py"), "--config", str(work / "tiny.yaml"),
            "--output_dir", str(output_dir), *extra]


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def weights(output_dir):
    return load_file(Path(output_dir) / "final" / "model.safetensors")


def max_difference(a, b):
    if a.keys() != b.keys():
        return float("inf")
    return max((a[key] - b[key]).abs().max().item() for key in a)


def staged_checkpoint(output_dir):
    """A checkpoint being written (a folder inside the staging folder), or None."""
    staging = Path(output_dir) / ".staging"
    found = [path for path in staging.glob("checkpoint-*")] if staging.is_dir() else []
    return found[0] if found else None


def kill_run(work, output_dir, rng, during_write, horizon):
    """Start a run and SIGKILL it: `during_write` a few ms after a checkpoint folder appears in the staging folder
    (the n-th write, n random), else at a uniform random time within `horizon` seconds. Returns the kill time and
    whether a half-written checkpoint was left behind."""
    process = subprocess.Popen(command(work, output_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment(), cwd=work)
    start = time.perf_counter()
    deadline = start + rng.uniform(1.0, horizon)
    writes_to_skip = rng.randint(0, 10)
    seen = None
    while process.poll() is None:
        now = time.perf_counter()
        if during_write:
            staged = staged_checkpoint(output_dir)
            if staged is not None and staged != seen:
                seen = staged
                if writes_to_skip == 0:
                    time.sleep(rng.uniform(0.0, 0.004))  # a tiny checkpoint takes a few tens of ms to write
                    break
                writes_to_skip -= 1
        elif now >= deadline:
            break
        time.sleep(0.001)
    killed_at = time.perf_counter() - start
    finished = process.poll() is not None
    if not finished:
        process.send_signal(signal.SIGKILL)
    process.wait()
    return {"killed_at_s": round(killed_at, 3), "finished_before_kill": finished,
            "inside_checkpoint_write": staged_checkpoint(output_dir) is not None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/fault_injection")
    args = parser.parse_args()
    if args.trials < 2:
        parser.error("--trials must be >= 2")
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "tiny.yaml").write_text(CONFIG)
        start = time.perf_counter()
        subprocess.run(command(work, work / "reference"), check=True, capture_output=True, env=environment(), cwd=work)
        horizon = time.perf_counter() - start
        reference = weights(work / "reference")
        trials = []
        for trial in range(args.trials):
            output_dir = work / f"trial-{trial}"
            aimed = trial % 4 != 3  # three kills in four aimed at a checkpoint write, the fourth at any moment
            record = {"trial": trial, "aimed_at_checkpoint_write": aimed,
                      **kill_run(work, output_dir, rng, aimed, horizon)}
            resumed = subprocess.run(command(work, output_dir, "--resume_from_checkpoint", "latest"),
                                     capture_output=True, text=True, env=environment(), cwd=work)
            record["resume_exit_code"] = resumed.returncode
            record["resume_lines"] = [line for line in resumed.stdout.splitlines() if line.startswith("[resume]")]
            record["max_abs_weight_difference"] = (max_difference(reference, weights(output_dir))
                                                   if resumed.returncode == 0 else None)
            record["identical"] = record["max_abs_weight_difference"] == 0.0
            if resumed.returncode != 0:
                record["resume_error"] = resumed.stderr.strip().splitlines()[-1:]
            trials.append(record)
            print(f"trial {trial:>2}: killed at {record['killed_at_s']:6.2f} s "
                  f"({'inside a checkpoint write' if record['inside_checkpoint_write'] else 'between writes'})"
                  f"  resume rc {resumed.returncode}  {' '.join(record['resume_lines'])}  "
                  f"max |diff| {record['max_abs_weight_difference']}")
    inside = sum(t["inside_checkpoint_write"] for t in trials)
    results = {
        "command": command_line(),
        "seed": args.seed, "trials": args.trials, "uninterrupted_run_seconds": round(horizon, 2),
        "kills_inside_checkpoint_writes": inside, "kills_between_writes": args.trials - inside,
        "resumed_identical": sum(t["identical"] for t in trials),
        "resume_failures": sum(t["resume_exit_code"] != 0 for t in trials),
        "config": CONFIG.strip(), "torch": torch.__version__, "per_trial": trials,
    }
    (out / "fault_injection.json").write_text(json.dumps(results, indent=2))
    print(f"{results['resumed_identical']} of {args.trials} resumed runs ended with weights identical to the "
          f"uninterrupted run ({inside} kills inside checkpoint writes); wrote {out / 'fault_injection.json'}")


if __name__ == "__main__":
    main()
