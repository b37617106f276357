"""Lanes: per-task PEFT LoRA adapters on the shared core, routed per example, saved as standard PEFT folders."""

import random
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from dataset_scripts.hop_chains import make_example
from dataset_scripts.tokenizer import build_tokenizer, task_words
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM
from tests.conftest import TINY_GPT2, make_config
from tests.test_trainer import ROOT, run_trainer, train_in_process
from trainers.rlf import DataArguments, HopChainStream


def model_with_lanes(*lanes, seed=0, **config_kwargs):
    torch.manual_seed(seed)
    model = RecursiveLatentForCausalLM(make_config(**config_kwargs)).eval()
    for lane in lanes:
        for p in model.add_lane(lane):
            torch.nn.init.normal_(p, std=0.5)  # LoRA B starts at zero: make every adapter change the outputs
    return model


def test_a_mixed_lane_batch_gives_the_answers_of_each_lane_run_alone(batch):
    input_ids, attention_mask, _ = batch
    model = model_with_lanes("arith", "other")
    lanes = ["arith", "pointer", "other"]
    with torch.no_grad():
        mixed = model(input_ids, attention_mask, num_loops=4, lanes=lanes).loop_logits
        alone = torch.cat([model(input_ids[i : i + 1], attention_mask[i : i + 1], num_loops=4, lanes=lane).loop_logits
                           for i, lane in enumerate(lanes)])
        base = model(input_ids, attention_mask, num_loops=4).loop_logits
        reasoned = model.reason(input_ids, attention_mask, lanes=lanes)
        reasoned_alone = [model.reason(input_ids[i : i + 1], attention_mask[i : i + 1], lanes=lane)
                          for i, lane in enumerate(lanes)]
    # Equal up to float32 batching noise (1e-5 on logits of size ~1, thread-count dependent); a wrong adapter is ~1e-1.
    assert (mixed - alone).abs().max() < 1e-4
    # The adapters really act: the arith row differs from the base, the pointer row is the base.
    assert (mixed[0] - base[0]).abs().max() > 1e-2 and (mixed[1] - base[1]).abs().max() < 1e-6
    assert reasoned.answer_ids.tolist() == [r.answer_ids.item() for r in reasoned_alone]
    assert reasoned.loops.tolist() == [r.loops.item() for r in reasoned_alone]


@pytest.mark.parametrize("block", ["transformer", "mamba2"])
def test_lanes_save_as_peft_folders_and_load_with_the_base_in_one_call(tmp_path, batch, block):
    input_ids, attention_mask, _ = batch
    model = model_with_lanes("arith", core_block=block)
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapters" / "arith").iterdir()}
    loaded = RecursiveLatentForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lanes == ["pointer", "arith"]
    with torch.no_grad():
        for lanes in (None, "arith"):
            want = model(input_ids, attention_mask, num_loops=3, lanes=lanes).loop_logits
            got = loaded(input_ids, attention_mask, num_loops=3, lanes=lanes).loop_logits
            assert (want - got).abs().max() < 1e-6
    # The folder is a standard PEFT adapter: PeftModel loads it onto the plain shared model.
    peft_model = PeftModel.from_pretrained(RecursiveLatentForCausalLM.from_pretrained(tmp_path, lane_adapters=[]),
                                           tmp_path / "adapters" / "arith", adapter_name="arith").eval()
    with torch.no_grad():
        via_peft = peft_model(input_ids=input_ids, attention_mask=attention_mask, num_loops=3).loop_logits
        want = model(input_ids, attention_mask, num_loops=3, lanes="arith").loop_logits
    assert (via_peft - want).abs().max() < 1e-5


def test_shared_weights_are_saved_in_the_plain_layout(tmp_path):
    model = model_with_lanes("arith")
    model.save_pretrained(tmp_path)
    plain = RecursiveLatentForCausalLM.from_pretrained(tmp_path, lane_adapters=[])
    shared = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    assert shared.keys() == plain.state_dict().keys()
    assert all(torch.equal(shared[k], v) for k, v in plain.state_dict().items())


def test_bad_lanes_fail_clearly(tmp_path, batch):
    input_ids, attention_mask, _ = batch
    model = model_with_lanes("arith")
    with pytest.raises(ValueError, match=r"Unknown lane\(s\) \['poem'\]: this model has lanes \['pointer', 'arith'\]"):
        model.reason(input_ids, attention_mask, lanes=["poem", "arith", "pointer"])
    with pytest.raises(ValueError, match="has 2 entries for a batch of 3"):
        model(input_ids, attention_mask, lanes=["arith", "pointer"])
    for name in ("arith", "pointer", "lo", "Bad-Name"):
        with pytest.raises(ValueError, match="taken or invalid"):
            model.add_lane(name)
    model.save_lane("arith", tmp_path / "arith")
    wider = RecursiveLatentForCausalLM(make_config(core_hidden_size=48))
    with pytest.raises(ValueError, match="was saved for a different core"):
        wider.load_lane("arith", tmp_path / "arith")
    assert wider.lanes == ["pointer"]  # nothing was injected


def test_in_process_lane_run_trains_only_the_adapter(tmp_path, monkeypatch, capsys):
    """The fast version of the next test: a base model, then its `arith` adapter, a few steps each."""
    short = ["--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no", "--model.backbone_mode", "full"]
    train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "base", *short)
    out = train_in_process(tmp_path, monkeypatch, capsys, "--output_dir", "arith", "--init_from", "base/final",
                           "--lane", "arith", "--lane_r", "2", *short)
    assert "trainable (lane `arith` adapter)" in out
    before = load_file(tmp_path / "base" / "final" / "model.safetensors")
    after = load_file(tmp_path / "arith" / "final" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model = RecursiveLatentForCausalLM.from_pretrained(tmp_path / "arith" / "final")
    assert model.lanes == ["pointer", "arith"]
    assert any(p.abs().max() > 0 for name, p in model.named_parameters() if ".lora_B.arith." in name)


@pytest.mark.slow
def test_trainer_trains_a_lane_adapter_and_leaves_the_shared_weights_bit_identical(tmp_path):
    base = run_trainer(tmp_path, "--output_dir", str(tmp_path / "base"))
    assert base.returncode == 0, base.stderr[-3000:]
    lane = run_trainer(tmp_path, "--output_dir", str(tmp_path / "arith"), "--init_from", str(tmp_path / "base" / "final"),
                       "--lane", "arith", "--lane_r", "2")
    assert lane.returncode == 0, lane.stderr[-3000:]
    final = tmp_path / "arith" / "final"
    shared_before = load_file(tmp_path / "base" / "final" / "model.safetensors")
    shared_after = load_file(final / "model.safetensors")
    assert shared_before.keys() == shared_after.keys()
    assert all(torch.equal(shared_before[k], shared_after[k]) for k in shared_before)
    model = RecursiveLatentForCausalLM.from_pretrained(final)
    lane_params = sum(p.numel() for p in model.lane_parameters("arith"))
    assert f"{lane_params:,} trainable (lane `arith` adapter)" in lane.stdout
    # The adapter trained: it is no longer the identity LoRA starts as (B = 0).
    assert any(p.abs().max() > 0 for name, p in model.named_parameters() if ".lora_B.arith." in name)

    # From a checkpoint that has the lane's adapter, that adapter trains on (no second one); shared weights stay.
    again = run_trainer(tmp_path, "--output_dir", str(tmp_path / "again"), "--init_from", str(final), "--lane", "arith")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{lane_params:,} trainable (lane `arith` adapter)" in again.stdout
    assert "training the checkpoint's `arith` adapter on (rank 2;" in again.stdout
    continued = RecursiveLatentForCausalLM.from_pretrained(tmp_path / "again" / "final")
    assert continued.lanes == ["pointer", "arith"]
    shared_again = load_file(tmp_path / "again" / "final" / "model.safetensors")
    assert all(torch.equal(shared_before[k], shared_again[k]) for k in shared_before)
    before, after = dict(model.named_parameters()), dict(continued.named_parameters())
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if ".lora_" in k)
    # Without --init_from the whole new model trains on the lane, which becomes its base lane: no adapter.
    arith_base = run_trainer(tmp_path, "--output_dir", str(tmp_path / "x"), "--lane", "arith")
    assert arith_base.returncode == 0, arith_base.stderr[-3000:]
    assert "(lane `arith` adapter)" not in arith_base.stdout
    arith_model = RecursiveLatentForCausalLM.from_pretrained(tmp_path / "x" / "final")
    assert arith_model.config.base_lane == "arith" and arith_model.lanes == ["arith"]
    unknown = run_trainer(tmp_path, "--output_dir", str(tmp_path / "y"), "--lane", "poem")
    assert unknown.returncode != 0 and "--lane must be one of pointer, arith" in unknown.stderr


def test_mix_arith_puts_arith_rows_in_a_pointer_models_training_stream(tmp_path):
    words = task_words(build_tokenizer())
    mixed = HopChainStream(DataArguments(mix_arith=0.5, arith_ops="+"), words, size=400, seed=0, max_hops=4)
    rows = [mixed[i] for i in range(400)]
    arith = [row for row in rows if row["lane"] == "arith"]
    assert 150 < len(arith) < 250  # binomial(400, 0.5): outside this range has probability < 1e-4
    assert all(" - " not in row["question"] and " * " not in row["question"] for row in arith)
    assert all(row["variant"] == "shuffled" for row in rows if row["lane"] == "pointer")
    # Without --mix_arith the stream is what it was: no extra random draw, so earlier runs keep their data.
    plain = HopChainStream(DataArguments(), words, size=50, seed=0, max_hops=4)
    assert all(plain[i]["lane"] == "pointer" for i in range(50))
    rng = random.Random(7)  # example 7 of seed 0
    hops = rng.randint(1, 4)
    assert plain[7] == make_example(rng, hops, num_distractors=(1, 3), distractor_hops=(1, 5), **words)

    # The model trained on the mixture is a plain pointer model: the arith rows train its shared weights.
    result = run_trainer(tmp_path, "--output_dir", str(tmp_path / "mixed"), "--mix_arith", "0.5", "--arith_ops", "+")
    assert result.returncode == 0, result.stderr[-3000:]
    model = RecursiveLatentForCausalLM.from_pretrained(tmp_path / "mixed" / "final")
    assert model.lanes == ["pointer"]


def test_benchmark_runs_a_lane_on_the_shared_weights_alone_when_asked(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ood_hops import run

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = RecursiveLatentConfig(backbone_config=dict(TINY_GPT2, vocab_size=len(tokenizer)), max_loops=4,
                                   max_inference_loops=6, pad_token_id=tokenizer.pad_token_id,
                                   halt_token_id=tokenizer.convert_tokens_to_ids("<HALT>"), base_lane="pointer")
    model = RecursiveLatentForCausalLM(config)
    with torch.no_grad():  # some rows halt early, so the loop counts tell the runs apart
        model.get_output_embeddings().weight[tokenizer.convert_tokens_to_ids("<HALT>")] *= 30
    for p in model.add_lane("arith"):
        torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path / "lane")
    RecursiveLatentForCausalLM.from_pretrained(tmp_path / "lane", lane_adapters=[]).save_pretrained(tmp_path / "plain")
    for folder in ("lane", "plain"):
        tokenizer.save_pretrained(tmp_path / folder)

    def figures(folder, shared_only):
        per_hop = run(tmp_path / folder, "chain", [2, 3], 64, 32, 7, lane="arith", shared_only=shared_only)
        return [(row["answer_exact_match"], row["trace_exact_match"], row["mean_loops"]) for row in per_hop.values()]

    shared = figures("lane", shared_only=True)
    assert shared == figures("plain", shared_only=True)  # the same shared weights, no adapter
    assert shared != figures("lane", shared_only=False)  # the adapter changes the outputs
