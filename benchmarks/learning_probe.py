"""A quick learning probe: train a model built from config with a plain AdamW loop (no Trainer, no curriculum) on
fresh hop-chain batches and print loss, loop-1 accuracy and sequence accuracy every 50 steps. Used to compare
design switches in minutes; the trainer runs in docs/results.md are the real figures.

    python benchmarks/learning_probe.py --config '{"tie_word_embeddings": true}' --hops 1 --steps 600
"""

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F

from dataset_scripts.collator import LoopLabelCollator
from dataset_scripts.hop_chains import make_example
from dataset_scripts.tokenizer import build_tokenizer
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="{}", help="JSON of RecursiveLatentConfig fields to override.")
    parser.add_argument("--variant", default="shuffled", choices=["shuffled", "chain"])
    parser.add_argument("--hops", type=int, default=1, help="Train on 1..hops hops.")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone_init", type=float, default=64**-0.5, help="Std of the backbone's init (GPT-2: 0.02).")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    backbone = dict(model_type="gpt2", vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=4,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=args.backbone_init,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    config = dict(backbone_mode="full", halt_token_id=tokenizer.convert_tokens_to_ids("<HALT>"))
    config.update(json.loads(args.config))
    model = RecursiveLatentForCausalLM(RecursiveLatentConfig(backbone_config=backbone, **config)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable {sum(p.numel() for p in params):,}; config overrides {config}")
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    collator = LoopLabelCollator(tokenizer)
    rng = random.Random(args.seed)
    start = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:  # 100 warmup steps, then constant
            group["lr"] = args.learning_rate * min(1.0, (step + 1) / 100)
        batch = collator([make_example(rng, rng.randint(1, args.hops), variant=args.variant)
                          for _ in range(args.batch_size)])
        labels = batch["loop_labels"]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], loop_labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            predictions = out.loop_logits.argmax(-1)
            loop1 = (predictions[:, 0] == labels[:, 0]).float().mean().item()
            sequence = ((predictions == labels) | (labels == -100)).all(1).float().mean().item()
            loop1_loss = F.cross_entropy(out.loop_logits[:, 0], labels[:, 0]).item()
            print(f"step {step} loss {out.loss.item():.3f} loop-1 loss {loop1_loss:.3f} loop-1 acc {loop1:.3f} "
                  f"sequence acc {sequence:.3f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
