"""Push a trained tiny checkpoint to a local Hub stand-in (tests/hub_server.py) and pull it back in a fresh process."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from dataset_scripts.tokenizer import build_tokenizer
from recursive_latent import RecursiveLatentForCausalLM
from tests.hub_server import TOKEN, HubStandIn
from tests.test_remote_code import PROMPTS, run_fresh
from tests.test_trainer import ROOT, run_trainer


@pytest.fixture(scope="module")
def hub():
    server = HubStandIn().start()
    yield server
    server.stop()


def hub_env(hub, tmp_path, token=TOKEN):
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env["HF_TOKEN"] = token or ""
    return env


def run_module(args, env, cwd):
    full_env = {**os.environ, **env}
    if not env.get("HF_TOKEN"):
        full_env.pop("HF_TOKEN")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)


def tree_digest(directory):
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """Train a tiny model with --push_to_hub, benchmark it, then push the benchmarked checkpoint with the CLI."""
    tmp_path = tmp_path_factory.mktemp("hub")
    env = hub_env(hub, tmp_path)
    result = run_trainer(tmp_path, "--output_dir", str(tmp_path / "run"), "--push_to_hub", "--hub_model_id",
                         "user/tiny", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[hub] pushed" in result.stdout
    after_trainer = len(hub.uploads)
    final = tmp_path / "run" / "final"
    bench = run_module([str(ROOT / "benchmarks" / "ood_hops.py"), "--model", str(final), "--hops", "1", "2",
                        "--n", "50"], env, tmp_path)
    assert bench.returncode == 0, bench.stderr[-3000:]
    push = run_module(["-m", "recursive_latent.hub", "push", str(final), "user/tiny"], env, ROOT)
    assert push.returncode == 0, push.stderr[-3000:]
    return {"final": final, "tmp": tmp_path, "env": env, "after_trainer": after_trainer,
            "after_cli": len(hub.uploads)}


def test_pushed_checkpoint_loads_in_a_fresh_process_without_the_package(hub, pushed):
    files = hub.repos["user/tiny"]["files"]
    assert {"config.json", "model.safetensors", "configuration_recursive.py", "modeling_recursive.py",
            "tokenizer.json", "training_config.yaml", "README.md", "ood_hops.json", "ood_hops.png"} <= set(files)
    assert not {"optimizer.pt", "training_args.bin"} & set(files)

    workdir = pushed["tmp"] / "fresh"
    workdir.mkdir()
    got = run_fresh("user/tiny", workdir, {**pushed["env"], "HF_HOME": str(workdir / "empty_cache"), "HF_TOKEN": ""})
    model = RecursiveLatentForCausalLM.from_pretrained(pushed["final"]).eval()
    tokenizer = build_tokenizer()
    with torch.no_grad():
        reasoned = model.reason(**tokenizer(PROMPTS, padding=True, return_tensors="pt"))
        logits = model(**tokenizer(PROMPTS, padding=True, return_tensors="pt"), num_loops=5).loop_logits
    assert got["answer_ids"] == reasoned.answer_ids.tolist()
    assert (torch.tensor(got["loop_logits"]) - logits).abs().max() < 1e-5


def test_pushed_card_parses_and_its_model_index_equals_the_benchmark_json(hub, pushed, tmp_path):
    card_path = tmp_path / "README.md"
    card_path.write_bytes(hub.repos["user/tiny"]["files"]["README.md"])
    card = ModelCard.load(card_path)
    results = json.loads((pushed["final"] / "ood_hops.json").read_text())
    assert json.loads(hub.repos["user/tiny"]["files"]["ood_hops.json"]) == results
    reported = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    expected = {(f"ood_hops_{h}", m): row[m] for h, row in results["per_hop"].items()
                for m in ("answer_exact_match", "trace_exact_match", "halt_rate")}
    assert reported == expected and len(expected) == 6
    assert 'from_pretrained("user/tiny", trust_remote_code=True)' in card.text


def test_repush_uploads_only_what_changed(hub, pushed):
    trainer_uploads = [path for _, path in hub.uploads[:pushed["after_trainer"]]]
    cli_uploads = [path for _, path in hub.uploads[pushed["after_trainer"]:pushed["after_cli"]]]
    assert "model.safetensors" in trainer_uploads
    # The benchmark added its JSON and plot and changed the card; the weights did not change.
    assert set(cli_uploads) == {"README.md", "ood_hops.json", "ood_hops.png"}
    again = run_module(["-m", "recursive_latent.hub", "push", str(pushed["final"]), "user/tiny"], pushed["env"], ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(hub.uploads) == pushed["after_cli"]


@pytest.mark.parametrize("repo_id, token, message", [
    ("user/tiny", None, "no Hugging Face token"),
    ("user/tiny", "hf_wrong", "HTTP 401"),
    ("user/refused", TOKEN, "HTTP 403"),
    ("someone_else/tiny", TOKEN, "HTTP 403"),
    ("not a repo id", TOKEN, "bad repo id"),
])
def test_refused_push_fails_clearly_and_leaves_the_checkpoint_untouched(hub, pushed, repo_id, token, message):
    before, uploads = tree_digest(pushed["final"]), len(hub.uploads)
    env = hub_env(hub, pushed["tmp"], token)
    result = run_module(["-m", "recursive_latent.hub", "push", str(pushed["final"]), repo_id], env, ROOT)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert tree_digest(pushed["final"]) == before and len(hub.uploads) == uploads


def test_trainer_push_without_a_token_or_repo_fails_before_training(hub, tmp_path):
    no_token = run_trainer(tmp_path, "--output_dir", str(tmp_path / "a"), "--push_to_hub", "--hub_model_id",
                           "user/x", env={**hub_env(hub, tmp_path, None), "HF_TOKEN": ""})
    assert no_token.returncode != 0 and "needs a Hugging Face token" in no_token.stderr
    no_repo = run_trainer(tmp_path, "--output_dir", str(tmp_path / "b"), "--push_to_hub", env=hub_env(hub, tmp_path))
    assert no_repo.returncode != 0 and "needs --hub_model_id" in no_repo.stderr
    assert "it/s" not in no_token.stderr + no_repo.stderr


FRESH_LANES = """
import json, sys
sys.modules["recursive_latent"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
repo, prompts = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(repo)
every_lane = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
one_lane = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, lane_adapters=[]).eval()
one_lane.load_lane("other", repo, subfolder="adapters/other")
inputs = tokenizer(prompts, padding=True, return_tensors="pt")
with torch.no_grad():
    every = every_lane(**inputs, num_loops=4, lanes=["arith", "other"]).loop_logits
    one = one_lane(**inputs, num_loops=4, lanes=["pointer", "other"]).loop_logits
print("RESULT " + json.dumps({"lanes": [every_lane.lanes, one_lane.lanes], "every": every.tolist(), "one": one.tolist()}))
"""


@pytest.mark.slow
def test_lanes_push_with_the_checkpoint_or_one_by_one_and_pull_back(hub, pushed, tmp_path):
    model = RecursiveLatentForCausalLM.from_pretrained(pushed["final"]).eval()
    for lane in ("arith", "other"):
        for p in model.add_lane(lane):
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path / "with_other")
    build_tokenizer().save_pretrained(tmp_path / "with_other")
    only_arith = RecursiveLatentForCausalLM.from_pretrained(tmp_path / "with_other")
    only_arith.config.lane_adapters = ["arith"]  # as it was before the `other` lane was trained
    only_arith.save_pretrained(tmp_path / "with_arith")
    build_tokenizer().save_pretrained(tmp_path / "with_arith")

    env = hub_env(hub, tmp_path)
    first = run_module(["-m", "recursive_latent.hub", "push", str(tmp_path / "with_arith"), "user/lanes"], env, ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    uploads = len(hub.uploads)
    second = run_module(["-m", "recursive_latent.hub", "push", str(tmp_path / "with_other"), "user/lanes", "--lane",
                         "other"], env, ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {path for _, path in hub.uploads[uploads:]} == {"adapters/other/adapter_model.safetensors",
                                                          "adapters/other/adapter_config.json", "config.json"}

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = run_module(["-c", FRESH_LANES, "user/lanes", json.dumps(PROMPTS)],
                        {**env, "HF_HOME": str(fresh / "cache"), "HF_TOKEN": "", "PYTHONPATH": ""}, fresh)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.split("RESULT ")[-1])
    # from_pretrained brings every lane the pushed config lists; load_lane pulls one.
    assert got["lanes"] == [["pointer", "arith", "other"], ["pointer", "other"]]
    inputs = build_tokenizer()(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        every = model(**inputs, num_loops=4, lanes=["arith", "other"]).loop_logits
        one = model(**inputs, num_loops=4, lanes=["pointer", "other"]).loop_logits
    assert (torch.tensor(got["every"]) - every).abs().max() < 1e-5
    assert (torch.tensor(got["one"]) - one).abs().max() < 1e-5
