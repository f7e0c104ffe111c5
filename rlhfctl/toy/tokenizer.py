"""The fixed character-level tokenizer of the toy models.

One token per printable ASCII character plus newline and tab, and four
specials. It is a plain `PreTrainedTokenizerFast` saved as ``tokenizer.json``,
so `AutoTokenizer` (and vLLM) load a toy model folder like any other.
"""

from __future__ import annotations

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARS = tuple(chr(c) for c in range(32, 127)) + ("\n", "\t")
VOCAB_SIZE = len(SPECIALS) + len(CHARS)

# A bos, then each message's text: a user turn ends with a newline (a chat prompt
# renders like a plain toy prompt), an assistant turn with eos, so a model
# trained on chat completions learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
)


def build_toy_tokenizer():
    """A fresh toy tokenizer (left padding, bos added, pad distinct from eos)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
