"""Parameter counts (backbone / core / gate) and `reason()` examples/s at a fixed number of loops.

    python benchmarks/reason_speed.py [--batch_size 64] [--loops 1 8] [--out outputs/benchmarks]

Configs are built from config (no download): the default tiny GPT-2, GPT-2 124M and Mamba2-130M shapes. Speed is
measured on the tiny model with <HALT> made unreachable, so every example runs exactly the given loops.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from dataset_scripts.hop_chains import generate_examples
from dataset_scripts.tokenizer import build_tokenizer
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM

SHAPES = {
    "tiny_gpt2": None,  # filled from the tokenizer below
    "gpt2_124m": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "mamba2_130m": dict(model_type="mamba2", vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128,
                        expand=2, head_dim=64, num_heads=24, n_groups=1, chunk_size=256),
}


def parameter_counts(model):
    counts = {"backbone": 0, "core": 0, "gate": 0}
    for name, p in model.named_parameters():
        key = "backbone" if name.startswith("model.backbone.") else "gate" if name == "model.gate" else "core"
        counts[key] += p.numel()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--loops", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="outputs/benchmarks")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    SHAPES["tiny_gpt2"] = dict(model_type="gpt2", vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2,
                               n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    results = {"parameters": {}, "reason_examples_per_second": {}, "batch_size": args.batch_size,
               "threads": torch.get_num_threads()}
    for name, backbone in SHAPES.items():
        config = RecursiveLatentConfig(backbone_config=dict(backbone, bos_token_id=None, eos_token_id=None), halt_token_id=2)
        model = RecursiveLatentForCausalLM(config)
        results["parameters"][name] = parameter_counts(model)
        print(name, results["parameters"][name])
        if name != "tiny_gpt2":
            del model
            continue
        model.eval()
        with torch.no_grad():
            model.get_input_embeddings().weight[2] = -100.0  # never predict <HALT>: fixed loops
        examples = generate_examples(args.batch_size, 5, seed=0)
        inputs = tokenizer([e["prompt"] for e in examples], padding=True, return_tensors="pt")
        for loops in args.loops:
            model.reason(**inputs, max_loops=loops)  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                out = model.reason(**inputs, max_loops=loops)
            seconds = time.perf_counter() - start
            assert int(out.loops.min()) == loops
            results["reason_examples_per_second"][loops] = args.repeats * args.batch_size / seconds
            print(f"reason, {loops} loops, batch {args.batch_size}: {results['reason_examples_per_second'][loops]:.0f} examples/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reason_speed.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
