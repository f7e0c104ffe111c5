"""How per-token losses (B, T) become one number: an explicit choice.

The anchor frameworks disagree silently here, which changes the effective
weight of long vs short responses (Liu et al. 2025, "Understanding R1-Zero-Like
Training", §3.1):

- ``token-mean``: Σ_{b,t} m·l / Σ_{b,t} m — every token weighs the same
  (DAPO; TRL's default since 0.19; OpenRLHF's default, ``token_level_loss``);
- ``seq-mean-token-mean``: mean_b (Σ_t m·l / Σ_t m) — every sequence weighs
  the same (the original GRPO paper; the paper's code, ``--preset paper``;
  OpenRLHF only with its GSPO loss);
- ``seq-mean-token-sum-norm``: mean_b (Σ_t m·l) / T_norm — sums over tokens
  divided by a constant, the generation budget (Dr. GRPO).

Each takes an optional ``denominator`` (the global count over all ranks and
mini-batches of the step) so a loss split over ranks sums to the same value.
"""

from __future__ import annotations


def token_mean(loss, mask, denominator=None):
    """Σ m·l / Σ m over the whole batch."""
    total = (loss * mask).sum()
    return total / (mask.sum().clamp(min=1) if denominator is None else denominator)


def seq_mean_token_mean(loss, mask, denominator=None):
    """mean over sequences of each sequence's token mean."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / (loss.shape[0] if denominator is None else denominator)


def seq_mean_token_sum_norm(loss, mask, denominator=None, norm: float | None = None):
    """mean over sequences of (Σ_t m·l) / norm, norm = T (the budget) by default."""
    per_seq = (loss * mask).sum(-1) / (norm or loss.shape[-1])
    return per_seq.sum() / (loss.shape[0] if denominator is None else denominator)


LOSS_AGGREGATIONS = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}

# What each aggregation divides by: tokens or sequences (for global counts).
DENOMINATOR_UNIT = {"token-mean": "tokens", "seq-mean-token-mean": "sequences", "seq-mean-token-sum-norm": "sequences"}
