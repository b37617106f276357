"""Word-level tokenizer for task prompts.

Every word, digit and punctuation mark is exactly one token, so a prompt such as
``A = dog. B = A. What is B?\\nAnswer:`` becomes ``A = dog . B = A . What is B ? Answer :``.
Loop targets (one word each, and ``<HALT>``) are therefore single token ids, which is
what the loop supervision needs. Each token decodes with a space before it, so
``decode(encode(prompt))`` equals the prompt up to whitespace, and an answer
generated after a prompt reads ``Answer: dog``.

The vocabulary is the hop-chain word pools by default (:func:`build_vocab`), or the
words of a training set (:func:`vocabulary_from_examples`) for a user's own data;
a word outside it is ``<unk>``.

A pretrained backbone brings its own tokenizer (:func:`load_tokenizer`). There a word is
a loop target only if it is one token after a space (GPT-2: `` dog`` is, `` giraffe``
is not); :func:`task_words` finds the hop chains' words that are, and the data is drawn
from them alone.
"""

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dataset_scripts.words import TRAIN_VALUE_WORDS, VALUE_WORDS, VARIABLE_NAMES
from recursive_latent.examples import HALT_TOKEN, LoopTargets

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
EOS_TOKEN = "<eos>"

SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, HALT_TOKEN, EOS_TOKEN)
PROMPT_WORDS = ("What", "is", "Answer")
PUNCTUATION = ("=", ".", "?", ":", "+", "-", "*")
DIGITS = tuple(str(digit) for digit in range(10))


def build_vocab(words=None) -> dict[str, int]:
    """Return the token -> id mapping: special tokens first (``<pad>`` is 0), then ``words``, by default the hop
    chains' fixed pools (prompt words, punctuation, digits, names, values)."""
    if words is None:
        words = PROMPT_WORDS + PUNCTUATION + DIGITS + VARIABLE_NAMES + VALUE_WORDS
    tokens = SPECIAL_TOKENS + tuple(words)
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("token pools overlap: every vocabulary entry must be unique")
    return vocab


def pre_tokenizer():
    """Split on whitespace (newlines included), then isolate each punctuation mark ("dog." -> "dog", ".") and each
    digit ("14" -> "1", "4")."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def vocabulary_from_examples(examples) -> list[str]:
    """Every word of the examples' questions and traces, in order of first appearance (so the ids of a training set
    do not depend on hashing), without the special tokens."""
    split = pre_tokenizer().pre_tokenize_str
    words = {}
    for example in examples:
        for text in (example["question"], *(word for step in example["trace"] for word in LoopTargets.words(step))):
            words.update((piece, None) for piece, _ in split(text) if piece not in SPECIAL_TOKENS)
    return list(words)


def build_tokenizer(words=None) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer over ``words`` (default: the hop chains' pools), left-padding and ready for
    ``save_pretrained``."""
    tokenizer = Tokenizer(models.WordLevel(vocab=build_vocab(words), unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizer()
    # Every token decodes with a space before it, as GPT-2's ` dog` does: text generated after a prompt then reads
    # "Answer: dog" (pipelines append the decoded new tokens to the prompt as it stands).
    tokenizer.decoder = decoders.Replace(Regex("^"), " ")
    # Added tokens are matched before pre-tokenization, which keeps "<HALT>" whole
    # instead of splitting off "<" and ">". Unlike the special tokens, "<HALT>"
    # is an ordinary token: it survives ``decode(..., skip_special_tokens=True)``.
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in (PAD_TOKEN, UNK_TOKEN, EOS_TOKEN)]
    )
    tokenizer.add_tokens([AddedToken(HALT_TOKEN, special=False, normalized=False)])

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",
        truncation_side="left",  # the question ends a prompt: a prompt too long loses its start, not its question
        model_max_length=1024,
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(name_or_path=None):
    """The task tokenizer: the word-level one by default, or a pretrained backbone's own tokenizer (a Hub id or a
    local directory) with ``<HALT>`` added, a pad token (its EOS if it has none) and left padding."""
    if name_or_path is None:
        return build_tokenizer()
    # Saved with the tokenizer: left padding (the latent starts from each prompt's last position), and a prefix space,
    # so that a prompt's first name is the same token as that name later on (GPT-2: `ĠA`, not `A`).
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, padding_side="left", truncation_side="left",
                                              add_prefix_space=True)
    tokenizer.add_tokens([AddedToken(HALT_TOKEN, special=False, normalized=False)])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def word_ids(tokenizer) -> dict[str, int]:
    """Token id of every hop-chain name, value word, digit and ``<HALT>`` that is exactly one token where prompts put
    it (after a space, :class:`LoopTargets`); words the tokenizer splits are left out. The word-level tokenizer
    keeps every word."""
    targets = LoopTargets(tokenizer)
    ids = {word: targets.id(word) for word in (HALT_TOKEN,) + VARIABLE_NAMES + VALUE_WORDS + DIGITS}
    return {word: token_id for word, token_id in ids.items() if token_id is not None}


def task_words(tokenizer, values=TRAIN_VALUE_WORDS) -> dict[str, tuple[str, ...]]:
    """The ``names`` and ``values`` pools a tokenizer can supervise, as ``generate_examples`` takes them: the full
    pools for the word-level tokenizer (so its data is unchanged), the one-token words for a pretrained one."""
    ids = word_ids(tokenizer)
    return {
        "names": tuple(word for word in VARIABLE_NAMES if word in ids),
        "values": tuple(word for word in values if word in ids),
    }
