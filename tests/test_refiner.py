"""The CTR refiner: shapes, per-example halting, lanes, bad input, the remote-code round trip, and a short training
run that must refine (cosine up over steps) and halt sooner on easy examples."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from dataset_scripts.retrieval import make_retrieval_examples
from recursive_latent import RecursiveRefinerConfig, RecursiveRefinerModel, ctr_refine
from tests.test_trainer import ROOT


def tiny_refiner(**kwargs):
    torch.manual_seed(0)
    config = RecursiveRefinerConfig(dim=16, hidden_size=32, lane_names=["match", "shift"], max_steps=6, **kwargs)
    return RecursiveRefinerModel(config).eval()


def tiny_batch(n=5):
    e = make_retrieval_examples(n, seed=3, dim=16, num_candidates=4, num_concepts=8)
    return e["query"], e["candidates"], e["centroid"], e["target"], e["lane"]


@pytest.mark.parametrize("pool", ["mean", "attn"])
def test_forward_and_refine_shapes_and_per_example_halting(pool):
    model = tiny_refiner(pool=pool)
    q, Y, rbar, target, lanes = tiny_batch()
    out = model(q, Y, rbar, lanes, steps=4, target=target)
    assert out.answers.shape == (5, 4, 16) and out.halt_probs.shape == (5, 4) and out.loss.ndim == 0
    assert torch.allclose(out.answer.norm(dim=-1), torch.ones(5), atol=1e-5)
    # A threshold that only some examples pass stops them early; their answer is the one at their stop.
    probs = model(q, Y, rbar, lanes, steps=6).halt_probs
    threshold = probs[:, 0].median().item()
    refined = model.refine(q, Y, rbar, lanes, threshold=threshold)
    stopped = (probs >= threshold).float().argmax(1) + 1
    expected_steps = torch.where((probs >= threshold).any(1), stopped, torch.full_like(stopped, 6))
    assert refined.steps.tolist() == expected_steps.tolist() and 1 < len(set(refined.steps.tolist()))
    fixed = model(q, Y, rbar, lanes, steps=6).answers
    for row, steps in enumerate(refined.steps.tolist()):
        assert torch.allclose(refined.answer[row], fixed[row, steps - 1], atol=1e-5)
    y_hat, p_halt, trace = ctr_refine(model, q, Y, rbar, lanes, steps=6, tau=threshold)
    assert torch.equal(y_hat, refined.answer) and torch.equal(trace["steps"], refined.steps)


def test_monotone_loss_charges_only_steps_that_move_away_from_the_target():
    q, Y, rbar, target, lanes = tiny_batch()
    plain = tiny_refiner()(q, Y, rbar, lanes, steps=3, target=target)
    hinged = tiny_refiner(monotone_loss_weight=2.0)(q, Y, rbar, lanes, steps=3, target=target)
    cosine = F.cosine_similarity(plain.answers, target[:, None], dim=-1)
    rises = cosine[:, 1] - cosine[:, 2]
    assert (rises > 0).any() and (rises < 0).any()  # the untrained model moves some examples away, some closer
    assert torch.allclose(hinged.loss, plain.loss + 2.0 * rises.clamp(min=0).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="monotone_loss_weight"):
        RecursiveRefinerConfig(monotone_loss_weight=-1.0)


def test_lane_adapters_route_per_example():
    model = tiny_refiner()
    for lane in ("match", "shift"):  # an adapter for every lane: the shared body alone serves no lane
        for p in model.add_lane(lane):
            torch.nn.init.normal_(p, std=0.5)
    q, Y, rbar, _, _ = tiny_batch(4)
    lanes = ["shift", "match", "shift", "match"]
    with torch.no_grad():
        mixed = model(q, Y, rbar, lanes, steps=3).answer
        alone = torch.cat([model(q[i : i + 1], Y[i : i + 1], rbar[i : i + 1], lanes[i], steps=3).answer for i in range(4)])
    assert (mixed - alone).abs().max() < 1e-5
    with pytest.raises(ValueError, match="Unknown lane"):
        model.add_lane("poem")


def test_bad_input_fails_clearly():
    model = tiny_refiner()
    q, Y, rbar, _, lanes = tiny_batch()
    with pytest.raises(ValueError, match=r"`query` must have shape \(batch, 16\)"):
        model.refine(q[:, :8], Y, rbar, lanes)
    with pytest.raises(ValueError, match=r"`candidates` must have shape \(5, K, 16\)"):
        model.refine(q, Y[..., :8], rbar, lanes)
    with pytest.raises(ValueError, match="K = 0"):
        model.refine(q, Y[:, :0], rbar, lanes)
    bad = q.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="`query` holds NaN"):
        model.refine(bad, Y, rbar, lanes)
    with pytest.raises(ValueError, match=r"Unknown lane\(s\) \['poem'\]"):
        model.refine(q, Y, rbar, "poem")
    with pytest.raises(ValueError, match="`pool` must be one of"):
        RecursiveRefinerConfig(pool="max")


FRESH = textwrap.dedent("""
    import json, sys
    sys.modules["recursive_latent"] = None
    import torch
    from transformers import AutoConfig, AutoModel
    path, inputs = sys.argv[1], json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    q, Y, rbar = (torch.tensor(inputs[k]) for k in ("q", "Y", "rbar"))
    out = model.refine(q, Y, rbar, inputs["lanes"])
    print("RESULT " + json.dumps({"type": config.model_type, "lanes": model.config.lane_adapters,
                                  "answer": out.answer.tolist(), "steps": out.steps.tolist()}))
""")


def test_round_trip_with_remote_code_in_a_fresh_process(tmp_path):
    model = tiny_refiner()
    for p in model.add_lane("shift"):
        torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path)
    q, Y, rbar, _, lanes = tiny_batch()
    inputs = {"q": q.tolist(), "Y": Y.tolist(), "rbar": rbar.tolist(), "lanes": lanes}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path), json.dumps(inputs)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.split("RESULT ")[-1])
    want = model.refine(q, Y, rbar, lanes)
    assert got["type"] == "recursive_refiner" and got["lanes"] == ["shift"]
    assert (torch.tensor(got["answer"]) - want.answer).abs().max() < 1e-5 and got["steps"] == want.steps.tolist()


@pytest.mark.slow
def test_short_training_refines_over_steps_and_halts_sooner_on_easy_examples(tmp_path):
    out = tmp_path / "ctr"
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainers" / "ctr.py"), "--output_dir", str(out), "--max_steps", "400",
         "--per_device_train_batch_size", "128", "--learning_rate", "3e-3", "--ctr.lane", "match", "--ema_decay", "0",
         "--train_steps", "8", "--ctr.steps", "8", "--eval_size", "1000", "--train_size", "20000",
         "--save_strategy", "no", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    test = json.loads((out / "final" / "refiner_eval.json").read_text())["test"]
    cosines = test["cosine_per_step"]
    assert test["start_cosine"] < 0.5 < cosines[0] < max(cosines)  # every step helps at first
    assert test["halted_cosine"] > 0.85
    trace = test["trace_cosine_per_step"]  # refine()'s per-step trace: its last step is every example's answer
    assert len(trace) <= 8 and abs(trace[-1] - test["halted_cosine"]) < 1e-5
    easy, *_, hard = test["steps_by_difficulty_quartile"]
    assert easy < hard
    model = RecursiveRefinerModel.from_pretrained(out / "final")
    q, Y, rbar, target, lanes = (make_retrieval_examples(200, seed=5, lanes=("match",))[k]
                                 for k in ("query", "candidates", "centroid", "target", "lane"))
    assert F.cosine_similarity(model.refine(q, Y, rbar, lanes).answer, target).mean() > 0.85


def test_significant_falls_names_only_the_steps_that_fall_beyond_noise():
    sys.path.insert(0, str(ROOT / "trainers"))
    from ctr import significant_falls

    torch.manual_seed(0)
    rises = torch.tensor([0.0, 0.3, 0.1, -0.05, 0.0])  # steps 1-5: up, up, a clear fall at step 4, flat
    cosine = rises.cumsum(0) + 0.01 * torch.randn(400, 5)  # (examples, steps)
    assert significant_falls(cosine) == [4]
    assert significant_falls(cosine[:, :3]) == []
