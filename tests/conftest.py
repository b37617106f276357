"""Shared fixtures: tiny configs (vocab ~100, width 32, 2 backbone layers, max_loops 4) and the real tokenizer."""

import json
from pathlib import Path

import pytest
import torch

from recursive_latent import RecursiveLatentConfig

TINY_GPT2 = dict(
    model_type="gpt2", vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=0,
)
TINY_MAMBA2 = dict(
    model_type="mamba2", vocab_size=100, hidden_size=32, num_hidden_layers=2, expand=2, head_dim=16, num_heads=4,
    n_groups=1, state_size=16, chunk_size=16, pad_token_id=0, bos_token_id=None, eos_token_id=None,
)
BACKBONES = {"gpt2": TINY_GPT2, "mamba2": TINY_MAMBA2}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: an end-to-end run in subprocesses (seconds to a minute); each has a fast in-process version. "
                   "`make test` runs them, `make test-fast` (`pytest -m 'not slow'`) skips them."
    )


def make_config(backbone="gpt2", **kwargs):
    kwargs.setdefault("max_loops", 4)
    kwargs.setdefault("max_inference_loops", 6)
    kwargs.setdefault("pad_token_id", 0)
    kwargs.setdefault("halt_token_id", 2)
    kwargs.setdefault("base_lane", "pointer")
    return RecursiveLatentConfig(backbone_config=dict(BACKBONES[backbone]), **kwargs)


@pytest.fixture
def tiny_config():
    return make_config()


@pytest.fixture
def batch():
    """Three left-padded prompts of random ids (3..99) and loop labels with a padded last loop."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 100, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0
    input_ids[0, :3] = 0
    loop_labels = torch.randint(3, 100, (3, 4), generator=generator)
    loop_labels[0, 3] = -100
    return input_ids, attention_mask, loop_labels


def save_pretrained_backbone(path, backbone="gpt2"):
    """A stand-in for a Hub backbone such as `openai-community/gpt2`: a tiny plain-transformers model and a
    byte-level BPE tokenizer trained on task prompts, too small to make every two-letter name one token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, GPT2Config, GPT2Model, Mamba2Config, Mamba2Model

    from dataset_scripts.hop_chains import generate_examples
    from dataset_scripts.words import TRAIN_VALUE_WORDS

    # Task prompts, plus half the value words often enough to become tokens; the other half mostly stay split.
    text = [example["question"] for example in generate_examples(2000, hops=[1, 2, 3, 4, 5], seed=0)]
    text += [" " + " ".join(TRAIN_VALUE_WORDS[::2])] * 50
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=900, special_tokens=["<|endoftext|>"], show_progress=False)
    Path(path).mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(path))  # vocab.json + merges.txt, the files GPT-2's tokenizer is made of
    special = {key: "<|endoftext|>" for key in ("bos_token", "eos_token", "unk_token")}
    (Path(path) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", **special}))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.save_pretrained(path)
    spec = dict(BACKBONES[backbone], vocab_size=len(tokenizer), pad_token_id=None)
    spec.pop("model_type")
    torch.manual_seed(0)
    plain = GPT2Model(GPT2Config(**dict(spec, n_positions=512))) if backbone == "gpt2" else Mamba2Model(Mamba2Config(**spec))
    plain.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="session")
def pretrained_gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrained_gpt2")
    save_pretrained_backbone(path, "gpt2")
    return path
