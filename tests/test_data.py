"""Tests for the hop-chain generator, tokenizer and collator."""

import random
import re
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoTokenizer

from dataset_scripts.collator import IGNORE_INDEX, LoopLabelCollator, tokenize
from dataset_scripts.hop_chains import (
    build_datasets,
    generate_examples,
    main,
    make_arith_example,
    make_example,
)
from dataset_scripts.tokenizer import DIGITS, HALT_TOKEN, build_tokenizer, load_tokenizer, task_words, word_ids
from dataset_scripts.words import (
    HELDOUT_VALUE_WORDS,
    TRAIN_VALUE_WORDS,
    VALUE_WORDS,
    VARIABLE_NAMES,
)
from recursive_latent.examples import last_word, normalize_example

HOPS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64)
STATEMENT = re.compile(r"([A-Z]+) = ([^.]+)\.")
QUESTION = re.compile(r" What is ([A-Z]+)\?\nAnswer:$")
ARITH = {"+": lambda a, b: (a + b) % 10, "-": lambda a, b: (a - b) % 10, "*": lambda a, b: (a * b) % 10}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


# --- reference solver: reads only the prompt text ---------------------------------------------


def parse_prompt(prompt):
    """Split a prompt into its ``(name, right-hand side)`` statements and the queried name."""
    question = QUESTION.search(prompt)
    assert question, f"malformed question in {prompt!r}"
    body = prompt[: question.start()]
    statements = STATEMENT.findall(body)
    assert " ".join(f"{name} = {rhs}." for name, rhs in statements) == body, f"malformed statements in {prompt!r}"
    names = [name for name, _ in statements]
    assert len(set(names)) == len(names), "a variable is assigned twice"
    return statements, question.group(1)


def solve_pointer(prompt):
    """Follow assignments from the query; return the visited nodes (the last is the value)."""
    statements, query = parse_prompt(prompt)
    assignments = dict(statements)
    path, node = [], query
    while node in assignments:
        node = assignments[node]
        path.append(node)
        assert len(path) <= len(assignments), "cycle in the assignments"
    return path


def solve_arith(prompt):
    """Evaluate the statements in order; return the value after each one."""
    statements, query = parse_prompt(prompt)
    assert query == statements[-1][0]
    env, values = {}, []
    for name, rhs in statements:
        tokens = rhs.split()
        if len(tokens) == 1:
            value = int(tokens[0])
        else:
            left, op, right = tokens
            value = ARITH[op](env[left], int(right))
        env[name] = value
        values.append(str(value))
    return values


# --- word pools ----------------------------------------------------------------------------------


def test_word_pools():
    assert len(VALUE_WORDS) >= 240
    assert len(set(VALUE_WORDS)) == len(VALUE_WORDS)
    assert all(re.fullmatch(r"[a-z]+", word) for word in VALUE_WORDS)
    assert not {"what", "is", "answer"} & set(VALUE_WORDS)
    assert HELDOUT_VALUE_WORDS == VALUE_WORDS[-40:]
    assert TRAIN_VALUE_WORDS + HELDOUT_VALUE_WORDS == VALUE_WORDS
    assert len(VARIABLE_NAMES) == 702 == len(set(VARIABLE_NAMES))
    assert VARIABLE_NAMES[:3] == ("A", "B", "C") and VARIABLE_NAMES[26:28] == ("AA", "AB")
    assert VARIABLE_NAMES[-1] == "ZZ"


# --- generator -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["chain", "shuffled"])
@pytest.mark.parametrize("hops", HOPS)
def test_pointer_examples_match_reference_solver(variant, hops):
    rng = random.Random(hops)
    for _ in range(5):
        example = make_example(rng, hops, variant=variant)
        path = solve_pointer(example["question"])
        assert example["trace"] == path
        assert example["answer"] == path[-1]
        assert example["hops"] == hops == len(path)
        assert [last_word(step) for step in example["steps"]] == path  # the format's default rule gives the trace
        assert normalize_example(example)["trace"] == path
        assert example["variant"] == variant and example["lane"] == "pointer"
        assert example["answer"] in TRAIN_VALUE_WORDS

        statements, _ = parse_prompt(example["question"])
        values = [rhs for _, rhs in statements if rhs in VALUE_WORDS]
        assert len(values) == len(set(values)), "value words must be distinct within a prompt"
        if variant == "chain":
            assert len(statements) == hops and statements[0][1] == example["answer"]
        else:
            assert 2 <= len(values) <= 4, "one answer chain plus 1..3 distractor chains"


def test_shuffled_distractor_options():
    rng = random.Random(0)
    for _ in range(20):
        example = make_example(rng, 3, num_distractors=2, distractor_hops=4)
        statements, _ = parse_prompt(example["question"])
        assert len(statements) == 3 + 2 * 4
        assert solve_pointer(example["question"]) == example["trace"]
    example = make_example(rng, 3, num_distractors=0)
    assert len(parse_prompt(example["question"])[0]) == 3


@pytest.mark.parametrize("hops", HOPS)
def test_arith_examples_match_reference_solver(hops):
    rng = random.Random(hops)
    for _ in range(5):
        example = make_arith_example(rng, hops)
        path = solve_arith(example["question"])
        assert example["trace"] == path and len(path) == hops == example["hops"]
        assert example["answer"] == path[-1]
        assert normalize_example(example)["trace"] == path
        assert (example["variant"], example["lane"]) == ("chain", "arith")


def test_generate_examples():
    examples = generate_examples(200, hops=[2, 7], variant="chain", seed=1)
    assert len(examples) == 200
    assert {example["hops"] for example in examples} == {2, 7}
    assert all(solve_pointer(example["question"]) == example["trace"] for example in examples)

    arith = generate_examples(50, hops=range(1, 4), seed=1, lane="arith")
    assert all(solve_arith(example["question"]) == example["trace"] for example in arith)

    heldout = generate_examples(50, hops=3, seed=1, values=HELDOUT_VALUE_WORDS)
    assert all(example["answer"] in HELDOUT_VALUE_WORDS for example in heldout)


def test_generation_is_deterministic_in_seed():
    assert generate_examples(100, range(1, 6), seed=3) == generate_examples(100, range(1, 6), seed=3)
    assert generate_examples(100, range(1, 6), seed=3) != generate_examples(100, range(1, 6), seed=4)
    assert generate_examples(20, 4, seed=3, lane="arith") == generate_examples(20, 4, seed=3, lane="arith")


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hops": 0}, r"hops must be an integer >= 1, got 0"),
        ({"hops": -2}, r"hops must be an integer >= 1, got -2"),
        ({"hops": 2.0}, r"hops must be an integer >= 1, got 2\.0"),
        ({"hops": 703, "variant": "chain"}, r"hops=703 is too large.*702"),
        ({"hops": 690}, r"hops=690 is too large.*705 distinct variable names"),
        ({"hops": 3, "variant": "loop"}, r"variant must be one of .*'chain'.*'shuffled'.*got 'loop'"),
        ({"hops": 3, "num_distractors": -1}, r"num_distractors must satisfy 0 <= lo <= hi, got -1"),
        ({"hops": 3, "num_distractors": (3, 1)}, r"num_distractors must satisfy 0 <= lo <= hi, got \(3, 1\)"),
        ({"hops": 3, "num_distractors": "2"}, r"num_distractors must be an int or an inclusive \(lo, hi\)"),
        ({"hops": 3, "distractor_hops": 0}, r"distractor_hops must satisfy 1 <= lo <= hi, got 0"),
        ({"hops": 1, "num_distractors": 100, "distractor_hops": 8}, r"needs up to 800 distractor names"),
        ({"hops": 3, "values": ("dog", "cat")}, r"values has 2 distinct words but up to 4 are needed"),
    ],
)
def test_make_example_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_example(random.Random(0), **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((-1, 3), {}, r"n must be an integer >= 0, got -1"),
        ((5, []), {}, r"hops must be an int or a non-empty sequence of ints, got \[\]"),
        ((5, [1, 0]), {}, r"hops must be an integer >= 1, got 0"),
        ((5, 3), {"variant": "loop"}, r"variant must be one of"),
        ((5, 3), {"lane": "logic"}, r"lane must be one of .*got 'logic'"),
        ((5, 3), {"lane": "arith", "num_distractors": 2}, r"arith lane takes only `names`"),
        ((5, 0), {"lane": "arith"}, r"hops must be an integer >= 1, got 0"),
    ],
)
def test_generate_examples_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_examples(*args, **kwargs)


def test_arith_examples_use_only_the_given_ops():
    rng = random.Random(0)
    ops_seen = set()
    for _ in range(50):
        example = make_arith_example(rng, 6, ops="-*")
        assert solve_arith(example["question"]) == example["trace"]
        ops_seen |= set(re.findall(r" ([-+*]) \d\.", example["question"]))
    assert ops_seen == {"-", "*"}
    only_plus = generate_examples(20, 4, seed=1, lane="arith", ops="+")
    assert all(example["question"].count(" + ") == 3 for example in only_plus)
    for bad in ("", "/", "+/"):
        with pytest.raises(ValueError, match="ops must be a non-empty string of '\\+-\\*'"):
            make_arith_example(random.Random(0), 3, ops=bad)


def test_make_arith_example_rejects_bad_hops():
    with pytest.raises(ValueError, match=r"hops must be an integer >= 1, got 0"):
        make_arith_example(random.Random(0), 0)
    with pytest.raises(ValueError, match=r"hops=703 is too large"):
        make_arith_example(random.Random(0), 703)


# --- tokenizer -----------------------------------------------------------------------------------


def test_vocabulary_order(tokenizer):
    vocab = tokenizer.get_vocab()
    assert len(vocab) == 4 + 3 + 7 + 10 + len(VARIABLE_NAMES) + len(VALUE_WORDS)
    head = ["<pad>", "<unk>", "<HALT>", "<eos>", "What", "is", "Answer", "=", ".", "?", ":", "+", "-", "*"]
    assert tokenizer.convert_ids_to_tokens(list(range(len(head)))) == head
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id) == (0, 1, 3)
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == 1024


def test_every_symbol_is_one_token(tokenizer):
    symbols = [*VARIABLE_NAMES, *VALUE_WORDS, *"0123456789", HALT_TOKEN, "What", "is", "Answer", *"=.?:+-*"]
    vocab = tokenizer.get_vocab()
    for symbol in symbols:
        assert tokenizer(symbol, add_special_tokens=False)["input_ids"] == [vocab[symbol]], symbol


def test_prompt_splitting(tokenizer):
    ids = tokenizer("A = dog. B = A + 14. What is B?\nAnswer: <HALT>")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == (
        "A = dog . B = A + 1 4 . What is B ? Answer : <HALT>".split()
    )


def test_round_trip_modulo_whitespace(tokenizer):
    rng = random.Random(0)
    prompts = [make_example(rng, hops, variant)["question"] for hops in (1, 5, 64) for variant in ("chain", "shuffled")]
    prompts += [make_arith_example(rng, hops)["question"] for hops in (1, 5, 64)]
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert re.sub(r"\s", "", tokenizer.decode(ids)) == re.sub(r"\s", "", prompt)
    assert tokenizer.decode(tokenizer("dog <HALT>")["input_ids"], skip_special_tokens=True).strip() == "dog <HALT>"


def test_unknown_words_map_to_unk(tokenizer):
    ids = tokenizer("A = zyzzyva. what is Dog?")["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids == [tokenizer.convert_tokens_to_ids("A"), 7, unk, 8, unk, 5, unk, 9]


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    prompt = make_example(random.Random(0), 4)["question"] + " <HALT> <eos> unknownword"
    assert reloaded(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.padding_side == "left" and reloaded.model_max_length == 1024
    assert (reloaded.pad_token, reloaded.unk_token, reloaded.eos_token) == ("<pad>", "<unk>", "<eos>")


# --- collator ------------------------------------------------------------------------------------


def test_tokenize_gives_the_tensors_of_transformers_return_tensors_path(tokenizer):
    texts = [example["question"] for example in generate_examples(8, hops=[1, 4, 9], num_distractors=(0, 12), seed=3)]
    ours, reference = tokenize(tokenizer, texts), tokenizer(texts, padding=True, return_tensors="pt")
    assert set(ours) == set(reference)
    for name, tensor in ours.items():
        assert tensor.dtype == reference[name].dtype == torch.long
        assert torch.equal(tensor, reference[name]), name
    assert (ours["attention_mask"] == 0).any()  # the batch is padded


def test_collator(tokenizer):
    examples = generate_examples(4, hops=[1, 2, 6], variant="chain", seed=0)
    examples = sorted(examples, key=lambda example: example["hops"])
    batch = LoopLabelCollator(tokenizer)(examples)

    lengths = [len(tokenizer(example["question"])["input_ids"]) for example in examples]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, max(lengths))
    for row, length in enumerate(lengths):
        padding = max(lengths) - length  # left padding: pads first, prompt flush right
        assert batch["attention_mask"][row].tolist() == [0] * padding + [1] * length
        assert (batch["input_ids"][row, :padding] == tokenizer.pad_token_id).all()
    assert (batch["input_ids"][:, -1] == tokenizer.convert_tokens_to_ids(":")).all()

    loops = max(example["hops"] for example in examples) + 1
    assert batch["loop_labels"].shape == (4, loops) and batch["loop_labels"].dtype == torch.long
    assert batch["num_steps"].tolist() == [example["hops"] for example in examples]
    halt_id = tokenizer.convert_tokens_to_ids(HALT_TOKEN)
    for row, example in enumerate(examples):
        labels = batch["loop_labels"][row].tolist()
        hops = example["hops"]
        assert labels[:hops] == tokenizer.convert_tokens_to_ids(example["trace"])
        assert labels[hops] == halt_id
        assert labels[hops + 1 :] == [IGNORE_INDEX] * (loops - hops - 1)


def test_collator_max_loops(tokenizer):
    examples = generate_examples(3, hops=3, seed=0)
    batch = LoopLabelCollator(tokenizer, max_loops=8)(examples)
    assert batch["loop_labels"].shape == (3, 8)
    assert (batch["loop_labels"][:, 4:] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match=r"max_loops=3 is too small: the batch needs 4 loops"):
        LoopLabelCollator(tokenizer, max_loops=3)(examples)


def test_collator_answer_only_supervises_the_last_loop(tokenizer):
    examples = generate_examples(3, hops=[1, 4], seed=1) + generate_examples(1, hops=2, seed=1, lane="arith")
    batch = LoopLabelCollator(tokenizer, answer_only_loops=6)(examples)
    assert batch["loop_labels"].shape == (4, 6)
    assert (batch["loop_labels"][:, :5] == IGNORE_INDEX).all()
    assert batch["loop_labels"][:, 5].tolist() == tokenizer.convert_tokens_to_ids([e["answer"] for e in examples])
    assert batch["lanes"] == ["pointer"] * 3 + ["arith"]


# --- splits --------------------------------------------------------------------------------------

SMALL = {"train_size": 3000, "val_size": 300, "test_size": 300, "ood_size": 50, "heldout_size": 300}


@pytest.fixture(scope="module")
def small_datasets():
    return build_datasets(seed=0, ood_hops=(6, 64), variant="chain", **SMALL)


def test_build_datasets_splits(small_datasets):
    assert list(small_datasets) == ["train", "validation", "test", "ood_hops_6", "ood_hops_64", "heldout_values"]
    assert small_datasets["train"].num_rows == 3000
    assert set(small_datasets["train"]["hops"]) == {1, 2, 3, 4, 5}
    assert set(small_datasets["ood_hops_64"]["hops"]) == {64}
    assert set(small_datasets["train"]["answer"]) <= set(TRAIN_VALUE_WORDS)
    assert set(small_datasets["heldout_values"]["answer"]) <= set(HELDOUT_VALUE_WORDS)


def test_build_datasets_has_no_leakage(small_datasets):
    train_prompts = set(small_datasets["train"]["question"])
    evaluation = [small_datasets[split]["question"] for split in small_datasets if split != "train"]
    all_evaluation = [prompt for prompts in evaluation for prompt in prompts]
    assert not train_prompts & set(all_evaluation)
    assert len(set(all_evaluation)) == len(all_evaluation)


def test_build_datasets_drops_duplicates():
    # One-hop chains admit only 702 * 220 distinct prompts, so 20k training prompts force collisions.
    dataset = build_datasets(
        seed=0, train_size=20_000, val_size=2000, test_size=2000, hops_train=(1,), ood_hops=(), variant="chain"
    )
    assert dataset["validation"].num_rows < 2000 and dataset["test"].num_rows < 2000
    train_prompts = set(dataset["train"]["question"])
    assert not train_prompts & set(dataset["validation"]["question"])
    assert not train_prompts & set(dataset["test"]["question"])
    assert not set(dataset["validation"]["question"]) & set(dataset["test"]["question"])


def test_heldout_values_never_train_answers(small_datasets):
    train_words = {word for prompt in small_datasets["train"]["question"] for word in re.findall(r"[a-z]+", prompt)}
    assert not train_words & set(HELDOUT_VALUE_WORDS)


def test_build_datasets_is_deterministic(small_datasets):
    again = build_datasets(seed=0, ood_hops=(6, 64), variant="chain", **SMALL)
    other = build_datasets(seed=1, ood_hops=(6, 64), variant="chain", **SMALL)
    for split in small_datasets:
        assert list(again[split]["question"]) == list(small_datasets[split]["question"])
    assert list(other["train"]["question"]) != list(small_datasets["train"]["question"])
    assert small_datasets["validation"]["question"][:50] != small_datasets["test"]["question"][:50]


def test_cli_writes_dataset_and_tokenizer(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "2", "--train_size", "100"])
    assert "train: 100" in capsys.readouterr().out
    dataset = load_from_disk(str(tmp_path))
    assert dataset["train"].num_rows == 100 and "ood_hops_64" in dataset
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert reloaded(dataset["train"]["question"][0])["input_ids"][-1] == reloaded.convert_tokens_to_ids(":")


# --- pretrained tokenizers: only one-token words are supervised -------------------------------


def test_the_word_level_tokenizer_supervises_every_word(tokenizer):
    words = VARIABLE_NAMES + VALUE_WORDS + DIGITS + (HALT_TOKEN,)
    assert word_ids(tokenizer) == dict(zip(words, tokenizer.convert_tokens_to_ids(list(words))))
    # The full pools, in order: the default run's data is what it was before pools existed.
    assert task_words(tokenizer) == {"names": VARIABLE_NAMES, "values": TRAIN_VALUE_WORDS}
    assert generate_examples(20, hops=3, seed=4, **task_words(tokenizer)) == generate_examples(20, hops=3, seed=4)


def test_a_pretrained_tokenizer_supervises_only_its_one_token_words(pretrained_gpt2_dir):
    tokenizer = load_tokenizer(pretrained_gpt2_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.convert_tokens_to_ids(HALT_TOKEN) == len(tokenizer) - 1  # added after the BPE vocabulary
    first, *_, query, _ = tokenizer("A = dog. What is A?")["input_ids"]
    assert first == query  # a prompt's first name is the same token as that name after a space
    words = task_words(tokenizer)
    assert 26 <= len(words["names"]) < len(VARIABLE_NAMES)
    assert 10 <= len(words["values"]) < len(TRAIN_VALUE_WORDS)
    for word in words["names"] + words["values"]:
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1

    examples = generate_examples(40, hops=[1, 5], seed=1, **words)
    batch = LoopLabelCollator(tokenizer)(examples)
    for row, example in enumerate(examples):
        prompt_ids = tokenizer(example["question"])["input_ids"]
        labels = [label for label in batch["loop_labels"][row].tolist() if label != IGNORE_INDEX]
        # Every supervised word is the very token the prompt holds it as; the last target is <HALT>.
        assert set(labels[:-1]) <= set(prompt_ids) and labels[-1] == tokenizer.convert_tokens_to_ids(HALT_TOKEN)
        assert batch["answer_ids"][row].item() == labels[-2]

    split_name = next(name for name in VARIABLE_NAMES if name not in words["names"])
    with pytest.raises(ValueError, match=f"loop target '{split_name}' is not one token"):
        LoopLabelCollator(tokenizer)([{**examples[0], "trace": [split_name]}])


def test_prompt_stages_follow_the_training_steps_not_the_shuffled_index():
    from transformers import TrainerControl, TrainerState

    from trainers.checkpoints import PromptStageCallback
    from trainers.rlf import DataArguments, HopChainStream

    data_args = DataArguments(prompt_stages=["0.5:12-12:6-6"])
    stream = HopChainStream(data_args, task_words(build_tokenizer()), size=100, seed=0, max_hops=3)
    callback = PromptStageCallback(stream)
    state = TrainerState(max_steps=10)

    def statements(index):
        return stream[index]["question"].count("=")

    state.global_step = 4  # before the stage: every index, even the last ones, draws the short prompts
    callback.on_step_begin(None, state, TrainerControl())
    short = [statements(i) for i in (0, 60, 99)]
    assert max(short) <= 3 * 5 + 3  # 1-3 distractor chains of 1-5 hops, plus the 3-hop chain itself
    state.global_step = 5  # the stage starts at half the steps: the first indices draw long prompts too
    callback.on_step_begin(None, state, TrainerControl())
    assert min(statements(i) for i in (0, 60, 99)) >= 12 * 6 + 1  # 12 distractor chains of 6 hops, plus the chain


def test_a_prompt_stage_can_lengthen_the_walks():
    from transformers import TrainerControl, TrainerState

    from trainers.checkpoints import PromptStageCallback
    from trainers.rlf import DataArguments, HopChainStream

    data_args = DataArguments(prompt_stages=["0.5:1-3:1-3:7-8"])
    stream = HopChainStream(data_args, task_words(build_tokenizer()), size=200, seed=0, max_hops=3)
    callback, state = PromptStageCallback(stream), TrainerState(max_steps=10)
    state.global_step = 4
    callback.on_step_begin(None, state, TrainerControl())
    assert {len(stream[i]["trace"]) for i in range(200)} == {1, 2, 3}  # the run's own walks (max_hops 3)
    state.global_step = 5
    callback.on_step_begin(None, state, TrainerControl())
    assert {len(stream[i]["trace"]) for i in range(200)} == {7, 8}  # the stage's


def test_a_grouped_stream_cuts_the_same_examples_into_batches_of_like_length():
    from trainers.rlf import DataArguments, HopChainStream

    data_args, words = DataArguments(min_distractors=1, max_distractors=16), task_words(build_tokenizer())
    batch, block = 8, 8 * HopChainStream.GROUPED_BATCHES
    plain = HopChainStream(data_args, words, size=2 * block, seed=0, max_hops=5)
    grouped = HopChainStream(data_args, words, size=2 * block, seed=0, max_hops=5, batch_size=batch)
    for start in (0, block):  # each block holds the same examples, in another order
        indices = range(start, start + block)
        assert sorted(grouped[i]["question"] for i in indices) == sorted(plain[i]["question"] for i in indices)

    def padding(stream):  # summed longest prompt per batch over summed mean prompt: 1.0 means no padding
        batches = [[len(stream[i]["question"]) for i in range(b, b + batch)] for b in range(0, 2 * block, batch)]
        return sum(map(max, batches)) / sum(sum(lengths) / batch for lengths in batches)

    assert padding(plain) > 1.5 and padding(grouped) < 1.15
    lengths = [len(grouped[i]["question"]) for i in range(block)]
    assert lengths != sorted(lengths)  # the batches are shuffled, not served short to long
    again = HopChainStream(data_args, words, size=2 * block, seed=0, max_hops=5, batch_size=batch)
    assert [again[i] for i in range(2 * block)] == [grouped[i] for i in range(2 * block)]  # deterministic


def test_a_grouped_stream_draws_its_prompt_stages_ungrouped():
    from trainers.rlf import DataArguments, HopChainStream

    data_args, words = DataArguments(prompt_stages=["0.5:2-16:1-8"]), task_words(build_tokenizer())
    stream = HopChainStream(data_args, words, size=256, seed=0, max_hops=3, batch_size=4)
    plain = HopChainStream(data_args, words, size=256, seed=0, max_hops=3)
    assert [stream[i] for i in range(64)] != [plain[i] for i in range(64)]  # grouped before the stage
    stream.progress = plain.progress = 0.5  # mid-block: from here on, the stage's examples as drawn
    assert [stream[i] for i in range(64)] == [plain[i] for i in range(64)]
    assert max(stream[i]["question"].count("=") for i in range(64)) > 3 * 5 + 3


def test_stage_grouped_batches_groups_a_prompt_stage_in_blocks_of_that_many_batches():
    from trainers.rlf import DataArguments, HopChainStream

    words, batch = task_words(build_tokenizer()), 8
    data_args = DataArguments(prompt_stages=["0.5:4-24:1-10"], stage_grouped_batches=4)
    plain = HopChainStream(data_args, words, size=512, seed=0, max_hops=3)
    stream = HopChainStream(data_args, words, size=512, seed=0, max_hops=3, batch_size=batch)
    before = [stream[i] for i in range(4 * batch)]  # the short prompts, in blocks of GROUPED_BATCHES
    plain.progress = stream.progress = 0.5
    staged = [stream[i]["question"] for i in range(256, 512)]
    assert before != [stream[i] for i in range(4 * batch)]  # the new stage redrew the block
    for start in range(0, 256, 4 * batch):  # each block of 4 batches: the same examples, sorted into batches
        block = staged[start : start + 4 * batch]
        assert sorted(block) == sorted(plain[256 + start + i]["question"] for i in range(4 * batch))
        batches = sorted((block[i : i + batch] for i in range(0, 4 * batch, batch)), key=lambda b: len(b[0]))
        assert all(max(map(len, short)) <= min(map(len, long)) for short, long in zip(batches, batches[1:]))
    with pytest.raises(ValueError, match="stage_grouped_batches"):
        DataArguments(stage_grouped_batches=0)


def test_the_mamba2_config_groups_its_prompt_stages_in_pairs_of_batches(tmp_path):
    from trainers.arguments import parse_arguments
    from trainers.rlf import setup, training_stream

    config = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "default_mamba2.yaml"
    args = parse_arguments(["--config", str(config), "--output_dir",
                            str(tmp_path / "run"), "--per_device_train_batch_size", "8"])
    stream = training_stream(setup(args), 1024, seed=0, max_hops=5)
    stream.progress = 0.95  # the second prompt stage
    lengths = [len(stream[i]["question"]) for i in range(256)]
    batches = [lengths[i : i + 8] for i in range(0, 256, 8)]
    for first, second in zip(batches[::2], batches[1::2]):  # each pair: the short half and the long half, in turn
        short, long = sorted((first, second), key=max)
        assert max(short) <= min(long)
