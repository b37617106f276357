"""Word-level tokenizer for hop-chain prompts.

Every variable name, value word, digit and punctuation mark is exactly one token,
so a prompt such as ``A = dog. B = A. What is B?\\nAnswer:`` becomes
``A = dog . B = A . What is B ? Answer :``. Loop targets (names, values and
``<HALT>``) are therefore single token ids, which is what the loop supervision
needs. Decoding joins tokens with spaces, so ``decode(encode(prompt))`` equals
the prompt up to whitespace.
"""

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dataset_scripts.words import VALUE_WORDS, VARIABLE_NAMES

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
HALT_TOKEN = "<HALT>"
EOS_TOKEN = "<eos>"

SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, HALT_TOKEN, EOS_TOKEN)
PROMPT_WORDS = ("What", "is", "Answer")
PUNCTUATION = ("=", ".", "?", ":", "+", "-", "*")
DIGITS = tuple(str(digit) for digit in range(10))


def build_vocab() -> dict[str, int]:
    """Return the fixed token -> id mapping (special tokens first, ``<pad>`` is 0)."""
    tokens = SPECIAL_TOKENS + PROMPT_WORDS + PUNCTUATION + DIGITS + VARIABLE_NAMES + VALUE_WORDS
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("token pools overlap: every vocabulary entry must be unique")
    return vocab


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer, left-padding and ready for ``save_pretrained``."""
    tokenizer = Tokenizer(models.WordLevel(vocab=build_vocab(), unk_token=UNK_TOKEN))
    # Split on whitespace (newlines included), then isolate each punctuation mark
    # ("dog." -> "dog", ".") and each digit ("14" -> "1", "4").
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
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
        model_max_length=1024,
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
