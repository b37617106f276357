"""Faults lose nothing: one-line errors before anything is written, resumes that skip half-written checkpoints,
non-finite weights refused, `reason()` memory bounded by the loops it runs, a failed push that says what to do."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from recursive_latent import RecursiveLatentForCausalLM
from tests.conftest import make_config
from tests.test_remote_code import save_checkpoint
from tests.test_trainer import ROOT, TINY, refusal, run_trainer


@pytest.mark.parametrize("args, config, message", [
    (["--max_steps", "1.5"], TINY, "--max_steps/--max-steps: invalid int value: '1.5'"),
    (["--max_steps", "0"], TINY, "--max_steps must be >= 1"),
    (["--max_steps", "-5"], TINY, "--max_steps must be >= 1"),
    ([], TINY + "max_steps: 2.5\n", "max_steps: invalid value 2.5"),
    (["--no_such_flag", "3"], TINY, "unrecognized arguments: --no_such_flag 3"),
    ([], "max_steps: [1, 2\n", "is not valid YAML"),
    ([], "hello\n", "must be a YAML mapping of option: value (got str)"),
    ([], TINY + "model: {no_such_field: 1}\n", "unknown model field(s) in tiny.yaml: no_such_field"),
    (["--model.core_num_heads", "3"], TINY, "`core_hidden_size` must be divisible by `core_num_heads`"),
    (["--model.halt_velocity", "-1"], TINY, "`halt_velocity` must be a number > 0"),
    (["--output_dir", "/sys/rlf-run"], TINY, "is not writable"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, config, message):
    stderr = refusal(tmp_path, monkeypatch, capsys, "--output_dir", "out", *args, config=config)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr[-2000:]
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_output_dir_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("mine")
    assert "--output_dir taken is a file" in refusal(tmp_path, monkeypatch, capsys, "--output_dir", "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_latest_without_a_checkpoint_trains_from_scratch_and_says_so(tmp_path):
    result = run_trainer(tmp_path, "--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint", "latest",
                         "--max_steps", "4", "--pretrain_steps", "2", "--eval_strategy", "no", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no complete checkpoint" in result.stdout and "training from scratch" in result.stdout
    assert (tmp_path / "new" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_resume_skips_half_written_checkpoints_and_ends_bit_identical(tmp_path):
    """A kill inside a checkpoint write leaves the staging folder, or (from a writer that was not atomic) a
    `checkpoint-N` without all its files: `latest` skips both, says why, and the resumed run ends exactly where an
    uninterrupted one does."""
    common = ["--ema_decay", "0.9", "--eval_strategy", "no", "--save_total_limit", "5"]
    reference = tmp_path / "reference"
    result = run_trainer(tmp_path, "--output_dir", str(reference), *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in reference.iterdir()) == ["checkpoint-12", "checkpoint-24", "final",
                                                          "training_config.yaml"]  # no staging folder left
    final = reference / "final"
    assert "training_args.bin" not in os.listdir(final)
    assert oct((final / "model.safetensors").stat().st_mode & 0o777) == oct((final / "config.json").stat().st_mode & 0o777)

    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(reference / "checkpoint-12", killed / "checkpoint-12")
    shutil.copy(reference / "training_config.yaml", killed)
    # checkpoint-18: the Trainer's files but not ours (the old writer's kill window); staging: a write cut short.
    shutil.copytree(reference / "checkpoint-24", killed / "checkpoint-18")
    (killed / "checkpoint-18" / "curriculum.json").unlink()
    shutil.copytree(reference / "checkpoint-24", killed / ".staging" / "checkpoint-24")
    (killed / ".staging" / "checkpoint-24" / "optimizer.pt").unlink()

    result = run_trainer(tmp_path, "--output_dir", str(killed), "--resume_from_checkpoint", "latest", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[resume] skipping {killed / 'checkpoint-18'}: no curriculum.json" in result.stdout
    assert f"[resume] from {killed / 'checkpoint-12'}" in result.stdout
    assert "half-written checkpoints of an interrupted run" in result.stdout
    a, b = load_file(final / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) == 0.0

    incomplete = run_trainer(tmp_path, "--output_dir", str(killed), "--resume_from_checkpoint",
                             str(killed / "checkpoint-18"), *common)
    assert incomplete.returncode != 0 and "is incomplete (no curriculum.json)" in incomplete.stderr


def test_tokenizer_truncation_gives_a_prompt_the_model_reads(tmp_path):
    out = tmp_path / "run"
    result = run_trainer(tmp_path, "--output_dir", str(out), "--max_steps", "2", "--pretrain_steps", "2",
                         "--eval_strategy", "no", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    model = RecursiveLatentForCausalLM.from_pretrained(out / "final")
    assert tokenizer.model_max_length == model.config.max_prompt_tokens == 128
    long_prompt = "A = dog. " * 60 + "B = A. What is B?\nAnswer:"
    inputs = tokenizer([long_prompt], truncation=True, return_tensors="pt")
    assert inputs["input_ids"].shape[1] == 128 and tokenizer.decode(inputs["input_ids"][0]).strip().endswith("Answer :")
    assert model.reason(**inputs).answer_ids.shape == (1,)


def test_non_finite_weights_are_refused_by_name(tmp_path):
    save_checkpoint(tmp_path / "nan")
    weights = load_file(tmp_path / "nan" / "model.safetensors")
    weights["model.memory_proj.weight"][0, 0] = float("nan")
    save_file(weights, tmp_path / "nan" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weight `model.memory_proj.weight` holds NaN or inf"):
        RecursiveLatentForCausalLM.from_pretrained(tmp_path / "nan")

    save_checkpoint(tmp_path / "tail")
    path = tmp_path / "tail" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-4096:] = b"\xff" * 4096  # the last 4 KiB overwritten: every float there is NaN
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"holds NaN or inf values"):
        RecursiveLatentForCausalLM.from_pretrained(tmp_path / "tail")


def test_non_finite_logits_name_their_loop(batch):
    input_ids, attention_mask, _ = batch
    model = RecursiveLatentForCausalLM(make_config()).eval()
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"logits of loop 1 hold NaN or inf"):
        model.reason(input_ids, attention_mask)
    with pytest.raises(FloatingPointError, match=r"logits of loop 1 hold NaN or inf"):
        model(input_ids, attention_mask, num_loops=3)


def test_reason_memory_follows_the_loops_run(batch, monkeypatch):
    input_ids, attention_mask, _ = batch
    torch.manual_seed(0)
    model = RecursiveLatentForCausalLM(make_config()).eval()
    head, calls = model.head, []

    def halting_head(x):  # <HALT> wins from the third loop on: every row stops there
        calls.append(None)
        logits = head(x)
        if len(calls) >= 3:
            logits[..., model.config.halt_token_id] = 1e4
        return logits

    monkeypatch.setattr(model, "head", halting_head)
    capped = model.reason(input_ids, attention_mask, max_loops=72)
    assert capped.halted.all() and capped.loops.tolist() == [3, 3, 3]
    for huge in (10**6, 10**13):  # before: a (batch, max_loops) buffer; 10**13 loops asked for 80 TB
        calls.clear()
        out = model.reason(input_ids, attention_mask, max_loops=huge)
        assert out.trace_ids.shape == capped.trace_ids.shape == (3, 3)
        assert torch.equal(out.answer_ids, capped.answer_ids)
    for bad in (1.5, 0, -2, True):
        with pytest.raises(ValueError, match=r"`max_loops` must be a positive integer"):
            model.reason(input_ids, attention_mask, max_loops=bad)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_hub_is_one_line_and_the_trainer_says_where_final_is(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_TOKEN": "hf_test", "HF_HUB_OFFLINE": "0"}
    save_checkpoint(tmp_path / "ckpt")
    push = subprocess.run([sys.executable, "-m", "recursive_latent.hub", "push", str(tmp_path / "ckpt"), "user/name"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert push.returncode != 0 and push.stderr.strip().startswith("error: cannot reach http://127.0.0.1:")
    assert len(push.stderr.strip().splitlines()) == 1

    result = run_trainer(tmp_path, "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--pretrain_steps", "2",
                         "--eval_strategy", "no", "--save_strategy", "no", "--push_to_hub", "true", "--hub_model_id",
                         "user/name", env=env)
    final = tmp_path / "run" / "final"
    assert result.returncode != 0 and (final / "model.safetensors").is_file()
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot reach" in last and f"saved in {final}" in last
    assert f"python -m recursive_latent.hub push {final} user/name" in last
    json.loads((final / "train_results.json").read_text())  # the checkpoint is whole
