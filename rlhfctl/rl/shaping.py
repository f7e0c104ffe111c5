"""Reward shaping in the paper's order (docs/design.md §1).

1. standardise the RM score with the μ/σ saved beside the model;
2. normalise: per prompt group ``(r - mean_g)/(std_g + eps)``, or over the
   batch, or not at all;
3. clip to [-c, c];
4. shrink negative rewards asymmetrically (``r < 0 → α r``), or instead clip
   to an asymmetric range [lo, hi];
5. place the result on the EOS token (`place_on_eos`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rlhfctl.rl.advantages import batch_normalize, group_normalize
from rlhfctl.rm.model import last_real_index

NORMS = ("none", "batch", "group")


@dataclass(frozen=True)
class Shaping:
    norm: str = "group"
    std_floor: float = 0.0
    eps: float = 1e-6
    clip: float | None = 5.0
    neg_scale: float = 1.0  # α; 1 = symmetric
    clip_range: tuple[float, float] | None = None  # [lo, hi], the asymmetric-clip form

    def as_options(self) -> dict[str, Any]:
        """One key per flag (``--reward-norm`` -> ``reward_norm``) for the manifest."""
        return {OPTION_NAMES[k]: v for k, v in asdict(self).items()}


OPTION_NAMES = {"norm": "reward_norm", "std_floor": "reward_std_floor", "eps": "reward_eps", "clip": "reward_clip",
                "neg_scale": "neg_reward_scale", "clip_range": "reward_clip_range"}


def standardize(scores, mean: float, std: float):
    """``(r - μ) / σ`` with the reward model's saved statistics."""
    return (scores - mean) / (std if std > 0 else 1.0)


def shape_rewards(scores, group_size: int, shaping: Shaping):
    """Steps 2-4 on (P*n,) scores ordered prompt by prompt; returns (P*n,)."""
    if shaping.norm == "group":
        scores = group_normalize(scores, group_size, shaping.eps, shaping.std_floor)
    elif shaping.norm == "batch":
        scores = batch_normalize(scores, shaping.eps, shaping.std_floor)
    if shaping.clip:
        scores = scores.clamp(-shaping.clip, shaping.clip)
    if shaping.clip_range is not None:
        scores = scores.clamp(*shaping.clip_range)
    elif shaping.neg_scale != 1.0:
        scores = scores.where(scores >= 0, scores * shaping.neg_scale)
    return scores


def place_on_eos(scores, mask):
    """(B,) scores -> (B, T) token rewards: the score at each row's last real token."""
    import torch

    last = last_real_index(mask)  # (B,)
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    rewards[torch.arange(mask.shape[0], device=mask.device), last] = scores
    return rewards * mask
