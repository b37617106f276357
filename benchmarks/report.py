"""Render the benchmark JSON files into docs/results.md (every number there comes from a JSON or CSV file).

    python benchmarks/report.py [--run outputs/default/final [--name default]] [--docs docs]

With `--run CHECKPOINT`, first runs the suite on it (ood_hops, depth_sweep, inference_ablations, probes,
throughput) and copies the JSON files and plots into `--docs` as `<benchmark>_<name>.*` (`--name default_mamba2`
for the Mamba2 default); then renders every table it finds. The narrative (how each default was found) is
docs/experiments.md.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
# docs/<file> -> (section, what the run is). Sections are rendered in the order of SECTIONS.
OOD_RUNS = {
    "ood_hops_default.json": ("default", "default (GPT-2 backbone, looped latent core, token halting, Muon on the "
                                         "core, 6,500 steps): `make demo`"),
    "ood_hops_default_on_chain.json": ("default", "default, evaluated on the seed's `chain` format"),
    "ood_hops_default_6000_steps.json": ("default", "default with 6,000 steps (`make demo` with `max_steps: 6000`)"),
    "ood_hops_default_8000_steps.json": ("default", "default before the step cut: 8,000 steps, tanh GELU in the "
                                                    "backbone (the config of the Muon rows below)"),
    "ood_hops_default_8000_steps_on_chain.json": ("default", "default before the step cut (8,000 steps), evaluated on "
                                                             "the seed's `chain` format"),
    "ood_hops_default_seed1.json": ("default", "default before the step cut (8,000 steps), second training seed "
                                               "(`--seed 1`)"),
    "ood_hops_default_5000_steps.json": ("default", "default before the step cut trained for 5,000 steps instead of "
                                                    "8,000 (`--max_steps 5000`)"),
    "ood_hops_default_adamw.json": ("default", "default before the Muon switch (AdamW on every weight): the config "
                                               "the trained ablations below change one switch of"),
    "ood_hops_default_adamw_on_chain.json": ("default", "default before the Muon switch, evaluated on the seed's "
                                                        "`chain` format"),
    "ood_hops_default_no_ema.json": ("default", "default before the EMA switch (no EMA): the config the baselines and "
                                                "the first trained ablations change one switch of"),
    "ood_hops_baseline_no_loop.json": ("baselines", "baseline: no loop (one core pass, answer only)"),
    "ood_hops_baseline_fixed_depth.json": ("baselines", "baseline: fixed depth (6 loops, answer only at the last)"),
    "ood_hops_baseline_cot.json": ("baselines", "baseline: token recurrence (GPT-2 LM writes the path as tokens)"),
    "ood_hops_ablation_no_lifeline.json": ("ablations", "no lifeline (`--lifeline false`), before the EMA switch"),
    "ood_hops_ablation_loop_rotary.json": ("ablations", "loop rotary on (`--loop_rotary true`), before the EMA switch"),
    "ood_hops_ablation_no_latent_norm.json": ("ablations", "no LayerNorm on the latent after each loop "
                                                           "(`--latent_norm false`)"),
    "ood_hops_ablation_no_curriculum.json": ("ablations", "no hop curriculum: 1-5 hops from the first step "
                                                          "(`--curriculum false`)"),
    "ood_hops_ablation_ema.json": ("ablations", "EMA of the weights (`--ema_decay 0.999`), the switch to the default"),
    "ood_hops_ablation_truncated_bptt.json": ("ablations", "truncated backprop, last 2 loops of the batch "
                                                           "(`--grad_loops 2`)"),
    "ood_hops_ablation_lora.json": ("ablations", "LoRA r8 on the stage-1 LM-pretrained backbone (`--backbone_mode lora`)"),
    "ood_hops_ablation_frozen.json": ("ablations", "frozen stage-1 LM-pretrained backbone (`--backbone_mode frozen`), on "
                                                   "the Muon default"),
    "ood_hops_distractors_0_3.json": ("ablations", "0-3 distractor chains in training (`--min_distractors 0`)"),
    "ood_hops_distractors_0_3_on_chain.json": ("ablations", "0-3 distractor chains in training, evaluated on the "
                                                            "seed's `chain` format"),
    "ood_hops_distractors_0_4.json": ("ablations", "0-4 distractor chains in training (`--min_distractors 0 "
                                                   "--max_distractors 4`)"),
    "ood_hops_distractors_0_4_on_chain.json": ("ablations", "0-4 distractor chains in training, evaluated on the "
                                                            "seed's `chain` format"),
    "ood_hops_ablation_mamba2_core.json": ("ablations", "Mamba2 block as the core (`--core_block mamba2`)"),
    "ood_hops_ablation_frozen_no_positions.json": ("ablations", "frozen backbone without position embeddings "
                                                                "(`--backbone_mode frozen --backbone_positions false`)"),
    "ood_hops_ablation_frozen_no_positions_more.json": ("ablations", "frozen backbone without position embeddings + "
                                                                     "6,000 more steps on 1-5 hops"),
    "ood_hops_ablation_frozen_long_prompts.json": ("ablations", "that frozen model + 4,000 more steps with 1-12 "
                                                                "distractor chains (longer prompts)"),
    "ood_hops_ablation_frozen_no_positions_no_curriculum.json": ("ablations", "frozen backbone without position "
                                                                              "embeddings, 1-5 hops from the first step "
                                                                              "(`--curriculum false`)"),
    "ood_hops_ablation_lora_no_positions.json": ("ablations", "LoRA r8 on a backbone without position embeddings "
                                                              "(`--backbone_mode lora --backbone_positions false`, "
                                                              "8,000 steps)"),
    "ood_hops_ablation_lora_no_positions_more.json": ("ablations", "that LoRA model + 6,000 more steps on 1-5 hops "
                                                                   "(no curriculum; new LoRA r8 on its merged "
                                                                   "backbone)"),
    "ood_hops_ablation_lora_no_positions_more_2.json": ("ablations", "that LoRA model + 6,000 more steps again "
                                                                     "(20,000 in all)"),
    "ood_hops_ablation_lora_no_positions_long_prompts.json": ("ablations", "that LoRA model + 4,000 steps on 1-5 hops "
                                                                           "with 1-12 distractor chains (longer "
                                                                           "prompts)"),
    "ood_hops_ablation_lora_no_positions_no_curriculum.json": ("ablations", "LoRA r8 on a backbone without position "
                                                                            "embeddings, 1-5 hops from the first step "
                                                                            "(`--curriculum false`, 8,000 steps)"),
    "ood_hops_ablation_lora_no_positions_no_curriculum_longer_prompts.json": (
        "ablations", "that LoRA r8 model + 1,500 steps with 2-16 distractor chains of 1-8 hops (Mamba2's stage 2)"),
    "ood_hops_ablation_lora64_no_positions_no_curriculum.json": ("ablations", "LoRA r64 (`--lora_r 64 --lora_alpha "
                                                                              "128`), otherwise as the LoRA r8 run "
                                                                              "without the curriculum"),
    "ood_hops_ablation_frozen_long_text_lm.json": ("ablations", "frozen backbone without position embeddings, LM "
                                                                "stage on long text (2-16 distractor chains), then "
                                                                "8,000 steps on 1-5 hops (`--curriculum false`)"),
    "ood_hops_ablation_frozen_long_text_lm_longer_prompts.json": (
        "ablations", "that frozen model + 1,500 steps with 2-16 distractor chains of 1-8 hops (Mamba2's stage 2)"),
    "ood_hops_ablation_frozen_lm6000.json": ("ablations", "frozen backbone without position embeddings, 6,000 LM "
                                                          "steps in stage 1 (`--pretrain_steps 6000`), then 8,000 "
                                                          "steps on 1-5 hops (`--curriculum false`)"),
    "ood_hops_ablation_frozen_lm6000_longer_prompts.json": (
        "ablations", "that frozen model + 1,500 steps with 2-16 distractor chains of 1-8 hops (Mamba2's stage 2)"),
    "ood_hops_ablation_frozen_lm6000_more.json": ("ablations", "that frozen model (6,000 LM steps) + 6,000 more steps "
                                                               "on 1-5 hops (14,000 in all)"),
    "ood_hops_ablation_frozen_lm6000_more_2.json": ("ablations", "that 14,000-step frozen model + 6,000 more steps "
                                                                 "on 1-5 hops (20,000 in all; control for the next "
                                                                 "two)"),
    "ood_hops_ablation_frozen_lm6000_more_longer_prompts.json": (
        "ablations", "that 14,000-step frozen model + 1,500 steps with 2-16 distractor chains of 1-8 hops (Mamba2's "
                     "stage 2)"),
    "ood_hops_ablation_frozen_lm6000_longest_prompts.json": (
        "ablations", "that model + 1,000 steps with 4-24 distractor chains of 1-5 hops (Mamba2's stage 3 within "
                     "GPT-2's 512 positions): the best frozen curve"),
    "ood_hops_ablation_frozen_lm6000_longest_prompts_on_chain.json": ("ablations", "the best frozen model, evaluated "
                                                                                   "on the seed's `chain` format"),
    "ood_hops_ablation_frozen_lm6000_stage4.json": (
        "ablations", "the best frozen model + 2,000 more steps of its stage 3 (4-24 distractor chains of 1-5 hops)"),
    "ood_hops_ablation_frozen_lm6000_stage3_hops10.json": (
        "ablations", "the stage-2 frozen model + 1,000 steps with 4-24 distractor chains of 1-10 hops (Mamba2's "
                     "stage 3 as it ran there, past 512 tokens)"),
    "ood_hops_ablation_frozen_base_lora_longer_prompts.json": (
        "ablations", "LoRA r8 added to the 14,000-step frozen model (`--init_from ... --backbone_mode lora`) + "
                     "Mamba2's stage 2 (1,500 steps, 2-16 distractor chains of 1-8 hops)"),
    "ood_hops_ablation_frozen_base_lora_longest_prompts.json": (
        "ablations", "that LoRA model + 1,000 steps with 4-24 distractor chains of 1-5 hops (the frozen recipe's "
                     "stage 3): the best adapted-backbone curve"),
    "ood_hops_ablation_frozen_base_lora_longest_prompts_on_chain.json": (
        "ablations", "that LoRA model, evaluated on the seed's `chain` format"),
    "ood_hops_ablation_frozen_lm15000.json": ("ablations", "frozen backbone without position embeddings, 15,000 "
                                                           "LM steps in stage 1 (`--pretrain_steps 15000`), then "
                                                           "8,000 steps on 1-5 hops (`--curriculum false`)"),
    "ood_hops_ablation_frozen_lm15000_more.json": ("ablations", "that frozen model + 6,000 more steps on 1-5 hops "
                                                                "(14,000 in all): meets the depth targets"),
    "ood_hops_ablation_frozen_lm15000_more_on_chain.json": ("ablations", "that frozen model, evaluated on the "
                                                                         "seed's `chain` format"),
    "ood_hops_ablation_frozen_lm15000_longer_prompts.json": (
        "ablations", "that frozen model + 1,500 steps with 2-16 distractor chains of 1-8 hops (Mamba2's stage 2)"),
    "ood_hops_ablation_frozen_lm15000_longest_prompts.json": (
        "ablations", "that model + 1,000 steps with 4-24 distractor chains of 1-5 hops (the frozen recipe's stage 3): "
                     "the best frozen curve"),
    "ood_hops_ablation_frozen_lm15000_longest_prompts_on_chain.json": (
        "ablations", "that model, evaluated on the seed's `chain` format"),
    "ood_hops_ablation_frozen_lm15000_lora_more.json": (
        "ablations", "LoRA r8 added to the 8,000-step frozen model on the 15,000-step LM (`--init_from ... "
                     "--backbone_mode lora`), 6,000 steps on 1-5 hops: meets the depth targets"),
    "ood_hops_ablation_frozen_lm15000_lora_more_on_chain.json": (
        "ablations", "that LoRA model, evaluated on the seed's `chain` format"),
    "ood_hops_ablation_lora_lm6000.json": ("ablations", "LoRA r8 on a backbone without position embeddings, 6,000 LM "
                                                        "steps in stage 1, then 8,000 steps on 1-5 hops "
                                                        "(`--curriculum false`)"),
    "ood_hops_halt_head_extra_loops.json": ("depth", "from scratch, before the EMA switch: halting head + 0-4 extra "
                                                     "loops past <HALT>"),
    "ood_hops_finetune_control.json": ("depth", "default before the EMA switch + 2,000 more steps as it was trained "
                                                "(control)"),
    "ood_hops_finetune_extra_loops.json": ("depth", "default before the EMA switch + 2,000 steps with a halting head "
                                                    "and 0-4 extra loops"),
    "ood_hops_finetune_extra_loops_ema.json": ("depth", "default + 2,000 steps with a halting head and 0-4 extra loops"),
    "ood_hops_no_positions.json": ("depth", "GPT-2 backbone without position embeddings, before the EMA switch"),
    "ood_hops_newton_schulz.json": ("depth", "Newton-Schulz orthogonalised latent (`--latent_newton_schulz true`)"),
    "ood_hops_default_mamba2.json": ("mamba2", "default_mamba2: last-layer memory, no binding conv, Muon on the core, "
                                               "EMA, no hop curriculum, 16,000 steps"),
    "ood_hops_default_mamba2_rerun.json": ("mamba2", "default_mamba2, second run of the same command"),
    "ood_hops_default_mamba2_rerun_no_distractors.json": ("mamba2", "default_mamba2 second run, on prompts without "
                                                                    "distractors (length set by the hops)"),
    "ood_hops_default_mamba2_rerun_many_distractors.json": ("mamba2", "default_mamba2 second run, on prompts with 12 "
                                                                      "distractor chains of 5 hops (long, few hops)"),
    "ood_hops_mamba2_rerun_longer_prompts.json": ("mamba2", "default_mamba2 second run + 1,500 steps on 1-5 "
                                                            "hops with 2-16 distractor chains of 1-8 hops"),
    "ood_hops_mamba2_longest_prompts.json": ("mamba2", "default_mamba2 second run + 1,500 steps with 2-16 distractor "
                                                       "chains of 1-8 hops + 1,000 with 4-24 chains of 1-10 hops (the "
                                                       "Mamba2 recipe that meets the depth targets)"),
    "ood_hops_mamba2_longest_prompts_deeper.json": ("mamba2", "that recipe's model at 96 and 128 hops (`--max_loops "
                                                              "140`)"),
    "ood_hops_mamba2_longest_prompts_on_chain.json": ("mamba2", "that recipe's model, evaluated on the seed's `chain` "
                                                                "format"),
    "ood_hops_mamba2_rerun_longer_prompts_on_chain.json": ("mamba2", "that longer-prompt run, evaluated on the seed's "
                                                                     "`chain` format"),
    "ood_hops_mamba2_rerun_longer_prompts_3k.json": ("mamba2", "default_mamba2 second run + 3,000 steps with those "
                                                               "longer prompts"),
    "ood_hops_mamba2_rerun_longer_prompts_no_distractors.json": ("mamba2", "that longer-prompt run on prompts without "
                                                                           "distractors"),
    "ood_hops_mamba2_rerun_longer_prompts_many_distractors.json": ("mamba2", "that longer-prompt run on prompts with 12 "
                                                                             "distractor chains of 5 hops"),
    "ood_hops_mamba2_default_long_prompts.json": ("mamba2", "default_mamba2 + 3,000 steps on 1-5 hops with 1-12 "
                                                            "distractor chains (longer prompts)"),
    "ood_hops_mamba2_default_long_prompts_2.json": ("mamba2", "that default_mamba2 long-prompt run + 3,000 more "
                                                              "steps with 1-12 distractor chains"),
    "ood_hops_mamba2_default_control.json": ("mamba2", "default_mamba2 + 3,000 steps on 1-5 hops with its 1-3 "
                                                       "distractor chains (control)"),
    "ood_hops_mamba2_curriculum.json": ("mamba2", "default_mamba2 with the hop curriculum (the default before), 16,000 "
                                                  "steps"),
    "ood_hops_mamba2_6000_steps.json": ("mamba2", "default_mamba2 with the hop curriculum, 6,000 steps"),
    "ood_hops_mamba2_long_prompts.json": ("mamba2", "the curriculum run + 3,000 steps on 1-5 hops with 1-12 distractor "
                                                    "chains (longer prompts)"),
    "ood_hops_mamba2_long_prompts_2.json": ("mamba2", "that curriculum long-prompt run + 3,000 more steps with 1-12 "
                                                      "distractor chains"),
    "ood_hops_mamba2_long_prompts_control.json": ("mamba2", "the curriculum run + 3,000 steps on 1-5 hops with its 1-3 "
                                                            "distractor chains (control)"),
    "ood_hops_mamba2_conv_adamw.json": ("mamba2", "default_mamba2 before: embedding conv, all-layer memory, AdamW, no "
                                                  "EMA"),
    "ood_hops_mamba2_baseline_no_loop.json": ("mamba2", "Mamba2 baseline: no loop (one core pass, answer only)"),
    "ood_hops_mamba2_baseline_fixed_depth.json": ("mamba2", "Mamba2 baseline: fixed depth (6 loops, answer only at the "
                                                            "last)"),
    "ood_hops_mamba2_baseline_cot.json": ("mamba2", "Mamba2 baseline: token recurrence (Mamba2 LM writes the path as "
                                                    "tokens)"),
    "ood_hops_mamba2_baseline_cot_6000_steps.json": ("mamba2", "Mamba2 baseline: token recurrence trained for 6,000 "
                                                               "steps (the budget of the 6,000-step row above)"),
    "ood_hops_lane_arith.json": ("lanes", "`arith` lane adapter on the default model (before the EMA switch)"),
    "ood_hops_lane_arith_r32.json": ("lanes", "`arith` lane adapter of rank 32 (43,008 parameters, 12.7% of the shared "
                                              "model, over the 2% target) on the default model, 4,500 steps"),
    "ood_hops_lane_arith_r32_10k.json": ("lanes", "`arith` lane adapter of rank 32 on the default model, 10,000 steps"),
    "ood_hops_arith_base.json": ("lanes", "the whole model trained on the `arith` lane from scratch (no adapter; what "
                                          "the architecture reaches when all its weights learn the task)"),
    "ood_hops_mix_base.json": ("lanes", "shared model trained with a quarter of its rows from `+`-only arith chains "
                                        "(`--mix_arith 0.25 --arith_ops +`), on the pointer lane"),
    "ood_hops_mix_base_arith_plus_shared.json": ("lanes", "that shared model on `+`-only arith chains, no adapter"),
    "ood_hops_mix_base_arith_shared.json": ("lanes", "that shared model on arith chains with `+ - *`, no adapter"),
    "ood_hops_mix_lane_arith_20k.json": ("lanes", "`arith` lane adapter of rank 5 (6,720 parameters, 1.98%) on that "
                                                  "shared model, 20,000 steps"),
    "ood_hops_mix_lane_arith_30k.json": ("lanes", "`arith` lane adapter of rank 5 on that shared model, 30,000 steps"),
    "ood_hops_mix_lane_arith_50k.json": ("lanes", "that 30,000-step adapter + 20,000 steps on 1-5 hops (no "
                                                  "curriculum)"),
    "ood_hops_mix_lane_arith_nocurr.json": ("lanes", "a new rank-5 `arith` adapter on that shared model, 1-5 hops from "
                                                      "the first step (no curriculum), 20,000 steps"),
    "ood_hops_mix_lane_arith_nocurr_more.json": ("lanes", "that adapter + 24,000 more steps (no curriculum)"),
    "ood_hops_mix_all.json": ("lanes", "shared model trained with a quarter of its rows from arith chains with "
                                       "`+ - *` (`--mix_arith 0.25`), on the pointer lane"),
    "ood_hops_mix_all_arith_shared.json": ("lanes", "that shared model on arith chains, no adapter"),
    "ood_hops_mix_all_lane_arith.json": ("lanes", "`arith` lane adapter of rank 5 (6,720 parameters, 1.98%) on that "
                                                  "shared model, 6,000 steps"),
}
# Each backbone's looped model against its three baselines trained on the same recipe, one panel each
# (docs/img/baselines.png). The baselines were trained with the hop curriculum, so the Mamba2 panel shows the
# looped model trained with it too; the Mamba2 default (no curriculum) is in the "Mamba2 backbone" table.
BASELINE_PANELS = {
    "GPT-2 backbone (default)": ["ood_hops_default.json", "ood_hops_baseline_no_loop.json",
                                 "ood_hops_baseline_fixed_depth.json", "ood_hops_baseline_cot.json"],
    "Mamba2 backbone (all four with the hop curriculum)": [
        "ood_hops_mamba2_curriculum.json", "ood_hops_mamba2_baseline_no_loop.json",
        "ood_hops_mamba2_baseline_fixed_depth.json", "ood_hops_mamba2_baseline_cot.json"],
}
PANEL_LEGEND = ["looped core, token halting", "no loop", "fixed depth (6 loops)", "token recurrence"]
SECTIONS = {
    "default": "The default run",
    "baselines": "Baselines (same config, data and budget)",
    "ablations": "Trained ablations (the default config with one switch changed)",
    "depth": "Depth extrapolation: halting head, extra loops, positions, stabilisers",
    "mamba2": "Mamba2 backbone",
    "lanes": "Lanes",
}


def pct(x):
    return f"{100 * x:.1f}"


def ci(row, key):
    low, high = row[f"{key}_ci95"]
    return f"{pct(row[key])} [{pct(low)}, {pct(high)}]"


def ood_table(path, label):
    r = json.loads(path.read_text())
    command = r.get("command") or f"python benchmarks/ood_hops.py --model {r['model']} --variant {r['variant']}"
    lines = [f"### {label}", "", f"`{path.name}` from `{command}`: {r['n']} fresh prompts per hop count, seed "
             f"{r['seed']} + hops, {r['seconds']:.0f} s."]
    if r.get("training_command"):
        trained = f" in {r['train_seconds']:.0f} s" if r.get("train_seconds") else ""
        lines[-1] += f" Trained{trained} by `{r['training_command']}`."
    # Runs measured before prompt lengths were recorded have no such column.
    lengths = all("mean_prompt_tokens" in row for row in r["per_hop"].values())
    lines += ["",
             "| hops | answer % [95% CI] | trace % [95% CI] | halt at hops+1 % | mean loops | examples/s |"
             + (" prompt tokens |" if lengths else ""),
             "|---|---|---|---|---|---|" + ("---|" if lengths else "")]
    for hops, row in r["per_hop"].items():
        lines.append(f"| {hops} | {ci(row, 'answer_exact_match')} | {ci(row, 'trace_exact_match')} | "
                     f"{pct(row['halt_rate'])} | {row['mean_loops']:.2f} | {row['examples_per_second']:.0f} |"
                     + (f" {row['mean_prompt_tokens']:.0f} |" if lengths else ""))
    return lines


def comparison_tables(docs):
    """Answer and trace exact match of every `shuffled` pointer-lane run side by side, per hop count."""
    runs = {}
    for name, (_, label) in OOD_RUNS.items():
        if (docs / name).is_file():
            r = json.loads((docs / name).read_text())
            # Only the standard benchmark: other distractor settings measure other prompts, another loop cap
            # other hop counts.
            standard = all(r.get(option) is None for option in ("distractors", "distractor_hops", "max_loops"))
            if r["variant"] == "shuffled" and r.get("lane", "pointer") == "pointer" and standard:
                runs[name] = label, r
    hops = sorted({int(h) for _, r in runs.values() for h in r["per_hop"]})
    lines = []
    for key, title in (("answer_exact_match", "Answer"), ("trace_exact_match", "Trace")):
        lines += [f"### {title} exact match %, every run (`shuffled`)", "",
                  "| run | " + " | ".join(map(str, hops)) + " |", "|---|" + "---|" * len(hops)]
        for label, r in runs.values():
            cells = [pct(r["per_hop"][str(h)][key]) if str(h) in r["per_hop"] else "" for h in hops]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def baselines_plot(docs):
    """Answer exact match vs hops with 95% intervals: each backbone's looped model against its baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BASELINE_PANELS), figsize=(12, 4), sharey=True)
    for ax, (title, names) in zip(axes, BASELINE_PANELS.items()):
        trained = None
        for name, label in zip(names, PANEL_LEGEND):
            if not (docs / name).is_file():
                continue
            results = json.loads((docs / name).read_text())
            per_hop, trained = results["per_hop"], trained or results.get("trained_hops")
            hops = sorted(int(h) for h in per_hop)
            ax.plot(hops, [100 * per_hop[str(h)]["answer_exact_match"] for h in hops], marker="o", label=label)
            ax.fill_between(hops, *[[100 * per_hop[str(h)]["answer_exact_match_ci95"][i] for h in hops] for i in (0, 1)],
                            alpha=0.2)
        if trained and None not in trained:  # the range the looped model (and its baselines) trained on
            ax.axvspan(trained[0] - 0.5, trained[1] + 0.5, color="grey", alpha=0.15,
                       label=f"trained hops ({trained[0]}-{trained[1]})")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
        ax.set_xlabel("hops")
        ax.set_title(title)
    axes[0].set_ylabel("answer exact match (%)")
    axes[0].set_ylim(0, 101)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    (docs / "img").mkdir(exist_ok=True)
    fig.savefig(docs / "img" / "baselines.png", dpi=110)
    plt.close(fig)
    return ["![default vs baselines](img/baselines.png)", "",
            "Answer exact match (1,000 fresh `shuffled` prompts per hop count, 95% intervals shaded) of each backbone's "
            "looped model against its three baselines, all four trained with the hop curriculum (on Mamba2 the run "
            "before the default dropped it), drawn from the JSON files named in the tables below.", ""]


def ablation_tables(path):
    r = json.loads(path.read_text())
    hops = list(next(iter(r["ablations"].values())))
    lines = [f"### Inference ablations of `{r['model']}` (answer %)", "",
             f"`{path.name}` from `python benchmarks/inference_ablations.py --model {r['model']}`: {r['n']} prompts per "
             f"hop count, seed {r['seed']} + hops, {r['seconds']:.0f} s (ablations and halting modes together).", "",
             "| ablation | " + " | ".join(hops) + " |", "|---|" + "---|" * len(hops)]
    for name, row in r["ablations"].items():
        lines.append(f"| {name} | " + " | ".join(pct(row[h]["answer_exact_match"]) for h in hops) + " |")
    if not r.get("loop_rotary"):
        lines += ["", "Loop rotary off: not applicable, this model is trained without loop rotary."]
    lines += ["", "### Halting modes on the same prompts (answer % / mean loops / examples/s)", "",
              "| halting | " + " | ".join(f"{h} hops" for h in hops) + " |", "|---|" + "---|" * len(hops)]
    for name, row in r["halting"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{pct(row[h]['answer_exact_match'])} / {row[h]['mean_loops']:.1f} / {row[h]['examples_per_second']:.0f}"
            for h in hops) + " |")
    return lines


def throughput_tables(path):
    r = json.loads(path.read_text())
    source = f" from `{r['command']}`, {r['seconds']:.0f} s" if "command" in r else ""
    lines = [f"### `reason()` throughput of `{r['model']}`", "", f"`{path.name}`{source}; torch threads: {r['threads']}.", "",
             "`reason() MB`: the peak memory the `reason` calls add to the loaded model (`-` where the row predates "
             "that measure); `peak RSS MB`: the whole process, imports included.", "",
             "| loops | batch | examples/s | reason() MB | peak RSS MB |", "|---|---|---|---|---|"]
    for row in r["loops"] + r["batch"]:
        added = f"{row['reason_mb']:.1f}" if "reason_mb" in row else "-"
        lines.append(f"| {row['loops']} | {row['batch_size']} | {row['examples_per_second']:.0f} | {added} "
                     f"| {row['peak_rss_mb']:.0f} |")
    if "mixed_hops" in r:
        m = r["mixed_hops"]
        lines += ["", f"Mixed batch ({m['examples']} prompts, {m['hops'][0]}-{m['hops'][1]} hops): {m['sum_of_loops']} "
                      f"example-loops with token halting vs {m['fixed_depth_loops']} at a fixed depth of {m['fixed_depth']} "
                      f"(ratio {m['loop_ratio']:.2f}); wall-time ratio {m['time_ratio']:.2f}."]
    lines += ["", "| parameters | backbone | core | gate |", "|---|---|---|---|"]
    for name, counts in r["parameters"].items():
        lines.append(f"| {name} | {counts['backbone']:,} | {counts['core']:,} | {counts['gate']:,} |")
    return lines


def depth_sweep_table(path):
    rows = list(csv.DictReader(path.open()))
    loops = sorted({int(row["loops"]) for row in rows})
    hops = sorted({int(row["hops"]) for row in rows})
    sidecar = path.with_suffix(".json")  # command and wall time, written by depth_sweep.py beside its CSV
    run = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    source = f"`{run['command']}`, {run['seconds']:.0f} s" if run else "`python benchmarks/depth_sweep.py`"
    lines = [f"### Depth sweep: answer % at loop r, `<HALT>` masked (`{path.name}`)", "",
             f"From {source}: {rows[0]['n']} prompts per hop count, seed "
             f"{int(rows[0]['seed']) - int(rows[0]['hops'])} + hops.", "",
             "| hops | " + " | ".join(f"r = {r}" for r in loops) + " |", "|---|" + "---|" * len(loops)]
    for h in hops:
        cells = {int(row["loops"]): row for row in rows if int(row["hops"]) == h}
        lines.append(f"| {h} | " + " | ".join(pct(float(cells[r]["answer_accuracy"])) if r in cells else "" for r in loops) + " |")
    return lines


def largest_fall(curve):
    """The largest drop from one step to the next (0 for a curve that never falls)."""
    return max([0.0] + [a - b for a, b in zip(curve, curve[1:])])


# The CTR ablation tables, and what the default row's loss was when each was measured.
CTR_TABLES = {
    "ctr_ablations.json": "the default: the monotone hinge, EMA 0.99",
    "ctr_ablations_ema999.json": "the monotone hinge, EMA 0.999 (before the 0.99 switch)",
    "ctr_ablations_no_hinge.json": "the paper's loss, before the monotone hinge, EMA 0.999",
    "ctr_ablations_steps6000.json": "the paper's loss, before the monotone hinge, EMA 0.999",
    "ctr_ablations_train64.json": "the paper's loss, before the monotone hinge, EMA 0.999",
    "ctr_ablations_train16.json": "the paper's loss, before the monotone hinge, EMA 0.999",
}


def ctr_table(path):
    r = json.loads(path.read_text())
    depth = next(iter(r["rows"].values()))["train_steps"]
    lines = [f"### CTR refiner ablations, {r['max_steps']} training steps, trained to depth {depth}, "
             f"{CTR_TABLES[path.name]} (held-out cos(y, y*))",
             "", f"`{path.name}` from `python benchmarks/ctr_ablations.py --max_steps {r['max_steps']}`: seed {r['seed']}. "
             "`largest fall` is the largest drop of the mean cosine from one step to the next, over all 32 steps run "
             "without halting, then over the per-step trace of `refine()` with halting (a stopped example keeps its "
             "answer; `-` where the row predates that measure). `significant falls`: the steps whose mean change, paired "
             "over the same examples, is below zero by more than its 95% interval (fixed depth / halting trace).", "",
             "| row | arguments | pooled y_0 | step 1 | best step | step 16 | step 32 | largest fall | with halting | "
             "largest fall, halting trace | significant falls | mean steps | steps by difficulty quartile | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        c = row["cosine_per_step"]
        best = max(range(len(c)), key=c.__getitem__)
        trace = row.get("trace_cosine_per_step")
        trace_fall = f"{largest_fall(trace):.5f}" if trace else "-"
        falls = (f"{len(row['significant_falls'])} / {len(row['trace_significant_falls'])}"
                 if "significant_falls" in row else "-")
        lines.append(
            f"| {name} | `{' '.join(row['args']) or '-'}` | {row['start_cosine']:.3f} | {c[0]:.3f} | {c[best]:.3f} (s={best + 1}) | "
            f"{c[15]:.3f} | {c[-1]:.3f} | {largest_fall(c):.5f} | {row['halted_cosine']:.3f} | {trace_fall} | {falls} | {row['mean_steps']:.2f} | "
            f"{' / '.join(f'{s:.1f}' for s in row['steps_by_difficulty_quartile'])} | {row['seconds']:.0f} |")
    return lines


def run_suite(checkpoint, docs, name):
    out = Path("outputs/report")
    commands = [
        ["benchmarks/ood_hops.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/depth_sweep.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/inference_ablations.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/probes.py", "--model", checkpoint, "--out", str(out)],
        ["benchmarks/throughput.py", "--model", checkpoint, "--out", str(out)],
    ]
    for command in tqdm(commands, desc="benchmarks"):
        subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], check=True)
    copies = {"ood_hops.json": f"ood_hops_{name}.json", "depth_sweep.csv": f"depth_sweep_{name}.csv",
              "depth_sweep.json": f"depth_sweep_{name}.json",
              "inference_ablations.json": f"inference_ablations_{name}.json", "probes.json": f"probes_{name}.json",
              "throughput.json": f"throughput_{name}.json", "ood_hops.png": f"img/ood_hops_{name}.png",
              "depth_sweep.png": f"img/depth_sweep_{name}.png"}
    # The default's probe plots keep their names (the docs link them); another run's get its name after `probes`.
    probes = "probes" if name == "default" else f"probes_{name}"
    copies |= {f"img/{png.name}": "img/" + png.name.replace("probes", probes, 1) for png in (out / "img").glob("probes_*.png")}
    for source, target in copies.items():
        if (out / source).is_file():
            shutil.copy(out / source, docs / target)


def machine_line(docs):
    """Where the default run's benchmark ran, as its JSON records it."""
    path = docs / "ood_hops_default.json"
    if not path.is_file():
        return []
    machine = json.loads(path.read_text())["machine"]
    return [f"Machine (from `{path.name}`): {machine['platform']}, {machine['cpu_count']} torch threads, "
            f"torch {machine['torch']}.", ""]


def readme_summary(docs):
    """The README's results block: the default run's answer and trace exact match per hop count."""
    r = json.loads((docs / "ood_hops_default.json").read_text())
    hops = list(r["per_hop"])
    trained = f", trained on {r['trained_hops'][0]}-{r['trained_hops'][1]} hops" if r.get("trained_hops") else ""
    timing = f" in {r['train_seconds']:.0f} s of training" if r.get("train_seconds") else ""
    source = f", `{r['command']}`" if r.get("command") else ""
    lines = [f"The default checkpoint{trained}{timing}, on {r['n']:,} fresh `{r['variant']}` prompts per hop count "
             f"(seed {r['seed']:,} + hops{source}):", "",
             "| hops | " + " | ".join(hops) + " |", "|---|" + "---|" * len(hops)]
    for key, name in (("answer_exact_match", "answer exact match %"), ("trace_exact_match", "trace exact match % (every loop right)"),
                      ("halt_rate", "`<HALT>` at hops + 1 %")):
        lines.append(f"| {name} | " + " | ".join(pct(r["per_hop"][h][key]) for h in hops) + " |")
    return lines


def update_readme(readme, block):
    """Replace what sits between the README's results markers."""
    text = readme.read_text()
    start = text.index("<!-- results:start")
    start = text.index("-->", start) + len("-->")
    end = text.index("<!-- results:end -->")
    readme.write_text(text[:start] + "\n" + "\n".join(block) + "\n" + text[end:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run the benchmark suite on this checkpoint first")
    parser.add_argument("--name", default="default", help="with --run: the name its files get in --docs")
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README whose results block to regenerate")
    args = parser.parse_args()
    docs = Path(args.docs)
    if args.run:
        run_suite(args.run, docs, args.name)
    lines = ["# Measured results", "",
             "Generated by `python benchmarks/report.py` from the JSON and CSV files in this folder (each written by "
             "the benchmark named with it); do not edit by hand. How each default was found, the failed runs and what "
             "the tables mean: [`experiments.md`](experiments.md).", ""]
    lines += machine_line(docs)
    lines += baselines_plot(docs)
    lines += comparison_tables(docs)
    for section, title in SECTIONS.items():
        runs = [(name, label) for name, (where, label) in OOD_RUNS.items() if where == section and (docs / name).is_file()]
        if runs:
            lines += [f"## {title}", ""]
            for name, label in runs:
                lines += ood_table(docs / name, label) + [""]
    renderers = {"inference_ablations_default.json": ablation_tables, "depth_sweep_default.csv": depth_sweep_table,
                 "throughput_default.json": throughput_tables} | dict.fromkeys(CTR_TABLES, ctr_table)
    for pattern, render in (("inference_ablations_*.json", ablation_tables), ("depth_sweep_*.csv", depth_sweep_table),
                            ("throughput_*.json", throughput_tables)):
        renderers |= {path.name: render for path in sorted(docs.glob(pattern)) if path.name not in renderers}
    rendered = [(name, render) for name, render in renderers.items() if (docs / name).is_file()]
    if rendered:
        lines += ["## Inference ablations, halting modes, depth sweeps, throughput, CTR refiner", ""]
    for name, render in rendered:
        lines += render(docs / name) + [""]
    (docs / "results.md").write_text("\n".join(lines))
    print(f"wrote {docs / 'results.md'}")
    readme = Path(args.readme)
    if readme.is_file() and (docs / "ood_hops_default.json").is_file():
        update_readme(readme, readme_summary(docs))
        print(f"updated the results block of {readme}")


if __name__ == "__main__":
    main()
