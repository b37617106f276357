"""A synthetic retrieval task for the CTR refiner, where refinement has something to do.

A hidden world (fixed by `world_seed`) holds a codebook of unit concept vectors and one hidden linear map per lane.
An example picks a concept c; its target is y* = c (lane `match`) or y* = normalize(M c) (lane `shift`).
    query q      = normalize(A c + sigma n)     a noisy view of c through a hidden map A
    candidates Y = K vectors, shuffled: normalize(c + sigma n) and K-1 other concepts with noise 0.3
    centroid r̄   = normalize(mean(Y) + 0.3 n)    a noisy retrieval centroid
with n ~ N(0, I/d). sigma is the example's difficulty. Neither q nor any candidate is the target: the refiner has to
read c through A, pick the candidate that agrees (attention pooling can), snap to the codebook it learns (de-noise)
and, in the `shift` lane, map the result.

    python dataset_scripts/retrieval.py --out data/retrieval    # train / validation / test splits, save_to_disk
"""

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import Dataset, DatasetDict

LANES = ("match", "shift")
DISTRACTOR_NOISE, CENTROID_NOISE = 0.3, 0.3


def hidden_world(dim, num_concepts, world_seed=0):
    generator = torch.Generator().manual_seed(world_seed)
    codebook = torch.nn.functional.normalize(torch.randn(num_concepts, dim, generator=generator), dim=-1)
    query_map = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]
    lane_maps = {"match": torch.eye(dim), "shift": torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]}
    return codebook, query_map, lane_maps


def make_retrieval_examples(n, seed, dim=64, num_candidates=8, num_concepts=64, difficulty=(0.2, 1.5),
                            lanes=LANES, world_seed=0):
    """`n` examples as tensors: query (n, d), candidates (n, K, d), centroid (n, d), target (n, d), difficulty (n,),
    and `lane`, a list of names. Deterministic in (`seed`, `world_seed`)."""
    if n < 1 or num_candidates < 1:
        raise ValueError(f"n and num_candidates must be >= 1 (got {n}, {num_candidates})")
    unknown = sorted(set(lanes) - set(LANES))
    if unknown:
        raise ValueError(f"unknown lane(s) {unknown}; lanes are {LANES}")
    codebook, query_map, lane_maps = hidden_world(dim, num_concepts, world_seed)
    g = torch.Generator().manual_seed(seed)

    def noise(*shape):
        return torch.randn(*shape, dim, generator=g) / dim**0.5

    def unit(x):
        return torch.nn.functional.normalize(x, dim=-1)

    concept = torch.randint(num_concepts, (n,), generator=g)
    others = (concept[:, None] + torch.randint(1, num_concepts, (n, num_candidates - 1), generator=g)) % num_concepts
    lo, hi = difficulty
    sigma = lo + (hi - lo) * torch.rand(n, generator=g)
    true_candidate = unit(codebook[concept] + sigma[:, None] * noise(n))
    distractors = unit(codebook[others] + DISTRACTOR_NOISE * noise(n, num_candidates - 1))
    candidates = torch.cat([true_candidate[:, None], distractors], dim=1)
    order = torch.argsort(torch.rand(n, num_candidates, generator=g), dim=1)
    candidates = torch.gather(candidates, 1, order[..., None].expand(-1, -1, dim))
    lane_index = torch.randint(len(lanes), (n,), generator=g)
    lane_names = [lanes[i] for i in lane_index.tolist()]
    maps = torch.stack([lane_maps[lane] for lane in lanes])[lane_index]  # (n, d, d)
    return {
        "query": unit(codebook[concept] @ query_map.T + sigma[:, None] * noise(n)),
        "candidates": candidates,
        "centroid": unit(candidates.mean(1) + CENTROID_NOISE * noise(n)),
        "target": unit(torch.einsum("nij,nj->ni", maps, codebook[concept])),
        "difficulty": sigma,
        "lane": lane_names,
    }


def build_dataset(n, seed, **kwargs):
    """A `datasets.Dataset` of `make_retrieval_examples`, formatted as torch tensors."""
    examples = make_retrieval_examples(n, seed, **kwargs)
    columns = {key: value.tolist() if torch.is_tensor(value) else value for key, value in examples.items()}
    return Dataset.from_dict(columns).with_format("torch", columns=["query", "candidates", "centroid", "target",
                                                                     "difficulty"], output_all_columns=True)


def build_splits(train_size=20_000, eval_size=2_000, seed=0, **kwargs):
    """Train / validation / test with independent seeds; the hidden world is shared."""
    return DatasetDict({
        "train": build_dataset(train_size, seed, **kwargs),
        "validation": build_dataset(eval_size, seed + 1_000_000, **kwargs),
        "test": build_dataset(eval_size, seed + 2_000_000, **kwargs),
    })


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train_size", type=int, default=20_000)
    parser.add_argument("--eval_size", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_splits(args.train_size, args.eval_size, args.seed).save_to_disk(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
