"""Parameter counts, and `reason()` examples/s and peak memory vs loops and vs batch size; the cost of a batch with
mixed hop counts against the sum of its examples' loops.

    python benchmarks/throughput.py [--model outputs/default/final] [--loops 1 2 4 8 16 32] [--batch_sizes 1 16 64 256]

Every speed point runs in a fresh process so that its peak RSS is its own; `reason_mb` is what the `reason` calls
add on top of the loaded model (Linux: the peak-RSS counter is reset just before them). Loop counts are forced with
`halting="fixed"`. The mixed-hop row uses `--model` (a trained checkpoint, token halting): one batch of prompts with
1..16 hops, timed as it is (finished examples leave the batch) and timed at a fixed depth equal to its longest
example. Writes OUT/throughput.json.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dataset_scripts.hop_chains import generate_examples
from dataset_scripts.tokenizer import build_tokenizer
from ood_hops import command_line
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM

# The Hub backbones' shapes (their weights cannot be downloaded here), with the core of their configs in
# trainers/configs/ (gpt2_124m.yaml, mamba2_130m.yaml) and `<HALT>` added to their tokenizers' vocabularies.
SHAPES = {
    "gpt2_124m": (dict(model_type="gpt2", vocab_size=50258, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
                  dict(core_hidden_size=256, memory="all", binding_conv="memory")),
    "mamba2_130m": (dict(model_type="mamba2", vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128,
                         expand=2, head_dim=64, num_heads=24, n_groups=1, chunk_size=256),
                    dict(core_hidden_size=256, memory="last", binding_conv="memory")),
}


def parameter_counts(model):
    counts = {"backbone": 0, "core": 0, "gate": 0}
    for name, p in model.named_parameters():
        key = "backbone" if name.startswith("model.backbone.") else "gate" if name == "model.gate" else "core"
        counts[key] += p.numel()
    return counts


def load(model_path):
    if model_path:
        return RecursiveLatentForCausalLM.from_pretrained(model_path).eval()
    tokenizer = build_tokenizer()
    backbone = dict(model_type="gpt2", vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=4,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    return RecursiveLatentForCausalLM(RecursiveLatentConfig(backbone_config=backbone, halt_token_id=2)).eval()


def timed(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


def memory_mb(field):
    """`VmRSS` (resident now) or `VmHWM` (peak resident) of this process, from /proc (Linux)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def speed_point(model_path, loops, batch_size, repeats):
    """One point, run in this (fresh) process: examples/s and peak memory of `reason` at a fixed depth."""
    torch.manual_seed(0)
    model, tokenizer = load(model_path), build_tokenizer()
    examples = generate_examples(batch_size, 5, seed=0)
    inputs = tokenizer([e["question"] for e in examples], padding=True, return_tensors="pt")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak counter: imports and loading no longer count
    before = memory_mb("VmRSS")
    seconds, out = timed(lambda: model.reason(**inputs, max_loops=loops, halting="fixed"), repeats)
    assert int(out.loops.min()) == loops
    return {"loops": loops, "batch_size": batch_size, "examples_per_second": batch_size / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "reason_mb": memory_mb("VmHWM") - before}


def mixed_hops(model_path, repeats, max_hops=16, per_hop=16):
    """A batch with 1..max_hops hops: token halting (finished examples leave) vs a fixed depth for all."""
    model, tokenizer = load(model_path), build_tokenizer()
    examples = [e for h in range(1, max_hops + 1) for e in generate_examples(per_hop, h, seed=4_000_000 + h)]
    inputs = tokenizer([e["question"] for e in examples], padding=True, return_tensors="pt")
    halting_seconds, out = timed(lambda: model.reason(**inputs, halting="token"), repeats)
    depth = int(out.loops.max())
    fixed_seconds, _ = timed(lambda: model.reason(**inputs, max_loops=depth, halting="fixed"), repeats)
    return {"examples": len(examples), "hops": [1, max_hops], "sum_of_loops": int(out.loops.sum()),
            "fixed_depth": depth, "fixed_depth_loops": depth * len(examples),
            "seconds_halting": halting_seconds, "seconds_fixed_depth": fixed_seconds,
            "time_ratio": halting_seconds / fixed_seconds,
            "loop_ratio": int(out.loops.sum()) / (depth * len(examples))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="trained checkpoint (default: an untrained tiny model)")
    parser.add_argument("--loops", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--loops_for_batch_sweep", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64, help="batch of the loop sweep")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="outputs/benchmarks")
    parser.add_argument("--point", nargs=2, type=int, help=argparse.SUPPRESS)  # internal: one speed point
    args = parser.parse_args()
    if args.point:
        print("POINT " + json.dumps(speed_point(args.model, *args.point, args.repeats)))
        return

    start = time.perf_counter()
    results = {"model": args.model, "command": command_line(),
               "threads": torch.get_num_threads(), "parameters": {}, "loops": [], "batch": []}
    model = load(args.model)
    results["parameters"][f"tiny_{model.config.backbone_type}"] = parameter_counts(model)
    for name, (backbone, core) in SHAPES.items():
        config = RecursiveLatentConfig(backbone_config=dict(backbone, bos_token_id=None, eos_token_id=None), halt_token_id=2,
                                       **core)
        results["parameters"][name] = parameter_counts(RecursiveLatentForCausalLM(config))
    points = [("loops", loops, args.batch_size) for loops in args.loops]
    points += [("batch", args.loops_for_batch_sweep, batch) for batch in args.batch_sizes]
    for sweep, loops, batch in tqdm(points, desc="speed points"):
        command = [sys.executable, __file__, "--point", str(loops), str(batch), "--repeats", str(args.repeats)]
        command += ["--model", args.model] if args.model else []
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        results[sweep].append(json.loads(result.stdout.split("POINT ")[-1]))
    if args.model:
        results["mixed_hops"] = mixed_hops(args.model, args.repeats)
    results["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    for row in results["loops"] + results["batch"]:
        print(f"{row['loops']:>3} loops, batch {row['batch_size']:>4}: {row['examples_per_second']:8.0f} examples/s, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB")
    if args.model:
        m = results["mixed_hops"]
        print(f"mixed 1-16 hops, {m['examples']} examples: {m['sum_of_loops']} loops run vs {m['fixed_depth_loops']} at "
              f"fixed depth {m['fixed_depth']} (ratio {m['loop_ratio']:.2f}); time ratio {m['time_ratio']:.2f}")
    print(f"wrote {out / 'throughput.json'}")


if __name__ == "__main__":
    main()
