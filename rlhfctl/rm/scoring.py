"""Where a reward model's score is read: the last real token.

The score of a sequence is the value head's output at its last real token,
never a pad token. Pads are found by the attention mask, not by the pad id,
because many tokenizers use eos as pad and the eos of the response is real.
Works with left or right padding.
"""

from __future__ import annotations


def last_real_index(attention_mask):
    """(B,) index of the last position whose mask is 1; ``attention_mask`` (B, T)."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def gather_last(values, attention_mask):
    """``values`` (B, T) read at the last real token of each row -> (B,)."""
    idx = last_real_index(attention_mask)
    return values.gather(1, idx[:, None]).squeeze(1)
