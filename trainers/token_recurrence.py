"""Token-recurrence (chain-of-thought) baseline: the looped model's own backbone writes the trace as tokens, then
`<HALT>`.

    python trainers/token_recurrence.py --config trainers/configs/default.yaml --output_dir outputs/baseline_cot
    python trainers/token_recurrence.py --config trainers/configs/prosqa.yaml --prosqa_supervision steps \
        --output_dir outputs/prosqa_baseline_cot

Same config, data, curriculum and budget as trainers/rlf.py, but the model is `RecursiveLatentTokenLM`: the looped
model's prompt reader (the same GPT-2 or Mamba2 backbone, the same binding conv on its embeddings) with a language-model
head, trained on `question trace... <HALT>` (loss on the trace and `<HALT>` only). At test time it decodes greedily,
one generated token per step, as the looped core names one step per loop; the benchmarks evaluate it like any other
checkpoint. Every trace element must be one word (ProsQA: `--prosqa_supervision steps`, the published path).
"""

import sys
from pathlib import Path

import torch
import yaml
from transformers import Trainer

if __package__ in (None, ""):  # run as `python trainers/token_recurrence.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recursive_latent.examples import HALT_TOKEN  # noqa: E402
from recursive_latent import RecursiveLatentTokenLM, RecursiveLatentTokenLMConfig  # noqa: E402
from trainers.arguments import command_line, parse_arguments  # noqa: E402
from trainers.checkpoints import save_tokenizer, write_train_results, writing_final  # noqa: E402
from trainers.rlf import RLFTrainer, core_training_data, setup  # noqa: E402


def path_text_collator(tokenizer):
    """`question trace... <HALT>` with labels on the trace and `<HALT>` only; positions count real tokens."""

    def collate(examples):
        prompts = tokenizer([e["question"] for e in examples])["input_ids"]
        if any(isinstance(step, list) for e in examples for step in e["trace"]):
            raise ValueError("the token-recurrence baseline writes one token per step: its traces cannot hold sets "
                             "(ProsQA: --prosqa_supervision steps)")
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
    """Next-token loss on the trace; the curriculum sees whole-trace accuracy (teacher forced); eval decodes."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"])
        if self.curriculum is not None:
            labels = inputs["labels"]
            right = (outputs.logits.argmax(-1) == labels) | (labels == -100)
            self.curriculum.record(int(right.all(1).sum()), labels.shape[0])
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _save(self, output_dir=None, state_dict=None):
        Trainer._save(self, output_dir, state_dict)  # no LoRA to merge, no looped-model card


def main(argv=None):
    args = parse_arguments(argv)
    recursion, training = args.recursion, args.training
    if recursion.core_optimizer == "muon":  # default.yaml's choice; Muon steps a looped core, which this model lacks
        print("[optimizer] the token-recurrence baseline has no looped core: AdamW on every weight")
        recursion.core_optimizer = "adamw"
    if recursion.ema_decay:  # so that a resume does not wait for an ema.safetensors this trainer never writes
        print("[ema] the token-recurrence baseline keeps no weight average: --ema_decay is ignored")
        recursion.ema_decay = 0.0
    training.remove_unused_columns = False
    run = setup(args)  # the data, the tokenizer and every check, as for the looped model
    # The looped model's config (backbone, binding conv, tokenizer ids), as the baseline's own type; no stage 1: the
    # whole LM trains.
    shared = {k: v for k, v in run.model.config.to_dict().items() if k not in ("model_type", "auto_map", "architectures")}
    config = RecursiveLatentTokenLMConfig(**dict(shared, backbone_mode="full"))
    torch.manual_seed(training.seed)
    model = RecursiveLatentTokenLM(config)
    model.generation_config.pad_token_id = run.tokenizer.pad_token_id
    train_data, curriculum = core_training_data(run)
    print(f"[model] token recurrence on a {config.backbone_type} backbone, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, all trained")
    trainer = TokenRecurrenceTrainer(
        model=model, args=training, train_dataset=train_data, eval_dataset=run.validation,
        processing_class=run.tokenizer, data_collator=path_text_collator(run.tokenizer),
        callbacks=[curriculum] if curriculum else [], recursion_args=recursion, curriculum=curriculum,
    )
    train_output = trainer.train(resume_from_checkpoint=run.resume)
    if not trainer.is_world_process_zero():
        return
    with writing_final(training.output_dir) as staged:
        model.save_pretrained(staged)
        save_tokenizer(run.tokenizer, config, staged)
        run_config = {"command": command_line("token_recurrence.py", args.argv), "model": vars(args.model),
                      "model_config": args.model_config, "data": vars(args.data), "data_source": run.data_source,
                      "recursion": vars(recursion), "config_file": args.config_path, "seed": training.seed,
                      "baseline": "token_recurrence"}
        Path(staged, "training_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        write_train_results(staged, train_output, train_data, trainer.clock)


if __name__ == "__main__":
    main()
