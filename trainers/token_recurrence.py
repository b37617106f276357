"""Token-recurrence (chain-of-thought) baseline: the backbone alone writes the path as tokens, then `<HALT>`.

    python trainers/token_recurrence.py --config trainers/configs/default.yaml --output_dir outputs/baseline_cot

Same config, data, curriculum and budget as trainers/rlf.py, but the model is a plain transformers language model of
the backbone's type and size (GPT-2 or Mamba2) trained on `prompt path... <HALT>` (loss on the path and `<HALT>`
only). At test time it decodes greedily: one generated token per hop, as the looped core predicts one node per loop.
The checkpoint is a standard transformers one; `benchmarks/ood_hops.py` evaluates it like any other model.
"""

import os
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlf import (  # noqa: E402  (trainers/ is a folder of scripts)
    CurriculumCallback, RLFTrainer, backbone_config, command_line, parse_arguments, write_train_results,
)

from dataset_scripts.sources import HopChainStream, generated_validation  # noqa: E402
from dataset_scripts.tokenizer import HALT_TOKEN, build_tokenizer, task_words  # noqa: E402


def path_text_collator(tokenizer):
    """`question trace... <HALT>` with labels on the trace and `<HALT>` only; positions count real tokens."""

    def collate(examples):
        prompts = tokenizer([e["question"] for e in examples])["input_ids"]
        targets = [tokenizer.convert_tokens_to_ids(list(e["trace"]) + [HALT_TOKEN]) for e in examples]
        width = max(len(p) + len(t) for p, t in zip(prompts, targets))
        input_ids = torch.full((len(examples), width), tokenizer.pad_token_id)
        labels = torch.full((len(examples), width), -100)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (prompt, target) in enumerate(zip(prompts, targets)):
            ids = prompt + target
            input_ids[row, width - len(ids):] = torch.tensor(ids)  # left padded, like the prompts at test time
            labels[row, width - len(target) - 1 : width - 1] = torch.tensor(target)  # predicted one position earlier
            mask[row, width - len(ids):] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    return collate


class TokenRecurrenceTrainer(RLFTrainer):
    """Next-token loss on the path; the curriculum sees whole-path accuracy (teacher forced); eval decodes."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs["attention_mask"]
        # GPT-2 counts positions from the first real token (left padding); Mamba2 has no positions.
        positions = {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)} if model.config.model_type == "gpt2" else {}
        outputs = model(input_ids=inputs["input_ids"], attention_mask=mask, **positions)
        logits, labels = outputs.logits, inputs["labels"]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        if self.curriculum is not None:
            right = (logits.argmax(-1) == labels) | (labels == -100)
            self.curriculum.record(int(right.all(1).sum()), labels.shape[0])
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None):
        Trainer._save(self, output_dir, state_dict)  # a plain transformers checkpoint: no LoRA merge, no looped-model card


def main(argv=None):
    args = parse_arguments(argv)
    model_args, data_args, recursion_args, training_args = args.model, args.data, args.recursion, args.training
    if data_args.from_files:
        raise SystemExit("error: the token-recurrence baseline trains on the hop-chain generator only")
    if recursion_args.core_optimizer == "muon":  # default.yaml's choice; Muon steps a looped core, which a plain LM lacks
        print("[optimizer] the token-recurrence baseline has no looped core: AdamW on every weight")
        recursion_args.core_optimizer = "adamw"
    training_args.remove_unused_columns = False
    torch.manual_seed(training_args.seed)
    tokenizer = build_tokenizer()
    halt_id = tokenizer.convert_tokens_to_ids(HALT_TOKEN)
    backbone = backbone_config(model_args, tokenizer) | {"eos_token_id": halt_id}
    # Untied head, as the looped model's head: tied, a 64-wide head learned far slower (docs/experiments.md).
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**backbone, tie_word_embeddings=False))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = halt_id, tokenizer.pad_token_id
    start_hops = recursion_args.curriculum_start_hops if recursion_args.curriculum else data_args.max_hops
    train_size = training_args.max_steps * training_args.per_device_train_batch_size * training_args.world_size
    words = task_words(tokenizer)
    train_data = HopChainStream(data_args, words, train_size, seed=training_args.seed, max_hops=min(start_hops, data_args.max_hops))
    curriculum = CurriculumCallback(train_data, recursion_args, data_args.max_hops) if recursion_args.curriculum else None
    print(f"[model] {model.config.model_type} LM, {sum(p.numel() for p in model.parameters()):,} parameters, all trained")
    trainer = TokenRecurrenceTrainer(
        model=model, args=training_args, train_dataset=train_data, eval_dataset=generated_validation(data_args, words),
        processing_class=tokenizer, data_collator=path_text_collator(tokenizer),
        callbacks=[curriculum] if curriculum else [], recursion_args=recursion_args, curriculum=curriculum,
    )
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    final = os.path.join(training_args.output_dir, "final")
    if trainer.is_world_process_zero():
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
        run_config = {"command": command_line("token_recurrence.py", args.argv), "model": vars(model_args),
                      "data": vars(data_args), "recursion": vars(recursion_args), "config_file": args.config_path,
                      "seed": training_args.seed, "baseline": "token_recurrence"}
        Path(final, "training_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        write_train_results(final, train_output, train_data)
        print(f"[done] final checkpoint in {final}")


if __name__ == "__main__":
    main()
