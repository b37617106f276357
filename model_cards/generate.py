"""Write a checkpoint's model card (README.md) from its training config and, when present, its benchmark JSON.

    python -m model_cards.generate CHECKPOINT_DIR [--results ood_hops.json] [--repo_id user/name]
"""

import argparse
import json
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).with_name("template.md")


def training_record(model_dir):
    """What the trainer wrote into a local checkpoint about its run: the trained hop range (up to the hops its
    curriculum reached, where the checkpoint records them), the command line and the training wall time (None where
    the checkpoint does not say)."""
    model_dir = Path(model_dir)
    record = {"trained_hops": None, "training_command": None, "train_seconds": None}
    results_file = model_dir / "train_results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    record["train_seconds"] = results.get("train_runtime")
    config_file = model_dir / "training_config.yaml"
    if config_file.is_file():
        run_config = yaml.safe_load(config_file.read_text())
        data = run_config.get("data", {})
        record["trained_hops"] = [data.get("min_hops"), results.get("trained_max_hops", data.get("max_hops"))]
        record["training_command"] = run_config.get("command")
    return record


def eval_results(results, dataset_name):
    """One `model-index` entry per hop count and metric, with the numbers exactly as in the benchmark JSON."""
    entries = []
    for hops, row in results["per_hop"].items():
        for metric in ("answer_exact_match", "trace_exact_match", "halt_rate"):
            entries.append(EvalResult(
                task_type="text-generation", dataset_type="hop_chains", dataset_name=dataset_name,
                dataset_config=results["variant"], dataset_split=f"ood_hops_{hops}",
                dataset_args={"seed": results["seed"], "n": row["n"]}, metric_type=metric,
                metric_name=f"{metric} @ {hops} hops", metric_value=row[metric],
            ))
    return entries


def results_table(results):
    if results is None:
        return "Not benchmarked yet: run `python benchmarks/ood_hops.py --model PATH`."
    lines = ["| hops | n | answer EM (95% CI) | trace EM (95% CI) | halt at hops+1 | mean loops |", "|---|---|---|---|---|---|"]
    for hops, r in results["per_hop"].items():
        lines.append(
            f"| {hops} | {r['n']} | {100 * r['answer_exact_match']:.1f} ({100 * r['answer_exact_match_ci95'][0]:.1f}-"
            f"{100 * r['answer_exact_match_ci95'][1]:.1f}) | {100 * r['trace_exact_match']:.1f} "
            f"({100 * r['trace_exact_match_ci95'][0]:.1f}-{100 * r['trace_exact_match_ci95'][1]:.1f}) | "
            f"{100 * r['halt_rate']:.1f} | {r['mean_loops']:.2f} |"
        )
    return "\n".join(lines) + f"\n\nVariant `{results['variant']}`, seed {results['seed']}, fresh prompts."


def limits(results):
    if results is None:
        return ""
    weak = [h for h, r in results["per_hop"].items() if r["answer_exact_match"] < 0.99]
    if not weak:
        return "Every benchmarked hop count reached >= 99% answer exact match."
    return f"Answer exact match falls below 99% at {', '.join(map(str, weak))} hops."


def build_model_card(checkpoint_dir, results_path=None, repo_id=None):
    """The card of a checkpoint, built from its files; `repo_id` names the Hub repo in the loading snippet."""
    checkpoint_dir = Path(checkpoint_dir)
    config = json.loads((checkpoint_dir / "config.json").read_text())
    config_file = checkpoint_dir / "training_config.yaml"
    training = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    trained_hops = training_record(checkpoint_dir)["trained_hops"] or ["?", "?"]
    results_path = Path(results_path) if results_path else checkpoint_dir / "ood_hops.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    name = repo_id or checkpoint_dir.resolve().name
    data = training.get("data", {})
    card_data = ModelCardData(
        library_name="transformers", license="apache-2.0", tags=["recursive-latent", "looped", "multi-hop"],
        model_name=name, eval_results=eval_results(results, "hop_chains") if results else None,
    )
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=name, repo_or_path=repo_id or str(checkpoint_dir),
        backbone_type=config["backbone_config"]["model_type"], backbone_mode=config["backbone_mode"],
        core_design=config["core_design"], core_block=config["core_block"], variant=data.get("variant", "?"),
        train_hops="-".join(map(str, trained_hops)), results_table=results_table(results),
        training_config=yaml.safe_dump(training, sort_keys=False).strip(), limits=limits(results),
    )
    return card


def write_model_card(checkpoint_dir, results_path=None, repo_id=None):
    card = build_model_card(checkpoint_dir, results_path, repo_id)
    card.save(Path(checkpoint_dir) / "README.md")
    return card


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--results", default=None, help="benchmark JSON (default: CHECKPOINT/ood_hops.json)")
    parser.add_argument("--repo_id", default=None)
    args = parser.parse_args()
    write_model_card(args.checkpoint, args.results, args.repo_id)
    print(f"wrote {Path(args.checkpoint) / 'README.md'}")


if __name__ == "__main__":
    main()
