"""The one example format every layer reads: training, evaluation, benchmarks and model cards.

An example is a dict (a JSON object)::

    {"question": "A = dog. B = A. What is B?\\nAnswer:", "steps": ["B = A.", "A = dog."], "answer": "dog"}

- `question` (str): the prompt, read as it stands.
- `steps` (list of str): one reasoning step per loop.
- `answer` (str): must end with the answer word, the last trace element (punctuation aside).
- `trace` (list, optional): the loop targets, one word per step. When absent it is derived from `steps`
  by one rule, `last_word`: the last whitespace-separated word of each step, without the punctuation around it. An
  element may also be a list of words, a set: the loop's target is then the whole set or any member of it (the
  model's `loop_set_loss`), e.g. a search frontier or the next nodes of every shortest path. The last element, the
  answer word, is one word.
- `lane` (str, optional): the task lane (a LoRA adapter of the model); absent means the model's base lane.

Loop k predicts `trace[k-1]`, the loop after the last step predicts `<HALT>`, and the answer is the last trace
element. This is the format of Coconut's ProsQA / ProntoQA files, which therefore load unchanged; the built-in hop
chains are written in it too. Other fields are kept as they are.
"""

import os
import string

REQUIRED_FIELDS = ("question", "steps", "answer")
HALT_TOKEN = "<HALT>"  # the loop target after the last step


class ExampleError(ValueError):
    """A malformed example: the message names the example (its index) and the field."""


def last_word(step):
    """The default trace rule: the last word of a step without surrounding punctuation ("A = dog." -> "dog")."""
    words = step.split()
    return words[-1].strip(string.punctuation) if words else ""


def _fail(index, message):
    raise ExampleError(f"example {index}: {message}")


def _check_strings(index, field, values):
    if not isinstance(values, list) or not values:
        _fail(index, f"`{field}` must be a non-empty list of strings (got {values!r:.80})")
    for position, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            _fail(index, f"`{field}[{position}]` must be a non-empty string (got {value!r:.80})")


def normalize_example(example, index=0):
    """Check one example and return it with its `trace` filled in (derived from `steps` when absent).

    Raises `ExampleError` naming `index` and the field for: a missing field, an empty `steps`, a `trace` whose
    length differs from `steps`, a step with no word to derive a target from, or an `answer` that does not end
    with the last trace element.
    """
    if not isinstance(example, dict):
        _fail(index, f"must be a JSON object with {', '.join(REQUIRED_FIELDS)} (got {type(example).__name__})")
    missing = [field for field in REQUIRED_FIELDS if example.get(field) is None]
    if missing:
        _fail(index, f"missing field `{missing[0]}`")
    if not isinstance(example["question"], str) or not example["question"].strip():
        _fail(index, "`question` must be a non-empty string")
    _check_strings(index, "steps", example["steps"])
    if not isinstance(example["answer"], str):
        _fail(index, f"`answer` must be a string (got {example['answer']!r:.80})")
    trace = example.get("trace")
    if trace is None:
        trace = [last_word(step) for step in example["steps"]]
        empty = next((k for k, word in enumerate(trace) if not word), None)
        if empty is not None:
            _fail(index, f"`steps[{empty}]` has no word to take as its loop target ({example['steps'][empty]!r})")
    else:
        if not isinstance(trace, list) or not trace:
            _fail(index, f"`trace` must be a non-empty list (got {trace!r:.80})")
        for position, element in enumerate(trace):
            words = element if isinstance(element, list) and position < len(trace) - 1 else [element]
            _check_strings(index, f"trace[{position}]", words)
        if len(trace) != len(example["steps"]):
            _fail(index, f"`trace` has {len(trace)} entries but `steps` has {len(example['steps'])}")
    if last_word(example["answer"]) != trace[-1]:
        _fail(index, f"`answer` {example['answer']!r} does not end with the last trace element {trace[-1]!r}")
    lane = example.get("lane")
    if lane is not None and not isinstance(lane, str):
        _fail(index, f"`lane` must be a string (got {lane!r:.80})")
    return {**example, "trace": list(trace), "lane": lane}


def normalize_examples(examples):
    """`normalize_example` over a list of dicts or a `datasets.Dataset`; returns a list."""
    return [normalize_example(example, index) for index, example in enumerate(examples)]


class LoopTargets:
    """Token ids of loop-target words under one tokenizer, and words of predicted ids. A word is a target only if it
    is exactly one token where prompts put it, after a space (GPT-2: ` dog` is one token, ` giraffe` is not)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.halt_id = tokenizer.convert_tokens_to_ids(HALT_TOKEN)
        self._ids = {HALT_TOKEN: self.halt_id}
        self._words = {}

    def id(self, word):
        """The token id of `word`, or None if the tokenizer does not keep it as one known token."""
        if word not in self._ids:
            pieces = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            known = len(pieces) == 1 and pieces[0] != self.tokenizer.unk_token_id
            self._ids[word] = pieces[0] if known else None
        return self._ids[word]

    def ids(self, trace, index=None):
        """Token ids of a trace's words (a list of ids for a set element); an `ExampleError` naming the word (and
        example `index`) for one that is not a token."""
        ids = [[self.id(word) for word in element] if isinstance(element, list) else self.id(element)
               for element in trace]
        for element, element_ids in zip(trace, ids):
            words, word_ids = (element, element_ids) if isinstance(element, list) else ([element], [element_ids])
            if None in word_ids:
                word = words[word_ids.index(None)]
                where = f"example {index}: " if index is not None else ""
                raise ExampleError(f"{where}loop target {word!r} is not one token of this tokenizer "
                                   f"({self.tokenizer(' ' + word, add_special_tokens=False).tokens()})")
        return ids

    @staticmethod
    def words(element):
        """The words a trace element allows: itself, or the members of a set."""
        return element if isinstance(element, list) else [element]

    def word(self, token_id):
        """The word a predicted id stands for (a pretrained tokenizer's ` dog` is the word `dog`)."""
        if token_id not in self._words:
            self._words[token_id] = self.tokenizer.decode([token_id]).strip()
        return self._words[token_id]


def read_json_file(path):
    """A JSON list or JSONL file as a `datasets.Dataset` (`datasets.load_dataset("json")`), with one-line errors for
    a file that is missing, empty or not JSON instead of the loader's tracebacks."""
    import datasets

    if not os.path.isfile(path):
        raise ExampleError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        if not f.read(4096).strip():
            raise ExampleError(f"{path}: the file is empty")
    # Quiet while loading: a bad file's error log and progress bar would surround our one-line message.
    verbosity, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset("json", data_files=path, split="train")
    except datasets.exceptions.DatasetGenerationError:
        raise ExampleError(f"{path}: not a JSON list of example objects nor JSONL (one object per line)") from None
    except ValueError:  # a JSON list with no object in it
        raise ExampleError(f"{path}: the file holds no examples") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def load_examples(source, split="train"):
    """Load and check the examples of a JSON / JSONL file, a `save_to_disk` directory (its `split` if it is a
    `DatasetDict`) or a Hub dataset id (its `split`), as a list of dicts with `trace` filled in."""
    import datasets

    if os.path.isfile(source) or source.endswith((".json", ".jsonl")):
        data = read_json_file(source)
    else:
        try:  # a `save_to_disk` directory, else a Hub dataset id
            data = datasets.load_from_disk(source) if os.path.isdir(source) else datasets.load_dataset(source)
        except Exception as error:  # noqa: BLE001 (the loaders raise many kinds; the user needs one line)
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ExampleError(f"{source}: cannot load it as a dataset ({first_line})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ExampleError(f"{source}: no `{split}` split (it has {', '.join(data)})")
        data = data[split]
    if len(data) == 0:
        raise ExampleError(f"{source}: no examples in the `{split}` split")
    return normalize_examples(data)


__all__ = [
    "HALT_TOKEN", "ExampleError", "LoopTargets", "last_word", "load_examples", "normalize_example", "normalize_examples",
    "read_json_file",
]
