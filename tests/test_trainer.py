"""End-to-end runs of trainers/rlf.py, kept to seconds: stage 1 + stage 2, checkpoints, resume, DDP, bad input."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from model_cards.generate import training_record

ROOT = Path(__file__).resolve().parents[1]
TINY = textwrap.dedent(
    """
    backbone_hidden_size: 32
    backbone_max_positions: 128
    core_optimizer: muon
    pretrain_steps: 20
    max_steps: 24
    per_device_train_batch_size: 16
    learning_rate: 0.003
    lr_scheduler_type: constant
    eval_strategy: steps
    eval_steps: 12
    eval_size: 8
    eval_hops: [1, 2]
    save_strategy: steps
    save_steps: 12
    logging_steps: 4
    curriculum_window: 4
    use_cpu: true
    report_to: none
    seed: 0
    """
)


def run_trainer(tmp_path, *args, launcher=None, timeout=600, env=None):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    command = (launcher or [sys.executable]) + [str(ROOT / "trainers" / "rlf.py"), "--config", str(config), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
    # Its own process group, so that a timeout ends every process of the run, the launcher's workers too (killing the
    # launcher alone leaves them holding the pipes). SIGABRT first: with the fault handler on, each Python process
    # prints where it was stuck before it dies.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"the run passed {timeout} s. stdout ends:\n{stdout[-1500:]}\nstderr ends:\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def refusal(tmp_path, monkeypatch, capsys, *args, config=TINY):
    """Run `trainers/rlf.py`'s `main` in this process (no interpreter start-up: a refusal takes milliseconds) on
    `args` after `--config tiny.yaml`, in `tmp_path`; it must refuse. Returns what the user reads on stderr."""
    from trainers.rlf import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(config)
    config_args = [] if "--config" in args else ["--config", "tiny.yaml"]
    with pytest.raises(SystemExit) as refused:
        main([*config_args, *args])
    code = refused.value.code
    assert code not in (0, None)
    # A parser error prints itself and exits 2; a setup error is SystemExit("error: ..."), printed by Python at exit.
    return capsys.readouterr().err + (code if isinstance(code, str) else "")


def train_in_process(tmp_path, monkeypatch, capsys, *args, config=TINY, script="rlf"):
    """Run `trainers/<script>.py`'s `main` in this process (the fast versions of the end-to-end tests: no interpreter
    start-up, same code path) in `tmp_path`, on one thread; returns what it printed."""
    import importlib

    main = importlib.import_module(f"trainers.{script}").main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["--config", "tiny.yaml", *args])
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def logged(trainer_state_path, key):
    """Every value of `key` in a checkpoint's log history, in order."""
    history = json.loads(Path(trainer_state_path).read_text())["log_history"]
    return [entry[key] for entry in history if key in entry]


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_in_process_run_saves_and_resumes_exactly(tmp_path, monkeypatch, capsys, sampling):
    """The fast version of the next test: a few steps, a checkpoint, a resume from it that ends bit-identical (also
    with the stream grouping its batches by length)."""
    short = ["--max_steps", "6", "--save_steps", "3", "--eval_steps", "3", "--pretrain_steps", "2",
             "--train_sampling_strategy", sampling]
    out = train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "run", *short)
    assert "[eval] step 6" in out and "[done] final checkpoint in run/final" in out
    final = tmp_path / "run" / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training_config.yaml"} <= set(os.listdir(final))
    first = json.loads((final / "train_results.json").read_text())
    assert abs(first["train_seconds_total"] - first["train_runtime"]) < 5  # one process: the Trainer's own time
    machine = yaml.safe_load((final / "training_config.yaml").read_text())["machine"]
    assert machine["threads"] == 1  # train_in_process's; a seeded run repeats bit for bit at this count
    assert machine["torch"] == torch.__version__
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    for name in ("checkpoint-6", "final"):
        shutil.rmtree(tmp_path / "resumed" / name)
    (tmp_path / "resumed" / "checkpoint-3" / "clock.json").write_text(json.dumps({"seconds": 1000.0}))
    out = train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "resumed", *short,
                           "--resume_from_checkpoint", "latest")
    assert "[resume] from resumed/checkpoint-3" in out
    a, b = load_file(final / "model.safetensors"), load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    # The resumed run's time counts on from the checkpoint's, and the benchmarks read the sum.
    resumed = json.loads((tmp_path / "resumed" / "final" / "train_results.json").read_text())
    assert 1000 < resumed["train_seconds_total"] < 1000 + resumed["train_runtime"] + 5
    assert training_record(tmp_path / "resumed" / "final")["train_seconds"] == resumed["train_seconds_total"]
    # Each evaluation logs the training seconds so far, counted on over the resume as well.
    first_seconds, resumed_seconds = (logged(tmp_path / run / "checkpoint-6" / "trainer_state.json",
                                             "eval_train_seconds") for run in ("run", "resumed"))
    assert len(first_seconds) == 2 and 0 < first_seconds[0] < first_seconds[1] <= first["train_seconds_total"]
    assert 1000 < resumed_seconds[-1] <= resumed["train_seconds_total"]


def test_a_grouped_stream_is_read_in_order_and_any_other_dataset_shuffled(tmp_path):
    from transformers import TrainingArguments

    from dataset_scripts.tokenizer import build_tokenizer, task_words
    from trainers.rlf import DataArguments, HopChainStream, StreamTrainer

    words = task_words(build_tokenizer())
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    for batch_size, sampler in ((16, torch.utils.data.SequentialSampler), (None, torch.utils.data.RandomSampler)):
        stream = HopChainStream(DataArguments(), words, size=64, seed=0, max_hops=3, batch_size=batch_size)
        trainer = StreamTrainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=stream)
        assert type(trainer._get_train_sampler()) is sampler


@pytest.mark.slow
def test_short_run_learns_saves_loads_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = run_trainer(tmp_path, "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    final = out / "final"
    assert {"config.json", "model.safetensors", "modeling_recursive.py", "tokenizer.json", "README.md",
            "training_config.yaml", "train_results.json"} <= set(os.listdir(final))
    train_results = json.loads((final / "train_results.json").read_text())
    assert train_results["train_runtime"] > 0
    assert train_results["trained_max_hops"] == 2 + result.stdout.count("[curriculum]")  # from 2 hops, one per step up
    assert f"with 1-{train_results['trained_max_hops']} hops." in (final / "README.md").read_text()  # the model card
    assert "--output_dir" in (final / "training_config.yaml").read_text()  # the command line is recorded
    history = logged(out / "checkpoint-24" / "trainer_state.json", "loss")
    assert history[-1] < history[0]
    assert "trainable" in result.stdout and "[eval]" in result.stdout

    # The checkpoint loads with remote code and reasons.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(final)
    inputs = tokenizer(["A = dog. B = A. What is B?\nAnswer:"], return_tensors="pt")
    assert model.reason(**inputs).answer_ids.shape == (1,)

    # Resume from the middle checkpoint: the same data order and curriculum give the same final weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoint-24")
    shutil.rmtree(resumed / "final")
    result = run_trainer(tmp_path, "--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / "checkpoint-12"))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(final / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_two_process_data_parallel_keeps_ranks_identical(tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as probe:  # a free port: a default port still held by an earlier run would fail the launch
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port)]
    result = run_trainer(tmp_path, "--output_dir", str(out), "--max_steps", "6", "--pretrain_steps", "4",
                         "--eval_strategy", "no", "--save_strategy", "no", launcher=launcher, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stdout
    # The two ranks share stdout, so another rank's output can land on the same line: match the digest itself.
    digests = re.findall(r"weights digest ([0-9a-f]{16})", result.stdout)
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda tmp: (tmp / "x.yaml").write_text("no_such_key: 1\n"), ["--config", "x.yaml"], "unknown key"),
        (lambda tmp: None, ["--config", "missing.yaml"], "config file not found"),
        (lambda tmp: (tmp / "busy").mkdir() or (tmp / "busy" / "notes.txt").write_text("mine"),
         ["--output_dir", "busy"], "holds files this trainer did not write"),
        (lambda tmp: (tmp / "empty").mkdir(), ["--output_dir", "empty", "--resume_from_checkpoint", "empty"],
         "not a checkpoint directory"),
        (lambda tmp: None, ["--output_dir", "new", "--ema_decay", "1.5"], "--ema_decay must be between 0 and 1"),
        (lambda tmp: None, ["--output_dir", "new", "--freeze_backbone_from", "1.5"], "must be between 0 and 1"),
        (lambda tmp: None, ["--output_dir", "new", "--freeze_backbone_from", "0.5"], "stops a `full` backbone's"),
        (lambda tmp: None, ["--output_dir", "new", "--halting", "head"], "`halting='head'` needs `halt_head=True`"),
        (lambda tmp: None, ["--output_dir", "new", "--extra_loops", "4"], "give --max_loops 10"),
        (lambda tmp: None, ["--output_dir", "new", "--prompt_stages", "0.5:1-3:1-3:1-9"], "give --max_loops 10"),
        (lambda tmp: None, ["--output_dir", "new", "--prompt_stages", "0.5:1-3:1-3:5-2"], "1 <= W_LO <= W_HI"),
        (lambda tmp: None, ["--output_dir", "new", "--arith_ops", "+/"], "--arith_ops must be some of '+-*'"),
        (lambda tmp: None, ["--output_dir", "new", "--mix_arith", "1"], "--mix_arith must be in [0, 1)"),
        (lambda tmp: None, ["--output_dir", "new", "--prosqa_large_graphs", "1.5"],
         "--prosqa_large_graphs must be in [0, 1]"),
        (lambda tmp: None, ["--output_dir", "new", "--prosqa_even_depths", "-0.1"],
         "--prosqa_even_depths must be in [0, 1]"),
        (lambda tmp: None, ["--output_dir", "new", "--prosqa_large_graphs", "0.5"],
         "--prosqa_large_graphs: options of the ProsQA generator, which this run does not use"),
        (lambda tmp: None, ["--output_dir", "new", "--mix_arith", "0.5", "--lane", "arith"], "does not apply"),
        (lambda tmp: None, ["--output_dir", "new", "--stage_grouped_batches", "0"], "must be >= 1"),
        (lambda tmp: None, ["--output_dir", "new", "--stage_grouped_batches", "2", "--prompt_stages", "0.5:1-3:1-3"],
         "no such stages to group"),
        (lambda tmp: (tmp / "own.jsonl").write_text(
            '{"question": "A leads to B. Where does A lead?", "steps": ["A leads to B."], "answer": "B."}\n'),
         ["--output_dir", "new", "--train_file", "own.jsonl", "--train_sampling_strategy", "group_by_length"],
         "group_by_length applies to generated hop chains"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, monkeypatch, capsys, setup, args, message):
    setup(tmp_path)
    stderr = refusal(tmp_path, monkeypatch, capsys, *args)
    assert message in stderr
    assert "it/s" not in stderr  # failed before any training step


def test_the_command_line_refuses_in_one_line(tmp_path):
    """The same refusal through the real command line: one line on stderr, exit code 2, nothing written."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    result = subprocess.run([sys.executable, str(ROOT / "trainers" / "rlf.py"), "--config", "tiny.yaml", "--output_dir",
                             "out", "--ema_decay", "1.5"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert result.stderr.strip().splitlines() == [
        "rlf.py: error: --ema_decay must be between 0 and 1 (got 1.5) (--help lists every option)"]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "nan"
    # A learning rate of 1e30 blows the weights up within a few steps after the first checkpoint.
    result = run_trainer(tmp_path, "--output_dir", str(out), "--learning_rate", "1e30", "--save_steps", "1",
                         "--max_grad_norm", "0")
    assert result.returncode != 0
    assert "at step" in result.stderr and "last good checkpoint" in result.stderr
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "a checkpoint from before the NaN must survive"
    weights = load_file(checkpoints[-1] / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_ema_weights_are_evaluated_and_saved_while_checkpoints_keep_the_raw_weights(tmp_path):
    out = tmp_path / "ema"
    result = run_trainer(tmp_path, "--output_dir", str(out), "--ema_decay", "0.9", "--eval_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    ema = load_file(out / "checkpoint-24" / "ema.safetensors")
    raw = load_file(out / "checkpoint-24" / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    assert ema and set(ema) <= set(final)
    for key in ema:
        torch.testing.assert_close(final[key], ema[key])
    assert any(not torch.allclose(raw[key], ema[key]) for key in ema)


def test_a_full_backbone_stops_training_from_its_share_of_the_steps(tmp_path, monkeypatch, capsys):
    out = train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "run", "--backbone_mode", "full",
                           "--freeze_backbone_from", "0.5", "--max_steps", "6", "--save_steps", "2",
                           "--eval_strategy", "no")
    assert "[backbone] frozen from step 3" in out
    weights = {step: load_file(tmp_path / "run" / f"checkpoint-{step}" / "model.safetensors") for step in (2, 4, 6)}
    backbone = [key for key in weights[2] if ".backbone." in key]
    core = [key for key in weights[2] if ".blocks." in key]
    assert backbone and core
    # Step 3 still trains the backbone; steps 4-6 leave it as it was (no weight decay, no momentum), not the core.
    assert any(not torch.equal(weights[2][key], weights[4][key]) for key in backbone)
    assert all(torch.equal(weights[4][key], weights[6][key]) for key in backbone)
    assert any(not torch.equal(weights[4][key], weights[6][key]) for key in core)


@pytest.mark.slow
def test_lora_continues_a_frozen_checkpoint_on_prompts_past_the_position_table(tmp_path):
    """The frozen recipe's stages: a frozen run, then LoRA added with --init_from. With backbone_positions false the
    backbone reads prompts longer than its 128 positions (16 distractor chains here: well over 128 tokens)."""
    base, adapted = tmp_path / "frozen", tmp_path / "lora"
    common = ["--backbone_positions", "false", "--eval_strategy", "no", "--save_strategy", "no"]
    result = run_trainer(tmp_path, "--output_dir", str(base), "--max_steps", "4", "--pretrain_steps", "4", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_trainer(tmp_path, "--output_dir", str(adapted), "--init_from", str(base / "final"), "--backbone_mode",
                         "lora", "--max_steps", "4", "--min_distractors", "16", "--max_distractors", "16", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(lora backbone)" in result.stdout

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataset_scripts.hop_chains import generate_examples
    from dataset_scripts.tokenizer import task_words

    model = AutoModelForCausalLM.from_pretrained(adapted / "final", trust_remote_code=True)
    assert model.config.backbone_mode == "lora" and not model.config.backbone_positions
    before, after = load_file(base / "final" / "model.safetensors"), load_file(adapted / "final" / "model.safetensors")
    attention = "model.backbone.h.0.attn.c_attn.weight"
    assert not torch.allclose(before[attention], after[attention])  # the adapters trained and were merged in
    torch.testing.assert_close(before["model.backbone.wte.weight"], after["model.backbone.wte.weight"])
    tokenizer = AutoTokenizer.from_pretrained(adapted / "final")
    examples = generate_examples(2, hops=3, seed=0, num_distractors=16, **task_words(tokenizer))
    inputs = tokenizer([example["question"] for example in examples], padding=True, return_tensors="pt")
    assert inputs["input_ids"].shape[1] > 128
    assert model.reason(**inputs).answer_ids.shape == (2,)


@pytest.mark.parametrize("config, backbone", [("gpt2_124m", "gpt2"), ("mamba2_130m", "mamba2")])
def test_pretrained_backbone_config_trains_on_a_local_stand_in(tmp_path, config, backbone):
    """The configs for Hub backbones (GPT-2 124M, Mamba2-130m), run for a few steps on a tiny local backbone of the
    same kind with its own BPE tokenizer: `<HALT>` is added, the frozen backbone keeps its weights under LoRA."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from dataset_scripts.hop_chains import generate_examples
    from dataset_scripts.tokenizer import task_words
    from tests.conftest import save_pretrained_backbone

    base_vocab = len(save_pretrained_backbone(tmp_path / "backbone", backbone))
    out = tmp_path / "run"
    overrides = ["--backbone_name_or_path", str(tmp_path / "backbone"), "--output_dir", str(out), "--max_steps", "8",
                 "--per_device_train_batch_size", "8", "--core_hidden_size", "32", "--eval_steps", "4",
                 "--save_steps", "4", "--eval_size", "8", "--eval_hops", "1", "2", "--logging_steps", "2",
                 "--bf16", "false", "--use_cpu", "true", "--dataloader_num_workers", "0"]
    command = [sys.executable, str(ROOT / "trainers" / "rlf.py"), "--config", str(ROOT / "trainers" / "configs" / f"{config}.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command + overrides, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    model = AutoModelForCausalLM.from_pretrained(out / "final", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert model.config.backbone_mode == "lora" and model.config.backbone_name_or_path == str(tmp_path / "backbone")
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == base_vocab + 1
    assert model.config.halt_token_id == tokenizer.convert_tokens_to_ids("<HALT>") == base_vocab
    assert tokenizer.padding_side == "left"
    first, *_, query, _ = tokenizer("A = dog. What is A?")["input_ids"]
    assert first == query  # the saved tokenizer keeps the prefix space
    pretrained = AutoModel.from_pretrained(tmp_path / "backbone").get_input_embeddings().weight
    torch.testing.assert_close(model.get_input_embeddings().weight[:base_vocab], pretrained)

    examples = generate_examples(4, hops=2, seed=0, **task_words(tokenizer))
    inputs = tokenizer([example["question"] for example in examples], padding=True, return_tensors="pt")
    assert model.reason(**inputs).answer_ids.shape == (4,)
