"""Advantages: GAE for PPO, group-normalised scores for GRPO, whitening."""

from __future__ import annotations


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    ``δ_t = r_t + γ V_{t+1} - V_t``, ``A_t = δ_t + γλ A_{t+1}``, and the
    returns ``R_t = A_t + V_t`` that the critic regresses on. The value after
    the last real token is 0 (the episode ends at eos). ``rewards``,
    ``values``, ``mask``: (B, T), responses right-padded (mask 1 then 0).
    Returns (advantages, returns), both (B, T), zero on padding.
    """
    import torch

    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * mask


def group_normalize(scores, group_size: int, eps: float = 1e-6, std_floor: float = 0.0):
    """``(r - mean_g) / (max(std_g, floor) + eps)`` within groups of ``group_size``.

    The group-relative advantage of GRPO (Shao et al. 2024, §4.1.2); ``scores``
    (P*n,) ordered prompt by prompt. std is the unbiased sample std, as in
    TRL and OpenRLHF; a floor keeps near-uniform groups from exploding.
    """
    grouped = scores.view(-1, group_size)  # (P*n,) -> (P, n)
    mean = grouped.mean(-1, keepdim=True)
    std = grouped.std(-1, keepdim=True).clamp(min=std_floor)
    return ((grouped - mean) / (std + eps)).view(-1)


def batch_normalize(scores, eps: float = 1e-6, std_floor: float = 0.0):
    """``(r - mean) / (max(std, floor) + eps)`` over the whole batch."""
    return (scores - scores.mean()) / (scores.std().clamp(min=std_floor) + eps)


def whiten(values, mask, shift_mean: bool = True, eps: float = 1e-8, mean=None, var=None):
    """Masked standardisation of (B, T) values (advantage normalisation in PPO).

    ``(x - mean) / sqrt(var + eps)`` with the mean and (population) variance
    of the masked entries; pass ``mean``/``var`` to use statistics gathered
    over more than this batch (all ranks).
    """
    import torch

    count = mask.sum().clamp(min=1)
    if mean is None:
        mean = (values * mask).sum() / count
    if var is None:
        var = (((values - mean) * mask) ** 2).sum() / count
    out = (values - mean) * torch.as_tensor(var + eps, dtype=values.dtype).rsqrt()
    if not shift_mean:
        out = out + mean
    return out * mask
