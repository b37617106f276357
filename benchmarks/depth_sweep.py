"""Depth sweep: force the core to run r loops (ignoring <HALT>) and check whether the answer survives past the
halt point, the experiment behind the RLF seed's "loss climbs from r=6 to r=24".

    python benchmarks/depth_sweep.py --model outputs/default/final [--hops 1 2 4 8] [--loops 1 2 4 6 8 12 24]

For each hop count h and forced loop count r >= h it reads loop r's logits with <HALT> masked out and records the
cross-entropy of the true answer and whether the answer is the argmax. Writes DIR/depth_sweep.csv first (and
DIR/depth_sweep.json: the command, the model and the wall time), then DIR/depth_sweep.png drawn from the CSV.
"""

import argparse
import csv
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from dataset_scripts.hop_chains import generate_examples
from dataset_scripts.tokenizer import task_words, word_ids
from ood_hops import command_line

SWEEP_SEED = 2_000_000  # apart from training (small seeds), validation (10,000+h) and ood_hops (1,000,000+h)


@torch.no_grad()
def sweep(model, tokenizer, words, ids, hops, loops, n, batch_size, seed):
    """words: the name / value pools the tokenizer supervises (`task_words`); ids: word -> token id (`word_ids`)."""
    examples = generate_examples(n, hops, variant="shuffled", seed=seed + hops, **words)
    answers = torch.tensor([ids[e["answer"]] for e in examples])
    max_loops = max(loops)
    loop_logits = []
    for start in range(0, n, batch_size):
        batch = tokenizer([e["question"] for e in examples[start : start + batch_size]], padding=True, return_tensors="pt")
        loop_logits.append(model(**batch, num_loops=max_loops).loop_logits)  # (b, max_loops, V)
    loop_logits = torch.cat(loop_logits)
    loop_logits[..., model.config.halt_token_id] = float("-inf")  # the question is which word the latent holds
    rows = []
    for r in loops:
        if r < hops:
            continue
        logits = loop_logits[:, r - 1]
        rows.append({
            "hops": hops, "loops": r, "n": n, "seed": seed + hops,
            "answer_loss": F.cross_entropy(logits, answers).item(),
            "answer_accuracy": (logits.argmax(-1) == answers).float().mean().item(),
        })
    return rows


def plot(csv_path, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for hops in sorted({int(r["hops"]) for r in rows}):
        mine = [r for r in rows if int(r["hops"]) == hops]
        loops = [int(r["loops"]) for r in mine]
        acc_ax.plot(loops, [100 * float(r["answer_accuracy"]) for r in mine], marker="o", label=f"{hops} hops")
        loss_ax.plot(loops, [float(r["answer_loss"]) for r in mine], marker="o", label=f"{hops} hops")
    acc_ax.set(xlabel="forced loops r", ylabel="answer is the argmax at loop r (%)", ylim=(0, 101), xscale="log")
    loss_ax.set(xlabel="forced loops r", ylabel="cross-entropy of the answer at loop r", xscale="log")
    for ax in (acc_ax, loss_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("Forced loops past the halt point (<HALT> masked out)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Checkpoint directory.")
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--loops", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 24])
    parser.add_argument("--n", type=int, default=1000, help="Fresh prompts per hop count.")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=SWEEP_SEED)
    parser.add_argument("--out", default=None, help="Output directory (default: the checkpoint's parent).")
    args = parser.parse_args()

    out = Path(args.out or Path(args.model).parent)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
    words, ids = task_words(tokenizer), word_ids(tokenizer)  # once, not once per hop count
    rows = []
    for hops in tqdm(args.hops, desc="hop counts"):
        rows += sweep(model, tokenizer, words, ids, hops, sorted(args.loops), args.n, args.batch_size, args.seed)
    csv_path = out / "depth_sweep.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = {"command": command_line(), "model": args.model,
           "seconds": time.perf_counter() - start}
    (out / "depth_sweep.json").write_text(json.dumps(run, indent=2))
    plot(csv_path, out / "depth_sweep.png")
    for row in rows:
        print(f"hops {row['hops']:>2} loops {row['loops']:>2}: answer argmax {100 * row['answer_accuracy']:6.2f}%  "
              f"loss {row['answer_loss']:.3f}")
    print(f"wrote {csv_path} and {out / 'depth_sweep.png'}")


if __name__ == "__main__":
    main()
