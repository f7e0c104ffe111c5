"""The optimisation half of a policy step: PPO epochs over mini-batches.

Losses are aggregated with the explicit `--loss-agg`, each divided by the
*global* count of its mini-batch (all ranks), and scaled by the world size
because DDP averages gradients: two ranks compute the gradient of one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import torch

from rlhfctl.rl.aggregation import DENOMINATOR_UNIT, LOSS_AGGREGATIONS
from rlhfctl.rl.kl import KL_ESTIMATORS
from rlhfctl.rl.losses import clipped_policy_loss, clipped_value_loss
from rlhfctl.training.experience import AdvantageSettings, Experience, advantages_for, response_logprobs, response_values, rollout_kl
from rlhfctl.training.loop import optimizer_step


@dataclass
class Models:
    policy: Any
    policy_opt: Any
    critic: Any = None
    critic_opt: Any = None

    def others(self) -> tuple:
        """What trains beside the policy, as checkpoints keep it (`loop.save_training_state`)."""
        return () if self.critic is None else (("critic", self.critic, self.critic_opt),)


@dataclass(frozen=True)
class UpdateSettings:
    """What the optimisation half of a step reads of the run's settings (`of` takes them from a `PolicyConfig`)."""

    ppo_epochs: int
    mini_batch_size: int | None  # rows per update, all ranks; None: the whole batch
    critic_warmup_steps: int
    loss_agg: str
    max_new_tokens: int  # Dr. GRPO's sum-norm divides by it
    temperature: float  # the policy's log-probs are of the tempered distribution it sampled from
    clip_eps: float
    value_clip: float
    kl_estimator: str
    kl_in: str  # reward | loss
    kl_coef: float
    max_grad_norm: float

    @classmethod
    def of(cls, config: Any) -> "UpdateSettings":
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def update(models: Models, exp: Experience, config: UpdateSettings, accelerator, step: int, seed: int,
           settings: AdvantageSettings | None = None) -> dict[str, float]:
    """``ppo_epochs`` passes over the rollout batch in shuffled mini-batches; or, when `collect` left the
    advantages to it (`experience.reuses_update_forward`), one update from its own forward passes."""
    if exp.advantages is None:
        return _single_update(models, exp, config, settings, accelerator)
    rows = exp.input_ids.shape[0]
    per_rank = (config.mini_batch_size or rows * accelerator.num_processes) // accelerator.num_processes
    train_actor = step > config.critic_warmup_steps
    sums: dict[str, list[float]] = {}
    g = torch.Generator().manual_seed(seed)
    models.policy.train()
    for _ in range(config.ppo_epochs):
        for index in torch.randperm(rows, generator=g).split(max(1, per_rank)):
            mb = exp.rows(index.to(exp.input_ids.device))
            denominator = _global_count(mb.response_mask, config.loss_agg, accelerator)
            if train_actor:
                _add(sums, _actor_step(models, mb, config, denominator, accelerator))
            if models.critic is not None:
                _add(sums, _critic_step(models, mb, config, denominator, accelerator))
    return {k: sum(v) / len(v) for k, v in sums.items() if v}


def _single_update(models: Models, exp: Experience, config: UpdateSettings, settings, accelerator) -> dict[str, float]:
    """One on-policy update: π_old is this update's forward pass of the policy, detached; the KL penalty
    and the advantages are computed from it, then the policy (and the critic, PPO) take their steps."""
    models.policy.train()
    mask = exp.response_mask
    logp, entropy = response_logprobs(models.policy, exp.input_ids, exp.attention_mask, mask.shape[1], with_entropy=True,
                                      temperature=config.temperature, layout=exp.layout())
    exp.old_logp = logp.detach()
    exp.advantages, exp.returns = advantages_for(exp.scores, exp, settings, accelerator)
    denominator = _global_count(mask, config.loss_agg, accelerator)
    stats = _actor_step(models, exp, config, denominator, accelerator, forward=(logp, entropy))
    if models.critic is not None:
        stats.update(_critic_step(models, exp, config, denominator, accelerator))
    stats["kl"] = rollout_kl(exp.old_logp, exp.ref_logp, mask)  # what `collect` reports otherwise
    return stats


def aggregation(config: UpdateSettings):
    """The `--loss-agg` function; Dr. GRPO's sum-norm divides by the generation budget, a constant."""
    agg = LOSS_AGGREGATIONS[config.loss_agg]
    if config.loss_agg == "seq-mean-token-sum-norm":
        return functools.partial(agg, norm=config.max_new_tokens)
    return agg


def _actor_step(models: Models, mb: Experience, config: UpdateSettings, denominator, accelerator, forward=None) -> dict[str, float]:
    """One optimiser step of the policy; ``forward`` = (logp, entropy) when the caller already ran it."""
    agg = aggregation(config)
    mask = mb.response_mask.float()
    logp, entropy = forward or response_logprobs(models.policy, mb.input_ids, mb.attention_mask, mask.shape[1],
                                                 with_entropy=True, temperature=config.temperature, layout=mb.layout())
    token_loss, clipped = clipped_policy_loss(logp, mb.old_logp, mb.advantages, config.clip_eps)
    kl = KL_ESTIMATORS[config.kl_estimator](logp, mb.ref_logp)
    if config.kl_in == "loss":
        token_loss = token_loss + config.kl_coef * kl
    loss = agg(token_loss, mask, denominator)
    accelerator.backward(loss * accelerator.num_processes)
    grad_norm = optimizer_step(accelerator, models.policy, models.policy_opt, config.max_grad_norm)
    count = mask.sum().clamp(min=1)
    return {"policy_loss": float(accelerator.reduce(loss.detach(), reduction="sum")), "grad_norm": grad_norm,
            "clip_fraction": float((clipped * mask).sum() / count), "entropy": float((entropy.detach() * mask).sum() / count),
            "kl_loss_term": float((kl.detach() * mask).sum() / count)}


def _critic_step(models: Models, mb: Experience, config: UpdateSettings, denominator, accelerator) -> dict[str, float]:
    agg = aggregation(config)
    mask = mb.response_mask.float()
    values = response_values(models.critic, mb.input_ids, mb.attention_mask, mask.shape[1], layout=mb.layout())
    loss = agg(clipped_value_loss(values, mb.values, mb.returns, config.value_clip), mask, denominator)
    accelerator.backward(loss * accelerator.num_processes)
    grad_norm = optimizer_step(accelerator, models.critic, models.critic_opt, config.max_grad_norm)
    return {"value_loss": float(accelerator.reduce(loss.detach(), reduction="sum")), "critic_grad_norm": grad_norm}


def _global_count(mask, loss_agg: str, accelerator):
    """Tokens or sequences in this mini-batch over all ranks: the loss denominator."""
    local = mask.sum() if DENOMINATOR_UNIT[loss_agg] == "tokens" else torch.tensor(float(mask.shape[0]), device=mask.device)
    return accelerator.reduce(local.float(), reduction="sum").clamp(min=1)


def _add(sums: dict[str, list[float]], values: dict[str, float | None]) -> None:
    for k, v in values.items():
        if v is not None:
            sums.setdefault(k, []).append(v)
