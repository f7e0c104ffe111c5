"""PPO's clipped objectives, per token (aggregate with `rl.aggregation`)."""

from __future__ import annotations


def clipped_policy_loss(logp, old_logp, advantages, clip_eps: float):
    """Per-token PPO-clip loss and whether each token was clipped (Schulman et al. 2017, eq. 7).

    ``l_t = -min(ρ_t A_t, clip(ρ_t, 1-ε, 1+ε) A_t)`` with
    ``ρ_t = exp(log π(a_t|s_t) - log π_old(a_t|s_t))``. All tensors (B, T).
    """
    import torch

    ratio = (logp - old_logp).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -torch.min(unclipped, clipped)
    was_clipped = (clipped < unclipped).float()
    return loss, was_clipped


def clipped_value_loss(values, old_values, returns, clip: float | None):
    """Per-token clipped value loss (OpenAI baselines' PPO2; Andrychowicz et al. 2021 §3.5).

    ``½ max((V - R)², (V_old + clip(V - V_old, -c, c) - R)²)``; without a clip
    range, ``½ (V - R)²``. All tensors (B, T).
    """
    import torch

    plain = (values - returns) ** 2
    if not clip:
        return 0.5 * plain
    clipped_v = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.max(plain, (clipped_v - returns) ** 2)
