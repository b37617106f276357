"""A saved checkpoint must load through the Auto classes with remote code in a process where this package cannot
be imported, and give the same outputs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dataset_scripts.tokenizer import build_tokenizer
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM

PROMPTS = ["A = dog. B = A. What is B?\nAnswer:", "QQ = cat. C = QQ. D = C. ZZ = owl. What is D?\nAnswer:"]

# Runs in a fresh interpreter: the package is made unimportable before anything else happens.
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["recursive_latent"] = None
    sys.modules["dataset_scripts"] = None
    try:
        import recursive_latent
        raise SystemExit("recursive_latent is importable: this test would prove nothing")
    except ImportError:
        pass
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline
    path = sys.argv[1]
    prompts = json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, num_loops=5)
        reasoned = model.reason(**inputs)
        latent = base(**inputs, num_loops=5).last_latent
    generated = model.generate(**tokenizer(prompts[:1], return_tensors="pt"), max_new_tokens=1)
    text = pipeline("text-generation", model=path, trust_remote_code=True)(prompts[0])[0]["generated_text"]
    print("RESULT " + json.dumps({
        "model_type": config.model_type, "class": type(model).__name__, "base_class": type(base).__name__,
        "loop_logits": out.loop_logits.tolist(), "latent": latent.tolist(), "answer_ids": reasoned.answer_ids.tolist(),
        "generated_last": generated[0, -1].item(), "pipeline_text": text,
    }))
    """
)


def save_checkpoint(path, **config_kwargs):
    tokenizer = build_tokenizer()
    backbone = dict(model_type="gpt2", vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                    pad_token_id=tokenizer.pad_token_id)
    config = RecursiveLatentConfig(backbone_config=backbone, max_loops=4, pad_token_id=tokenizer.pad_token_id,
                                   halt_token_id=tokenizer.convert_tokens_to_ids("<HALT>"), **config_kwargs)
    torch.manual_seed(0)
    model = RecursiveLatentForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def run_fresh(path, workdir=None, env=None):
    """Load `path` (a directory, or a repo id with `env` pointing at a Hub) in a fresh process; return its outputs."""
    workdir = Path(workdir or path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf_home"), "PYTHONPATH": "", **(env or {})}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(path), json.dumps(PROMPTS)],
                            capture_output=True, text=True, env=env, cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT ")[-1])


@pytest.mark.parametrize("design", ["latent", pytest.param("sequence", marks=pytest.mark.slow)])
def test_auto_classes_load_remote_code_in_a_fresh_process(tmp_path, design):
    model, tokenizer = save_checkpoint(tmp_path / "ckpt", core_design=design)
    files = set(os.listdir(tmp_path / "ckpt"))
    assert {"configuration_recursive.py", "modeling_recursive.py", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith(".bin") for name in files if name != "training_args.bin")
    auto_map = json.loads((tmp_path / "ckpt" / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM"} <= set(auto_map)

    got = run_fresh(tmp_path / "ckpt")
    inputs = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs, num_loops=5)
        reasoned = model.reason(**inputs)
    assert got["model_type"] == "recursive_latent" and got["class"] == "RecursiveLatentForCausalLM"
    assert got["base_class"] == "RecursiveLatentModel"
    assert (torch.tensor(got["loop_logits"]) - expected.loop_logits).abs().max() < 1e-5
    assert (torch.tensor(got["latent"]) - expected.latents[:, -1]).abs().max() < 1e-5
    assert got["answer_ids"] == reasoned.answer_ids.tolist()
    single = tokenizer(PROMPTS[:1], return_tensors="pt")
    expected_answer = model.reason(**single).answer_ids[0].item()
    assert got["generated_last"] == expected_answer
    word = tokenizer.convert_ids_to_tokens(expected_answer)
    assert got["pipeline_text"] == PROMPTS[0] + " " + word  # "Answer: dog", not "Answer:dog"


def test_corrupted_or_incomplete_checkpoints_fail_clearly(tmp_path):
    save_checkpoint(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ|incomplete|error while"):
        RecursiveLatentForCausalLM.from_pretrained(tmp_path / "ckpt")

    save_checkpoint(tmp_path / "partial")
    config_file = tmp_path / "partial" / "config.json"
    config = json.loads(config_file.read_text())
    del config["backbone_config"]["model_type"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"backbone_config.model_type"):
        RecursiveLatentForCausalLM.from_pretrained(tmp_path / "partial")


def test_tokenizer_that_does_not_match_the_model_is_rejected(tmp_path):
    model, tokenizer = save_checkpoint(tmp_path / "ckpt")
    small = RecursiveLatentForCausalLM(RecursiveLatentConfig(
        backbone_config=dict(model_type="gpt2", vocab_size=50, n_positions=64, n_embd=32, n_layer=1, n_head=4),
        halt_token_id=2))
    inputs = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match=r"outside the model's vocabulary \[0, 50\).*tokenizer"):
        small.reason(**inputs)
