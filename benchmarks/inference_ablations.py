"""Inference-time ablations and halting modes of one trained checkpoint, on the same fresh prompts (no retraining).

    python benchmarks/inference_ablations.py --model outputs/default/final [--hops 1 2 ...] [--n 1000] [--out DIR]

Ablations (each a row): none; the lifeline gate zeroed; the gate replaced by noise of the same norm; x_prompt (what
the lifeline re-injects) shuffled across the batch. Halting modes: `token`, `fixed` (`--fixed_loops`), `velocity` at
each `--velocities` threshold. Writes DIR/inference_ablations.json (per row and hop: answer / trace exact match with
95% intervals, halt rate, mean loops, examples/s).
"""

import argparse
import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from dataset_scripts.hop_chains import generate_examples
from dataset_scripts.tokenizer import task_words
from recursive_latent import RecursiveLatentForCausalLM
from recursive_latent.evaluation import evaluate_examples

SEED = 3_000_000  # fresh prompts: far from the training (small), validation (10,000+h) and benchmark (1,000,000+h) seeds


@contextmanager
def replaced_gate(model, new_gate):
    """The lifeline gate set to `new_gate(trained gate)` for the block, then restored."""
    gate = model.model.gate.detach().clone()
    model.model.gate.data.copy_(new_gate(gate))
    try:
        yield
    finally:
        model.model.gate.data.copy_(gate)


def gate_zeroed(model):
    return replaced_gate(model, torch.zeros_like)


def gate_noise(model):
    """Gaussian noise (seed 0) scaled to the trained gate's norm."""
    def noise_like(gate):
        noise = torch.randn(gate.shape, generator=torch.Generator().manual_seed(0))
        return noise * gate.norm() / noise.norm()

    return replaced_gate(model, noise_like)


@contextmanager
def prompt_shuffled(model):
    """Each example's lifeline re-injects another example's x_prompt (rolled by one row); its start latent is its own."""
    encode, init_latent = model.model.encode, model.model.init_latent

    def shuffled_encode(*args, **kwargs):
        context = encode(*args, **kwargs)
        context.prompt_state = context.prompt_state.roll(1, dims=0)
        return context

    model.model.encode = shuffled_encode
    model.model.init_latent = lambda context: init_latent(context).roll(-1, dims=0)  # rolled back: its own
    yield
    model.model.encode, model.model.init_latent = encode, init_latent


def velocity_threshold(threshold):
    @contextmanager
    def apply(model):
        saved, model.config.halt_velocity = model.config.halt_velocity, threshold
        yield
        model.config.halt_velocity = saved

    return apply


ABLATIONS = {"none": None, "gate_zeroed": gate_zeroed, "gate_noise_same_norm": gate_noise,
             "x_prompt_shuffled": prompt_shuffled}


def evaluate_rows(model, tokenizer, test_sets, rows):
    """rows: name -> (context manager or None, reason kwargs). Returns name -> hops -> figures."""
    results = {}
    for name, (ablation, kwargs) in tqdm(rows.items(), desc="rows"):
        with ablation(model) if ablation else nullcontext():
            results[name] = {}
            for hops, examples in test_sets.items():
                figures = evaluate_examples(model, tokenizer, examples, **kwargs)
                results[name][hops] = {**figures["per_steps"][hops], "examples_per_second": figures["examples_per_second"]}
        row = results[name]
        print(f"{name:>22}: " + "  ".join(f"{h}:{100 * r['answer_exact_match']:.1f}" for h, r in row.items()))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--variant", default="shuffled", choices=["shuffled", "chain"])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 10, 16])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--fixed_loops", type=int, default=6)
    parser.add_argument("--velocities", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=None, help="output dir (default: the model dir)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = RecursiveLatentForCausalLM.from_pretrained(args.model).eval()
    words = task_words(tokenizer)
    test_sets = {h: generate_examples(args.n, h, variant=args.variant, seed=args.seed + h, **words) for h in args.hops}

    start = time.perf_counter()
    ablation_rows = {name: (ablation, {}) for name, ablation in ABLATIONS.items()}
    if not model.config.lifeline:
        ablation_rows = {"none": (None, {})}
    halting_rows = {"token": (None, {"halting": "token"}),
                    f"fixed_{args.fixed_loops}": (None, {"halting": "fixed", "max_loops": args.fixed_loops})}
    if getattr(model.config, "halt_head", False):
        halting_rows["head"] = (None, {"halting": "head"})
    for velocity in args.velocities:
        halting_rows[f"velocity_{velocity}"] = (velocity_threshold(velocity), {"halting": "velocity"})
    results = {
        "model": args.model, "variant": args.variant, "n": args.n, "seed": args.seed,
        "loop_rotary": model.config.loop_rotary,
        "ablations": evaluate_rows(model, tokenizer, test_sets, ablation_rows),
        "halting": evaluate_rows(model, tokenizer, test_sets, halting_rows),
    }
    results["seconds"] = time.perf_counter() - start
    out = Path(args.out or args.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference_ablations.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'inference_ablations.json'}")


if __name__ == "__main__":
    main()
