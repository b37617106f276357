"""Synthetic data generation, tokenizer and collator for multi-hop variable lookup."""
