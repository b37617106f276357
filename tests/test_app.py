"""The demo app (`app.py`): a real server in a subprocess, driven by `gradio_client` and by headless Chromium.

The checkpoint is an untrained tiny model saved here: its answers are wrong, but they must be exactly what
`model.reason()` gives in this process.
"""

import csv
import fcntl
import json
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from base64 import b64decode
from pathlib import Path

import gradio_client
import pytest
import torch

from dataset_scripts.hop_chains import make_example
from dataset_scripts.prosqa import make_prosqa_example, shortest_paths
from dataset_scripts.tokenizer import build_tokenizer
from recursive_latent import RecursiveLatentConfig, RecursiveLatentForCausalLM

ROOT = Path(__file__).resolve().parent.parent
# No telemetry, no Hub: the server and the client talk to 127.0.0.1 only.
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def save_checkpoint(path):
    """An untrained tiny model (GPT-2 backbone reading up to 256 tokens) with the word-level tokenizer."""
    tokenizer = build_tokenizer()
    backbone = dict(model_type="gpt2", vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=4,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                    pad_token_id=tokenizer.pad_token_id)
    config = RecursiveLatentConfig(backbone_config=backbone, max_loops=4, max_inference_loops=24,
                                   pad_token_id=tokenizer.pad_token_id,
                                   halt_token_id=tokenizer.convert_tokens_to_ids("<HALT>"))
    torch.manual_seed(0)
    model = RecursiveLatentForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url, server, log, timeout=120):
    """Poll the page until it answers; fail with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"app.py exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"app.py did not answer on {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The checkpoint, its model and tokenizer, the running server's URL and a client of it; the server is stopped
    at the end, whatever happened."""
    tmp = tmp_path_factory.mktemp("app")
    model, tokenizer = save_checkpoint(tmp / "ckpt")
    port, log = free_port(), tmp / "server.log"
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    with open(log, "w") as log_file:
        server = subprocess.Popen([sys.executable, "app.py", "--model", str(tmp / "ckpt"), "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, server, log)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in OFFLINE.items():
                patch.setenv(key, value)
            client = gradio_client.Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp / "dl"))
            yield {"model": model, "tokenizer": tokenizer, "url": url, "client": client, "tmp": tmp}
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def hop_prompt(hops, seed, variant="shuffled"):
    return make_example(random.Random(seed), hops, variant=variant)["question"]


def words(tokenizer, ids):
    return [tokenizer.decode([token_id]).strip() for token_id in ids]


@torch.no_grad()
def expected_run(model, tokenizer, prompt, **reason_args):
    """What the app must show for one prompt: reason()'s answer, loops, halted and trace, and the forward pass's
    per-loop argmax and probabilities (one thread, as the server runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inputs = tokenizer([prompt], return_tensors="pt")
        out = model.reason(**inputs, **reason_args)
        loops = int(out.loops[0])
        probabilities = model(**inputs, num_loops=loops).loop_logits[0].softmax(-1)
    finally:
        torch.set_num_threads(threads)
    trace = out.trace_ids[0, :loops]
    return {"answer": words(tokenizer, [int(out.answer_ids[0])])[0], "loops": loops, "halted": bool(out.halted[0]),
            "trace": words(tokenizer, trace.tolist()), "argmax": words(tokenizer, probabilities.argmax(-1).tolist()),
            "probabilities": probabilities.gather(1, trace[:, None])[:, 0].tolist()}


def run(client, prompt, mode="token", parameter=None):
    answer, loops, halted, table, plot, message = client.predict(
        prompt=prompt, mode=mode, parameter=parameter, api_name="/run")
    return {"answer": answer, "loops": loops, "halted": halted, "rows": table["data"], "plot": plot,
            "message": message}


@pytest.mark.parametrize("hops", [3, 12])
def test_answers_and_loops_are_those_of_reason(served, hops):
    prompt = hop_prompt(hops, seed=hops)
    got = run(served["client"], prompt)
    expected = expected_run(served["model"], served["tokenizer"], prompt)
    assert got["message"] == ""
    assert (got["answer"], got["loops"], got["halted"]) == (expected["answer"], expected["loops"], expected["halted"])
    # The trace comes from reason(), the probabilities from forward(num_loops=loops): the two passes agree.
    assert expected["argmax"] == expected["trace"]
    assert [row[1] for row in got["rows"]] == expected["trace"]
    assert [row[0] for row in got["rows"]] == list(range(1, expected["loops"] + 1))
    assert [row[2] for row in got["rows"]] == pytest.approx(expected["probabilities"], abs=1e-3)
    # A hop prompt's chain is parsed: every row says whether its token is the next node on the path.
    path = make_example(random.Random(hops), hops)["trace"] + ["<HALT>"] * expected["loops"]
    assert [row[5] for row in got["rows"]] == ["yes" if token == path[k] else "no"
                                               for k, token in enumerate(expected["trace"])]
    assert got["plot"] is not None


def test_velocity_halting_uses_the_chosen_threshold(served):
    prompt = hop_prompt(3, seed=3)
    model = served["model"]
    saved = model.config.halt_velocity
    model.config.halt_velocity = 0.02
    try:
        expected = expected_run(model, served["tokenizer"], prompt, halting="velocity")
    finally:
        model.config.halt_velocity = saved
    got = run(served["client"], prompt, mode="velocity", parameter=0.02)
    assert expected["halted"] and expected["loops"] < model.config.max_inference_loops  # the threshold matters
    assert (got["answer"], got["loops"], got["halted"]) == (expected["answer"], expected["loops"], True)
    fixed = run(served["client"], prompt, mode="fixed", parameter=4)
    assert (fixed["loops"], fixed["halted"]) == (4, True)


def test_token_mode_sets_the_halt_threshold_for_the_run_only(served):
    import app

    model = served["model"]
    assert app.halting_parameter(model, "token").visible  # the threshold input shows for `token`
    with app.halting(model, "token", 0.7) as halting_args:
        assert halting_args == {"halting": "token"} and model.config.halt_token_threshold == 0.7
    assert model.config.halt_token_threshold == 0.0
    prompt = hop_prompt(3, seed=3)
    got = run(served["client"], prompt, mode="token", parameter=0.7)
    model.config.halt_token_threshold = 0.7
    try:
        expected = expected_run(model, served["tokenizer"], prompt)
    finally:
        model.config.halt_token_threshold = 0.0
    assert (got["answer"], got["loops"], got["halted"]) == (expected["answer"], expected["loops"], expected["halted"])


def test_unreadable_prompts_get_an_error_text_and_the_server_keeps_serving(served):
    client = served["client"]
    unknown = run(client, "QQ = wombatfish. ZZ = QQ. What is ZZ?\nAnswer: blorp")
    assert "Unknown words" in unknown["message"] and "wombatfish, blorp" in unknown["message"]
    assert unknown["answer"] == "" and unknown["rows"] == []
    too_long = run(client, " ".join(["A = dog."] * 80) + " What is A?\nAnswer:")
    assert "but the backbone reads at most 256" in too_long["message"]  # the model's own ValueError
    assert "empty" in run(client, "   ")["message"]
    prompt = hop_prompt(2, seed=7)
    got = run(client, prompt)
    assert got["message"] == "" and got["answer"] == expected_run(served["model"], served["tokenizer"], prompt)["answer"]


def test_batch_tab_gives_a_table_and_a_csv(served):
    prompts = [hop_prompt(2, seed=1), hop_prompt(5, seed=2), "A = wombatfish. What is A?\nAnswer:"]
    text = "\n".join(prompt.replace("\n", "\\n") for prompt in prompts)
    table, csv_path = served["client"].predict(text=text, parameter=None, api_name="/batch")
    rows = table["data"]
    assert [row[0] for row in rows] == prompts
    for row, prompt in zip(rows[:2], prompts):
        expected = expected_run(served["model"], served["tokenizer"], prompt)
        assert row[1:] == [expected["answer"], expected["loops"], expected["halted"], " ".join(expected["trace"])]
    assert rows[2][1].startswith("error: Unknown words") and "wombatfish" in rows[2][1]
    with open(csv_path, newline="") as file:
        header, *csv_rows = list(csv.reader(file))
    assert header == ["prompt", "answer", "loops", "halted", "trace"]
    assert csv_rows == [[str(value) if value is not None else "" for value in row] for row in rows]


def test_chain_parsing():
    import app

    example = make_example(random.Random(0), 6)
    steps, after = app.expected_nodes(example["question"])
    assert steps == [{node} for node in example["trace"]] and after == {"<HALT>"}
    for seed in range(5):
        example = make_prosqa_example(random.Random(seed))
        paths = shortest_paths(example)
        steps, after = app.expected_nodes(example["question"])
        assert steps == [{path[k] for path in paths} for k in range(len(paths[0]))]
        assert after == {paths[0][-1], "<HALT>"}
    assert app.expected_nodes("Some text the app cannot parse.") is None


def test_time_to_first_answer(served):
    """Measured, printed and written to a JSON; not asserted."""
    seconds = []
    for seed in range(4):
        start = time.perf_counter()
        job = served["client"].submit(prompt=hop_prompt(5, seed=100 + seed), parameter=None, api_name="/run")
        job.result(timeout=60)
        seconds.append(time.perf_counter() - start)
    result = {"requests": len(seconds), "seconds": seconds, "median": sorted(seconds)[len(seconds) // 2]}
    path = served["tmp"] / "first_answer.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\ntime to first answer: {', '.join(f'{s:.3f}' for s in seconds)} s (written to {path})")


# ----------------------------------------------------------------------------------------------------------------
# Headless Chromium, driven over the DevTools protocol on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out)
# ----------------------------------------------------------------------------------------------------------------


class Chromium:
    """A headless Chromium and one page of it, driven with DevTools protocol commands."""

    def __init__(self, profile, width=1280, height=900):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("Chromium is not installed: `apt-get install -y chromium` (make test installs it)")
        to_browser, self.writer = os.pipe()
        self.reader, from_browser = os.pipe()

        def give_pipes():  # in the child: the protocol pipes become its fds 3 and 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--force-device-scale-factor=1",
                 # Only 127.0.0.1 resolves: the page cannot reach any other address.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
        self.process = subprocess.Popen([binary, *flags, "about:blank"], preexec_fn=give_pipes, close_fds=False,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.next_id, self.buffer, self.session, self.width = 0, b"", None, width
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method, timeout=60, **params):
        """Send one command (to the page once attached) and return its result."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self.writer, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buffer:
                if not select.select([self.reader], [], [], max(deadline - time.monotonic(), 0))[0]:
                    pytest.fail(f"Chromium did not answer {method} within {timeout} s")
                chunk = os.read(self.reader, 1 << 20)
                if not chunk:
                    pytest.fail(f"Chromium closed the DevTools pipe during {method}")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression, timeout=60):
        """Evaluate JavaScript in the page (awaiting a promise) and return its value."""
        result = self.send("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition, timeout=45):
        """Wait until the JavaScript `condition` is truthy in the page; return its value."""
        return self.evaluate(f"""new Promise((resolve, reject) => {{
            const start = Date.now();
            (function poll() {{
                let value; try {{ value = ({condition}); }} catch (error) {{ value = null; }}
                if (value) resolve(value);
                else if (Date.now() - start > {timeout * 1000}) reject(new Error("timed out: " + {json.dumps(condition)}));
                else setTimeout(poll, 100);
            }})();
        }})""", timeout=timeout + 10)

    def screenshot(self, path):
        """Save the whole page as a PNG."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=height, deviceScaleFactor=1,
                  mobile=False)
        time.sleep(0.3)
        Path(path).write_bytes(b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.reader)
        os.close(self.writer)


ANSWER = "(document.querySelector('#answer textarea') || document.querySelector('#answer input')).value"
PROMPT = "document.querySelector('#prompt textarea').value"


def screenshot_after_a_run(url, path, profile, prompt=None):
    """Open the app in headless Chromium, type `prompt` (or draw a new hop chain with the page's defaults), press
    Run, wait for the answer and the plot, and save a screenshot of the whole page. Returns (prompt, answer)."""
    browser = Chromium(profile)
    try:
        browser.send("Page.navigate", url=url)
        browser.wait_for("document.querySelector('#prompt textarea')")
        if prompt is None:
            browser.evaluate("document.querySelector('#new-hop-chain').click()")
        else:
            browser.evaluate(f"""(() => {{
                const box = document.querySelector('#prompt textarea');
                box.value = {json.dumps(prompt)};
                box.dispatchEvent(new Event('input', {{bubbles: true}}));
            }})()""")
        prompt = browser.wait_for(PROMPT)
        browser.evaluate("document.querySelector('#run').click()")
        answer = browser.wait_for(ANSWER)
        browser.wait_for("document.querySelector('.gradio-container img[src^=\"data:image\"]')")
        browser.screenshot(path)
        return prompt, answer
    finally:
        browser.close()


def test_page_runs_a_prompt_in_headless_chromium(served):
    prompt = hop_prompt(3, seed=11)
    path = served["tmp"] / "app_screenshot.png"
    shown_prompt, answer = screenshot_after_a_run(served["url"], path, served["tmp"] / "chromium", prompt)
    print(f"\nscreenshot: {path}")
    assert shown_prompt == prompt
    assert answer == expected_run(served["model"], served["tokenizer"], prompt)["answer"]
    png = path.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1280 and height > 600


def test_missing_checkpoint_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, **OFFLINE}
    result = subprocess.run([sys.executable, "app.py", "--model", "/nonexistent"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent" in lines[0]
    assert "make demo" in lines[0] and "python trainers/rlf.py --config trainers/configs/default.yaml" in lines[0]
