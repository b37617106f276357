"""The demo app: type a prompt (or draw one), watch the core loop over it one named step at a time.

    python app.py --model PATH_OR_HUB_ID [--port N]        # default: outputs/default/final, port 7860
    make app                                                # the same, on the default checkpoint

A Gradio Blocks app bound to 127.0.0.1. For one prompt it shows the answer, one row per loop (the token predicted,
its probability, the runner-up, and whether it is the right next node when the prompt's chain can be parsed), the
loops used and whether the model halted, and the latent's velocity per loop next to the lifeline gate (drawn by
`benchmarks/probes.py`'s own functions). A batch tab runs many prompts at once into a table and a CSV file.
"""

import argparse
import csv
import random
import re
import sys
import tempfile
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import cached_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from probes import latent_velocity, plot_gate, plot_velocity  # noqa: E402

from dataset_scripts.hop_chains import make_arith_example, make_example  # noqa: E402
from dataset_scripts.prosqa import CONCEPTS, make_prosqa_example  # noqa: E402
from dataset_scripts.tokenizer import task_words  # noqa: E402
from recursive_latent.examples import HALT_TOKEN  # noqa: E402

DEFAULT_MODEL = "outputs/default/final"
MAKE_IT = "make it with `make demo` or `python trainers/rlf.py --config trainers/configs/default.yaml`"
HALTING_MODES = ("token", "head", "fixed", "velocity")
LOOP_COLUMNS = ["loop", "predicted", "probability", "runner-up", "runner-up probability", "correct"]
BATCH_COLUMNS = ["prompt", "answer", "loops", "halted", "trace"]
MODEL_LOCK = threading.Lock()  # one run at a time: runs may set a halting threshold on the shared config


# ----------------------------------------------------------------------------------------------------------------
# Model loading
# ----------------------------------------------------------------------------------------------------------------


def load_model(path):
    """Load the checkpoint and its tokenizer (remote code), or exit with a one-line message saying how to make it."""
    is_local = (Path(path) / "config.json").is_file()
    is_hub_id = not Path(path).exists() and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", path) is not None
    if not is_local and not is_hub_id:
        sys.exit(f"No checkpoint at {path}: {MAKE_IT}.")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    except OSError as error:
        if is_local:
            raise
        reason = str(error).strip().splitlines()[0]
        sys.exit(f"No checkpoint at {path} (not a local directory, and the Hub says: {reason}); {MAKE_IT}.")
    return model, tokenizer


def trained_on_prosqa(path, tokenizer):
    """Whether the checkpoint was trained on ProsQA: its training_config.yaml says `data.task: prosqa`, or its
    tokenizer knows the ProsQA concept words."""
    config_file = cached_file(path, "training_config.yaml", _raise_exceptions_for_missing_entries=False,
                              _raise_exceptions_for_connection_errors=False)
    if config_file is not None:
        task = (yaml.safe_load(Path(config_file).read_text()).get("data") or {}).get("task")
        if task is not None:
            return task == "prosqa"
    return set(CONCEPTS) <= set(tokenizer.get_vocab())


# ----------------------------------------------------------------------------------------------------------------
# Prompts: fresh examples, and the chain a prompt states (to mark each loop right or wrong)
# ----------------------------------------------------------------------------------------------------------------


def new_hop_prompt(tokenizer, hops, variant, lane):
    """A fresh hop-chain prompt of `hops` hops drawn from the words the tokenizer supervises (an arith chain on the
    `arith` lane)."""
    rng, words = random.Random(), task_words(tokenizer)
    if lane == "arith":
        return make_arith_example(rng, int(hops), names=words["names"])["question"]
    return make_example(rng, int(hops), variant=variant, **words)["question"]


def new_prosqa_prompt():
    """A fresh ProsQA question, as published."""
    return make_prosqa_example(random.Random())["question"]


def hop_expectation(prompt):
    """For `X = Y.` statements and `What is Q?`: the node each loop should name, following from Q, or None."""
    query = re.search(r"What is (\w+)\?", prompt)
    assigned = dict(re.findall(r"(\w+) = (\w+)\.", prompt))
    if query is None or query.group(1) not in assigned:
        return None
    path, node = [], query.group(1)
    while node in assigned:
        node = assigned[node]
        if len(path) > len(assigned):  # a cycle: no chain to follow
            return None
        path.append(node)
    return [{node} for node in path]


def distances(edges, source):
    """Breadth-first distance from `source` to every node it reaches, through `edges` ({node: [next, ...]})."""
    distance, frontier = {source: 0}, deque([source])
    while frontier:
        node = frontier.popleft()
        for child in edges.get(node, ()):
            if child not in distance:
                distance[child] = distance[node] + 1
                frontier.append(child)
    return distance


def prosqa_expectation(prompt):
    """For `X is a Y.` / `Every X is a Y.` statements and `Is P a A or B?`: the nodes each loop may name (those at
    that step of some shortest path from P to the option P reaches), or None unless exactly one option is
    reachable."""
    question = re.search(r"Is (\w+) an? (\w+) or (?:an? )?(\w+)\?", prompt)
    if question is None:
        return None
    children, parents = {}, {}
    for parent, child in re.findall(r"(\w+) is an? (\w+)\.", prompt):
        children.setdefault(parent, []).append(child)
        parents.setdefault(child, []).append(parent)
    person, options = question.group(1), question.group(2, 3)
    from_person = distances(children, person)
    reached = [option for option in options if option in from_person]
    if len(reached) != 1:
        return None
    target = reached[0]
    depth, to_target = from_person[target], distances(parents, target)
    return [{node for node, step in from_person.items() if step == k and to_target.get(node) == depth - k}
            for k in range(1, depth + 1)]


def expected_nodes(prompt):
    """What each loop should predict, when the prompt's chain can be parsed (else None): one set of right nodes per
    step, then `<HALT>` (after a ProsQA path, restating the reached option counts too)."""
    steps = hop_expectation(prompt)
    if steps is not None:
        return steps, {HALT_TOKEN}
    steps = prosqa_expectation(prompt)
    if steps is not None:
        return steps, steps[-1] | {HALT_TOKEN}
    return None


# ----------------------------------------------------------------------------------------------------------------
# Running the model
# ----------------------------------------------------------------------------------------------------------------


def token_texts(tokenizer, ids):
    """Each token id as the word it reads as (`dog`, not GPT-2's `Ġdog`)."""
    return [tokenizer.decode([token_id]).strip() for token_id in ids]


class PromptError(ValueError):
    """A prompt the model cannot read; its message is shown in the app."""


@dataclass
class LoopRun:
    """One prompt's run: reason()'s answer, trace and loop count, and per loop the forward pass's probabilities and
    the latent's velocity."""

    answer: str
    loops: int
    halted: bool
    trace: list
    probabilities: list
    runner_up: list
    runner_up_probabilities: list
    velocity: list
    gate: list | None


def encode(model, tokenizer, prompts):
    """Tokenize the prompts (left-padded), refusing an empty prompt, words the tokenizer does not know (listed) and a
    prompt longer than the model reads (the model's own message)."""
    for prompt in prompts:
        if not prompt.strip():
            raise PromptError("The prompt is empty: type one, or draw a new example.")
        encoding = tokenizer(prompt, return_offsets_mapping=True)
        unknown = [prompt[start:end] for (start, end), token_id in zip(encoding["offset_mapping"], encoding["input_ids"])
                   if token_id == tokenizer.unk_token_id]
        if unknown:
            raise PromptError(f"Unknown words (this model's tokenizer reads them as {tokenizer.unk_token}): "
                              f"{', '.join(dict.fromkeys(unknown))}.")
        ids = torch.tensor([encoding["input_ids"]])
        try:
            model.model.check_inputs(ids, torch.ones_like(ids))
        except ValueError as error:
            raise PromptError(str(error)) from error
    return tokenizer(prompts, padding=True, return_tensors="pt")


@contextmanager
def halting(model, mode, parameter):
    """Yield reason()'s halting arguments for `mode`; `parameter` (loops for `fixed`, the threshold for `token`,
    `velocity` and `head`) is set on the model's config for the duration."""
    if mode == "fixed":
        yield {"halting": mode, "max_loops": int(parameter or model.config.fixed_loops)}
        return
    field = {"token": "halt_token_threshold", "velocity": "halt_velocity", "head": "halt_threshold"}.get(mode)
    if field == "halt_token_threshold" and not hasattr(model, "halts"):
        field = None  # a checkpoint whose code predates the setting
    saved = getattr(model.config, field) if field else None
    if field and parameter is not None:
        setattr(model.config, field, float(parameter))
    try:
        yield {"halting": mode}
    finally:
        if field:
            setattr(model.config, field, saved)


@torch.no_grad()
def run_prompt(model, tokenizer, prompt, lane, mode, parameter):
    """Run one prompt: the trace and loops from `model.reason`, the probabilities and latents from
    `model(..., num_loops=loops)`."""
    inputs = encode(model, tokenizer, [prompt])
    lanes = lane or None
    with MODEL_LOCK, halting(model, mode, parameter) as halting_args:
        try:
            reasoned = model.reason(**inputs, lanes=lanes, **halting_args)
        except ValueError as error:
            raise PromptError(str(error)) from error
        loops = int(reasoned.loops[0])
        outputs = model(**inputs, num_loops=loops, lanes=lanes)
    probabilities = outputs.loop_logits[0].float().softmax(-1)  # (loops, V)
    trace = reasoned.trace_ids[0, :loops]
    best = probabilities.topk(2, dim=-1)
    runner_up = torch.where(best.indices[:, 0] == trace, best.indices[:, 1], best.indices[:, 0])
    gate = model.model.gate
    return LoopRun(
        answer=token_texts(tokenizer, [int(reasoned.answer_ids[0])])[0],
        loops=loops,
        halted=bool(reasoned.halted[0]),
        trace=token_texts(tokenizer, trace.tolist()),
        probabilities=probabilities.gather(1, trace[:, None])[:, 0].tolist(),
        runner_up=token_texts(tokenizer, runner_up.tolist()),
        runner_up_probabilities=probabilities.gather(1, runner_up[:, None])[:, 0].tolist(),
        velocity=latent_velocity(outputs.latents[0]).tolist(),
        gate=None if gate is None else gate.detach().float().tolist(),
    )


@torch.no_grad()
def run_batch(model, tokenizer, prompts, lane, mode, parameter):
    """Run many prompts with `model.reason` in one batch; a prompt the model cannot read gets its error as answer.
    Returns one [prompt, answer, loops, halted, trace] row per prompt."""
    rows, readable = {}, []
    for index, prompt in enumerate(prompts):
        try:
            encode(model, tokenizer, [prompt])
            readable.append(index)
        except PromptError as error:
            rows[index] = [prompt, f"error: {error}", None, None, ""]
    if readable:
        inputs = encode(model, tokenizer, [prompts[index] for index in readable])
        with MODEL_LOCK, halting(model, mode, parameter) as halting_args:
            reasoned = model.reason(**inputs, lanes=lane or None, **halting_args)
        for row, index in enumerate(readable):
            loops = int(reasoned.loops[row])
            trace = token_texts(tokenizer, reasoned.trace_ids[row, :loops].tolist())
            answer = token_texts(tokenizer, [int(reasoned.answer_ids[row])])[0]
            rows[index] = [prompts[index], answer, loops, bool(reasoned.halted[row]), " ".join(trace)]
    return [rows[index] for index in range(len(prompts))]


# ----------------------------------------------------------------------------------------------------------------
# What the app shows
# ----------------------------------------------------------------------------------------------------------------


def loop_table(run, expected):
    """One row per loop: loop, predicted token, its probability, the runner-up and its probability, and "yes"/"no"
    for the right next node (empty when the prompt's chain could not be parsed)."""
    rows = []
    for loop, (token, probability, other, other_probability) in enumerate(
        zip(run.trace, run.probabilities, run.runner_up, run.runner_up_probabilities), start=1
    ):
        correct = ""
        if expected is not None:
            steps, after = expected
            correct = "yes" if token in (steps[loop - 1] if loop <= len(steps) else after) else "no"
        rows.append([loop, token, float(f"{probability:.4g}"), other, float(f"{other_probability:.4g}"), correct])
    return rows


def draw(run, mode, parameter):
    """The latent's velocity per loop (dotted: the `<HALT>` loop; dashed: the `velocity` threshold) and the lifeline
    gate's histogram, drawn by `benchmarks/probes.py`."""
    figure = Figure(figsize=(10, 3.4) if run.gate is not None else (6, 3.4))
    axes = figure.subplots(1, 2 if run.gate is not None else 1, squeeze=False)[0]
    halt_loop = run.loops if run.halted and mode == "token" else None
    plot_velocity(axes[0], run.velocity, halt_loop=halt_loop)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if mode == "velocity" and parameter is not None:
        axes[0].axhline(float(parameter), color="grey", linestyle="--")
    axes[0].set_title(f"Latent velocity per loop ({run.loops} loops)")
    if run.gate is not None:
        plot_gate(axes[1], run.gate)
    figure.tight_layout()
    return figure


def write_csv(rows):
    """Write the batch table to a fresh CSV file and return its path."""
    with tempfile.NamedTemporaryFile("w", suffix=".csv", prefix="batch_", delete=False, newline="") as file:
        writer = csv.writer(file)
        writer.writerow(BATCH_COLUMNS)
        writer.writerows(rows)
    return file.name


def describe(model, path, prosqa):
    """The header: what the app does, and the checkpoint in one line."""
    config = model.config
    lanes = ", ".join(lane or "base" for lane in model.lanes) if config.lane_adapters else "one lane"
    return (
        "# Recursive latent reasoning\n"
        "The backbone reads the prompt once; a tiny core then loops over a latent, naming one step per loop, "
        "until it predicts `<HALT>` (or another halting rule stops it).\n\n"
        f"**Checkpoint** `{path}`: {config.backbone_type} backbone, {model.num_parameters():,} parameters, "
        f"task {'ProsQA' if prosqa else 'hop chains'}, {lanes}, prompts up to "
        f"{config.max_prompt_tokens or 'any number of'} tokens, at most {config.max_inference_loops} loops."
    )


# ----------------------------------------------------------------------------------------------------------------
# The UI
# ----------------------------------------------------------------------------------------------------------------


def halting_parameter(model, mode):
    """The parameter input for a halting mode: loops for `fixed`, a threshold for the others (none for `token` on a
    checkpoint whose code predates `halt_token_threshold`)."""
    config = model.config
    if mode == "token" and hasattr(model, "halts"):
        # No bounds: the page starts in `token` mode, and this input's bounds would then hold for every mode.
        return gr.Number(label="p(<HALT>) threshold (halt_token_threshold)", value=config.halt_token_threshold,
                         precision=None, visible=True)
    if mode == "fixed":
        return gr.Number(label="loops", value=config.fixed_loops, precision=0, minimum=1,
                         maximum=config.max_inference_loops, visible=True)
    if mode == "velocity":
        return gr.Number(label="velocity threshold (halt_velocity)", value=config.halt_velocity, minimum=0,
                         precision=None, visible=True)
    if mode == "head":
        return gr.Number(label="p_halt threshold (halt_threshold)", value=config.halt_threshold, minimum=0,
                         maximum=1, precision=None, visible=True)
    return gr.Number(value=None, visible=False)


def build_app(model, tokenizer, path, prosqa=False):
    """The Gradio Blocks app around a loaded model: settings, a one-prompt tab and a batch tab."""

    def new_hop_chain(hops, variant, lane):
        """A fresh hop-chain prompt."""
        return new_hop_prompt(tokenizer, hops, variant, lane)

    def run_one(prompt, lane, mode, parameter):
        """Run one prompt: answer, loops used, halted, the per-loop table, the plot, and an error text (or "")."""
        try:
            run = run_prompt(model, tokenizer, prompt, lane, mode, parameter)
        except PromptError as error:
            return "", None, None, [], None, f"**Cannot run this prompt.** {error}"
        table = loop_table(run, expected_nodes(prompt))
        return run.answer, run.loops, run.halted, table, draw(run, mode, parameter), ""

    def run_many(text, lane, mode, parameter):
        """Run one prompt per line (a literal \\n stands for a newline): the results table and its CSV file."""
        prompts = [line.strip().replace("\\n", "\n") for line in text.splitlines() if line.strip()]
        rows = run_batch(model, tokenizer, prompts, lane, mode, parameter)
        return rows, (write_csv(rows) if rows else None)

    modes = [mode for mode in HALTING_MODES if mode != "head" or model.halt_head is not None]
    with gr.Blocks(title="recursive-latent", analytics_enabled=False) as demo:
        gr.Markdown(describe(model, path, prosqa))
        with gr.Row():
            lane = gr.Dropdown([(name or "base", name or "") for name in model.lanes], value=model.lanes[0] or "",
                               label="lane", visible=bool(model.config.lane_adapters))
            mode = gr.Radio(modes, value="token", label="halting")
            parameter = halting_parameter(model, "token")
        mode.change(lambda chosen: halting_parameter(model, chosen), mode, parameter, api_name=False)
        with gr.Tab("One prompt"):
            with gr.Row(visible=not prosqa):
                hops = gr.Slider(1, 64, value=5, step=1, label="hops")
                variant = gr.Radio(["shuffled", "chain"], value="shuffled", label="variant")
                new_hops = gr.Button("New hop chain", elem_id="new-hop-chain")
            new_prosqa = gr.Button("New ProsQA question", visible=prosqa, elem_id="new-prosqa")
            prompt = gr.Textbox(label="prompt", lines=4, elem_id="prompt")
            run = gr.Button("Run", variant="primary", elem_id="run")
            message = gr.Markdown(elem_id="message")
            with gr.Row():
                answer = gr.Textbox(label="answer", interactive=False, elem_id="answer")
                loops = gr.Number(label="loops used", precision=0, interactive=False)
                halted = gr.Checkbox(label="halted", interactive=False)
            table = gr.Dataframe(headers=LOOP_COLUMNS, label="per loop", interactive=False, wrap=True)
            plot = gr.Plot(label="latent velocity and lifeline gate")
        with gr.Tab("Batch"):
            prompts = gr.Textbox(label="prompts, one per line (\\n for a newline)", lines=8)
            run_all = gr.Button("Run all", variant="primary")
            batch_table = gr.Dataframe(headers=BATCH_COLUMNS, label="results", interactive=False, wrap=True)
            batch_csv = gr.File(label="CSV")

        new_hops.click(new_hop_chain, [hops, variant, lane], prompt, api_name="new_hop_chain")
        new_prosqa.click(new_prosqa_prompt, None, prompt, api_name="new_prosqa")
        run.click(run_one, [prompt, lane, mode, parameter], [answer, loops, halted, table, plot, message],
                  api_name="run")
        run_all.click(run_many, [prompts, lane, mode, parameter], [batch_table, batch_csv], api_name="batch")
    return demo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or Hub id")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    demo = build_app(model, tokenizer, args.model, prosqa=trained_on_prosqa(args.model, tokenizer))
    demo.launch(server_name="127.0.0.1", server_port=args.port)


if __name__ == "__main__":
    main()
