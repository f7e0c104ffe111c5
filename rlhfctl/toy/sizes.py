"""Toy model sizes: Llama-style configs trained from scratch.

Roughly 0.1M / 1M / 5M parameters (`rlhfctl toy-data --help` and
docs/toy-task.md give the exact counts). No dropout, so a training step is a
pure function of the weights and the batch, which is what makes `--resume`
exact.
"""

from __future__ import annotations

from rlhfctl.toy.tokenizer import SPECIALS, VOCAB_SIZE

TOY_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=176),
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384),
    "base": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=704),
}


def toy_config(size: str):
    """A `LlamaConfig` for ``toy:SIZE`` (the caller checks that SIZE exists)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        pad_token_id=SPECIALS.index("<pad>"),
        bos_token_id=SPECIALS.index("<bos>"),
        eos_token_id=SPECIALS.index("<eos>"),
        **TOY_SIZES[size],
    )
