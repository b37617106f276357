"""Probes of a trained model's loop: the latent trajectory in PCA, the latent velocity per loop, the lifeline gate.

    python benchmarks/probes.py --model outputs/default/final [--hops 2 4 8] [--n 200] [--extra_loops 8] [--out DIR]

Runs each prompt for hops + 1 + `extra_loops` loops (past its `<HALT>`), writes DIR/probes.json first (relative
velocity ||x_t - x_{t-1}|| / ||x_t|| per loop and hop count, PCA explained variance, the gate's per-channel values),
then DIR/img/probes_pca.png, probes_velocity.png and probes_gate.png drawn from the JSON.
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from dataset_scripts.hop_chains import generate_examples
from dataset_scripts.tokenizer import task_words
from recursive_latent import RecursiveLatentForCausalLM

SEED = 5_000_000


def latent_velocity(latents):
    """Relative velocity ||x_t - x_{t-1}|| / ||x_t|| of (..., loops, D) latents: (..., loops - 1), loops 2.. on."""
    return (latents[..., 1:, :] - latents[..., :-1, :]).norm(dim=-1) / latents[..., 1:, :].norm(dim=-1)


@torch.no_grad()
def trajectories(model, tokenizer, hops, n, loops, seed):
    examples = generate_examples(n, hops, seed=seed + hops, **task_words(tokenizer))
    inputs = tokenizer([e["question"] for e in examples], padding=True, return_tensors="pt")
    return model(**inputs, num_loops=loops).latents  # (n, loops, D): what the head reads after each loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--hops", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--extra_loops", type=int, default=8)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=None, help="output dir (default: the model dir)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = RecursiveLatentForCausalLM.from_pretrained(args.model).eval()

    results = {"model": args.model, "n": args.n, "seed": args.seed, "hops": {}, "pca": {}}
    all_latents = {h: trajectories(model, tokenizer, h, args.n, h + 1 + args.extra_loops, args.seed) for h in args.hops}
    for h, latents in all_latents.items():
        speed = latent_velocity(latents)
        results["hops"][h] = {"halt_loop": h + 1, "velocity_mean": speed.mean(0).tolist(),
                              "velocity_p90": speed.quantile(0.9, dim=0).tolist()}
    # One PCA basis for every trajectory, so the hop counts share the picture.
    stacked = torch.cat([latents.flatten(0, 1) for latents in all_latents.values()])
    mean = stacked.mean(0)
    _, singular, basis = torch.linalg.svd(stacked - mean, full_matrices=False)
    results["pca"]["explained_variance_ratio"] = (singular**2 / (singular**2).sum())[:5].tolist()
    for h, latents in all_latents.items():
        results["hops"][h]["pca_first_examples"] = ((latents[:3] - mean) @ basis[:2].T).tolist()  # (3, loops, 2)
    gate = model.model.gate
    results["gate"] = None if gate is None else gate.detach().tolist()

    out = Path(args.out or args.model)
    (out / "img").mkdir(parents=True, exist_ok=True)
    json_path = out / "probes.json"
    json_path.write_text(json.dumps(results, indent=2))
    print(f"wrote {json_path} and {', '.join(map(str, plot(json_path, out / 'img')))}")


def plot_velocity(ax, velocity, halt_loop=None, label=None):
    """Draw one latent velocity curve onto `ax` from a plain list: `velocity[i]` is ||x_t - x_{t-1}|| / ||x_t|| at
    loop t = i + 2 (loop 1 has no previous latent); `halt_loop`, when given, is marked by a dotted line of the
    curve's colour."""
    line, = ax.plot(range(2, len(velocity) + 2), velocity, marker=".", label=label)
    if halt_loop is not None:
        ax.axvline(halt_loop, color=line.get_color(), linestyle=":")
    ax.set_xlabel("loop t (dotted: the <HALT> loop)")
    ax.set_ylabel("||x_t - x_{t-1}|| / ||x_t||")


def plot_gate(ax, gate):
    """Draw the histogram of the lifeline gate's per-channel values (a plain list) onto `ax`."""
    ax.hist(gate, bins=30)
    ax.set_xlabel("lifeline gate value (per channel)")
    ax.set_ylabel("channels")
    ax.set_title("Lifeline gate after training (initialised at 1.0)")


def plot(json_path, img_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(json_path).read_text())
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for h, row in results["hops"].items():
        plot_velocity(ax, row["velocity_mean"], halt_loop=row["halt_loop"], label=f"{h} hops")
    ax.set_xlabel("loop t (dotted: the <HALT> loop, hops + 1)")
    ax.set_ylabel("mean ||x_t - x_{t-1}|| / ||x_t||")
    ax.set_title(f"Latent velocity per loop, n={results['n']} per hop count, seed {results['seed']}")
    ax.legend()
    fig.tight_layout()
    paths.append(img_dir / "probes_velocity.png")
    fig.savefig(paths[-1], dpi=120)

    fig, axes = plt.subplots(1, len(results["hops"]), figsize=(4 * len(results["hops"]), 4), squeeze=False)
    for ax, (h, row) in zip(axes[0], results["hops"].items()):
        for trajectory in row["pca_first_examples"]:
            xs, ys = zip(*trajectory)
            ax.plot(xs, ys, color="grey", linewidth=0.8)
            points = ax.scatter(xs, ys, c=range(1, len(xs) + 1), cmap="viridis", s=18)
            ax.scatter(xs[row["halt_loop"] - 1], ys[row["halt_loop"] - 1], marker="x", color="red", s=50)
        ax.set_title(f"{h} hops: 3 examples (x = <HALT> loop)")
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
    fig.colorbar(points, ax=axes[0, -1], label="loop")
    fig.tight_layout()
    paths.append(img_dir / "probes_pca.png")
    fig.savefig(paths[-1], dpi=120)

    if results["gate"] is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        plot_gate(ax, results["gate"])
        fig.tight_layout()
        paths.append(img_dir / "probes_gate.png")
        fig.savefig(paths[-1], dpi=120)
    plt.close("all")
    return paths


if __name__ == "__main__":
    main()
