"""The token-recurrence baseline: its collator, greedy decoding as `reason()`, and a short end-to-end run."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, Mamba2Config, Mamba2ForCausalLM

from dataset_scripts.hop_chains import generate_examples
from dataset_scripts.tokenizer import HALT_TOKEN, build_tokenizer
from recursive_latent.evaluation import evaluate_examples, generate_reason
from tests.test_trainer import ROOT, TINY, train_in_process


def test_collator_labels_only_the_path_and_halt():
    sys.path.insert(0, str(ROOT / "trainers"))
    from token_recurrence import path_text_collator

    tokenizer = build_tokenizer()
    examples = generate_examples(3, hops=[1, 3], seed=0)
    batch = path_text_collator(tokenizer)(examples)
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        targets = tokenizer.convert_tokens_to_ids(list(example["trace"]) + [HALT_TOKEN])
        assert labels[labels != -100].tolist() == targets
        # Each label sits one position before its token: the model predicts it from what precedes.
        positions = (labels != -100).nonzero().squeeze(1)
        assert batch["input_ids"][row, positions + 1].tolist() == targets


def tiny_lm(backbone, tokenizer, halt):
    special = dict(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=halt, pad_token_id=tokenizer.pad_token_id)
    if backbone == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=4, **special)).eval()
    return Mamba2ForCausalLM(Mamba2Config(hidden_size=32, num_hidden_layers=1, expand=2, head_dim=16, num_heads=4,
                                          n_groups=1, state_size=16, chunk_size=16, **special)).eval()


@pytest.mark.parametrize("backbone", ["gpt2", "mamba2"])
def test_greedy_decoding_gives_the_same_trace_padded_or_alone(backbone):
    tokenizer = build_tokenizer()
    halt = tokenizer.convert_tokens_to_ids(HALT_TOKEN)
    torch.manual_seed(0)
    model = tiny_lm(backbone, tokenizer, halt)
    with torch.no_grad():
        model.lm_head.weight[halt] *= 30  # some rows halt within the limit
    prompts = [e["question"] for e in generate_examples(4, hops=[1, 4], seed=2)]
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    together = generate_reason(model, inputs["input_ids"], inputs["attention_mask"], halt, tokenizer.pad_token_id, 6)
    for row, prompt in enumerate(prompts):
        single = tokenizer([prompt], return_tensors="pt")
        alone = generate_reason(model, single["input_ids"], single["attention_mask"], halt, tokenizer.pad_token_id, 6)
        loops = int(together.loops[row])
        assert int(alone.loops[0]) == loops and bool(alone.halted[0]) == bool(together.halted[row])
        assert alone.trace_ids[0, :loops].tolist() == together.trace_ids[row, :loops].tolist()
        assert int(alone.answer_ids[0]) == int(together.answer_ids[row])
    assert together.halted.any() and len(set(together.loops.tolist())) > 1  # halting at different loops


def test_in_process_token_recurrence_run(tmp_path, monkeypatch, capsys):
    """The fast version of the next test: a few steps of the baseline, saved and read back with its binding conv."""
    out = train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "cot", "--max_steps", "3", "--eval_steps",
                           "3", "--eval_size", "4", "--save_strategy", "no", script="token_recurrence")
    assert "token recurrence on a gpt2 backbone" in out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "cot" / "final", trust_remote_code=True).eval()
    assert type(model).__name__ == "RecursiveLatentTokenLM" and model.binding is not None
    assert [path.name for path in (tmp_path / "cot").iterdir()] == ["final"]  # written whole, no staging left
    assert AutoTokenizer.from_pretrained(tmp_path / "cot" / "final").model_max_length == 128  # the tiny backbone's
    figures = evaluate_examples(model, build_tokenizer(), generate_examples(4, hops=2, seed=9))
    assert figures["per_steps"][2]["n"] == 4


def test_token_recurrence_resumes_with_its_curriculum_stage(tmp_path, monkeypatch, capsys):
    """A resumed baseline continues the curriculum stage its checkpoint holds (it used to restart at the first
    stage), and needs no weight average it never writes."""
    short = ["--max_steps", "2", "--save_steps", "2", "--eval_strategy", "no", "--ema_decay", "0.99"]
    train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "cot", *short, script="token_recurrence")
    state = tmp_path / "cot" / "checkpoint-2" / "curriculum.json"
    assert json.loads(state.read_text())["max_hops"] == 2  # the tiny run never leaves the first stage
    state.write_text(json.dumps({"max_hops": 4, "correct": 0, "count": 0}))
    out = train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "cot", *short[2:], "--max_steps", "3",
                           "--resume_from_checkpoint", "latest", script="token_recurrence")
    assert "[resume] from cot/checkpoint-2" in out
    assert json.loads((tmp_path / "cot" / "final" / "train_results.json").read_text())["trained_max_hops"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["gpt2", "mamba2"])
def test_short_token_recurrence_run_trains_saves_and_evaluates(tmp_path, backbone):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "cot"
    result = subprocess.run([sys.executable, str(ROOT / "trainers" / "token_recurrence.py"), "--config",
                             str(tmp_path / "tiny.yaml"), "--output_dir", str(out), "--backbone_type", backbone],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(out / "final", trust_remote_code=True).eval()
    # The looped model's own prompt reader with an LM head: the same backbone and, for GPT-2, the same binding conv.
    assert type(model).__name__ == "RecursiveLatentTokenLM" and model.config.backbone_type == backbone
    assert (model.binding is not None) == (model.config.binding_conv == "embeddings")
    figures = evaluate_examples(model, build_tokenizer(), generate_examples(20, hops=2, seed=9))
    assert figures["per_steps"][2]["n"] == 20 and 0 < figures["per_steps"][2]["mean_loops"] <= 72
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ood_hops import training_record

    record = training_record(out / "final")  # what benchmarks/ood_hops.py writes next to its figures
    assert record["training_command"].startswith("python trainers/token_recurrence.py --config ")
    # The trained range ends where the curriculum got to (it starts at 2 hops and prints each step up), not at 5.
    reached = 2 + result.stdout.count("[curriculum]")
    assert record["trained_hops"] == [1, reached] and record["train_seconds"] > 0


def test_ood_hops_refuses_hop_counts_past_the_plain_lms_generation_cap(tmp_path):
    tokenizer = build_tokenizer()
    tiny_lm("gpt2", tokenizer, tokenizer.convert_tokens_to_ids(HALT_TOKEN)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    command = [sys.executable, str(ROOT / "benchmarks" / "ood_hops.py"), "--model", str(tmp_path / "lm"),
               "--variant", "chain", "--n", "2", "--hops", "72", "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0 and "72 hops need 73 loops but the model stops at 72" in result.stderr
