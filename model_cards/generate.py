"""Write a checkpoint's model card (README.md) from its training config and, when present, its benchmark JSON
(`ood_hops.json` for the hop task, `evaluate_file.json` for a user's data).

    python -m model_cards.generate CHECKPOINT_DIR [--results ood_hops.json] [--repo_id user/name]
"""

import argparse
import json
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).with_name("template.md")
RESULT_FILES = ("ood_hops.json", "evaluate_file.json")


def read_run_config(model_dir):
    """A local checkpoint's training_config.yaml (how the trainer ran it), or {} where it has none."""
    config_file = Path(model_dir) / "training_config.yaml"
    return yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}


def training_record(model_dir):
    """What the trainer wrote into a local checkpoint about its run: the trained hop range (up to the hops its
    curriculum reached, where the checkpoint records them), the command line and the training wall time (None where
    the checkpoint does not say; summed over resumes where the checkpoint knows it)."""
    model_dir = Path(model_dir)
    record = {"trained_hops": None, "training_command": None, "train_seconds": None}
    results_file = model_dir / "train_results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    record["train_seconds"] = results.get("train_seconds_total", results.get("train_runtime"))
    run_config = read_run_config(model_dir)
    if run_config:
        data, source = run_config.get("data", {}), run_config.get("data_source", {})
        if source.get("source") in ("file", "dataset"):  # the steps range of the training examples
            record["trained_hops"] = [source["steps"][0], results.get("trained_max_hops", source["steps"][1])]
        else:
            record["trained_hops"] = [data.get("min_hops"), results.get("trained_max_hops", data.get("max_hops"))]
        record["training_command"] = run_config.get("command")
    return record


def data_description(training):
    """One line on the data a checkpoint was trained on, from its training_config.yaml."""
    source, data = training.get("data_source") or {}, training.get("data", {})
    if source.get("source") in ("file", "dataset"):
        text = f"`{Path(source['train']).name}` ({source['train_examples']:,} examples of {source['steps'][0]}-" \
               f"{source['steps'][1]} steps"
        text += f", sha256 `{source['train_sha256'][:12]}`)" if "train_sha256" in source else ")"
        if "validation" in source:
            text += f", validated on `{Path(source['validation']).name}` ({source['validation_examples']:,} examples)"
        return text
    return (f"generated {data.get('variant', '?')} hop chains (`dataset_scripts/hop_chains.py`, lane "
            f"`{data.get('lane') or 'pointer'}`, {data.get('min_distractors', '?')}-{data.get('max_distractors', '?')} "
            f"distractor chains of {data.get('min_distractor_hops', '?')}-{data.get('max_distractor_hops', '?')} hops)")


def find_results(checkpoint_dir, results_path=None):
    """The benchmark JSON of a checkpoint (the one given, else `ood_hops.json` or `evaluate_file.json` inside it),
    or None."""
    candidates = [Path(results_path)] if results_path else [Path(checkpoint_dir) / name for name in RESULT_FILES]
    found = next((path for path in candidates if path.is_file()), None)
    return json.loads(found.read_text()) if found else None


def per_group(results):
    """The per-hop (hop benchmark) or per-steps (file benchmark) rows, and what a group is called."""
    return (results["per_hop"], "hops") if "per_hop" in results else (results["per_steps"], "steps")


def eval_results(results):
    """One `model-index` entry per group (hop count or number of steps) and metric, with the numbers exactly as in
    the benchmark JSON."""
    rows, group = per_group(results)
    hop_task = group == "hops"
    entries = []
    for size, row in rows.items():
        for metric in ("answer_exact_match", "trace_exact_match", "halt_rate"):
            entries.append(EvalResult(
                task_type="text-generation", dataset_type="hop_chains" if hop_task else "json",
                dataset_name="hop_chains" if hop_task else Path(results["data"]).name,
                dataset_config=results.get("variant"), dataset_split=f"ood_hops_{size}" if hop_task else f"steps_{size}",
                dataset_args={"seed": results["seed"], "n": row["n"]}, metric_type=metric,
                metric_name=f"{metric} @ {size} {group}", metric_value=row[metric],
            ))
    return entries


def results_table(results):
    if results is None:
        return ("Not benchmarked yet: run `python benchmarks/ood_hops.py --model PATH` (hop chains) or "
                "`python benchmarks/evaluate_file.py --model PATH --data FILE`.")
    rows, group = per_group(results)
    lines = [f"| {group} | n | answer EM (95% CI) | trace EM (95% CI) | halt at {group}+1 | mean loops |",
             "|---|---|---|---|---|---|"]
    for size, r in rows.items():
        lines.append(
            f"| {size} | {r['n']} | {100 * r['answer_exact_match']:.1f} ({100 * r['answer_exact_match_ci95'][0]:.1f}-"
            f"{100 * r['answer_exact_match_ci95'][1]:.1f}) | {100 * r['trace_exact_match']:.1f} "
            f"({100 * r['trace_exact_match_ci95'][0]:.1f}-{100 * r['trace_exact_match_ci95'][1]:.1f}) | "
            f"{100 * r['halt_rate']:.1f} | {r['mean_loops']:.2f} |"
        )
    if group == "hops":
        return "\n".join(lines) + f"\n\nVariant `{results['variant']}`, seed {results['seed']}, fresh prompts."
    return "\n".join(lines) + f"\n\nOn `{Path(results['data']).name}` ({results['n']:,} examples): `{results['command']}`."


def limits(results):
    if results is None:
        return ""
    rows, group = per_group(results)
    weak = [size for size, r in rows.items() if r["answer_exact_match"] < 0.99]
    if not weak:
        return f"Every benchmarked {group} count reached >= 99% answer exact match."
    return f"Answer exact match falls below 99% at {', '.join(map(str, weak))} {group}."


def build_model_card(checkpoint_dir, results_path=None, repo_id=None, location=None):
    """The card of a checkpoint, built from its files; the loading snippet names `repo_id` (a Hub repo), else
    `location` (where the checkpoint will be read from, if it is being written elsewhere), else the directory."""
    checkpoint_dir = Path(checkpoint_dir)
    config = json.loads((checkpoint_dir / "config.json").read_text())
    training = read_run_config(checkpoint_dir)
    trained_hops = training_record(checkpoint_dir)["trained_hops"] or ["?", "?"]
    results = find_results(checkpoint_dir, results_path)
    name = repo_id or Path(location or checkpoint_dir).resolve().name
    source = training.get("data_source") or {}
    on_files = source.get("source") in ("file", "dataset")
    card_data = ModelCardData(
        library_name="transformers", license="apache-2.0", tags=["recursive-latent", "looped", "multi-hop"],
        model_name=name, eval_results=eval_results(results) if results else None,
    )
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=name, repo_or_path=repo_id or str(location or checkpoint_dir),
        backbone_type=config["backbone_config"]["model_type"], backbone_mode=config["backbone_mode"],
        core_design=config["core_design"], core_block=config["core_block"], training_data=data_description(training),
        train_range=f"{'-'.join(map(str, trained_hops))} {'steps' if on_files else 'hops'}",
        example_question=json.dumps(source.get("example_question", "A = dog. B = A. What is B?\nAnswer:")),
        results_table=results_table(results), training_config=yaml.safe_dump(training, sort_keys=False).strip(),
        task="the examples of its training data" if on_files else
             "multi-hop variable lookup in the project's prompt format (`A = dog. B = A. What is B?\\nAnswer:`)",
        limits=limits(results),
    )
    return card


def write_model_card(checkpoint_dir, results_path=None, repo_id=None, location=None):
    card = build_model_card(checkpoint_dir, results_path, repo_id, location)
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
