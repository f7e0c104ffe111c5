"""Our GRPO loss against TRL's `GRPOTrainer._compute_loss` on identical tensors.

TRL's method is called unbound on a stub ``self`` that holds just the
attributes it reads; the model forward (`_get_per_token_logps_and_entropies`)
is replaced by our log-prob tensor, so both sides differentiate the same leaf.
Ours: `clipped_policy_loss` + β·k3, aggregated with `LOSS_AGGREGATIONS`.

TRL's loss types map onto our aggregations as
``bnpo`` ≙ token-mean, ``grpo`` ≙ seq-mean-token-mean, ``dr_grpo`` ≙
seq-mean-token-sum-norm (with max_completion_length = T, the padded width).
TRL 1.x has no PPO trainer any more, so PPO (critic, GAE, value loss) has no
TRL counterpart to compare against; its pieces are checked by hand in
test_losses.py and test_advantages.py.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlhfctl.rl.aggregation import LOSS_AGGREGATIONS
from rlhfctl.rl.kl import k3
from rlhfctl.rl.losses import clipped_policy_loss

grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")

TRL_LOSS_TYPE = {"token-mean": "bnpo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}
B, P, T = 6, 3, 7


class _Accelerator:  # one process: reductions are the identity
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    logp = old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)  # ratios on both sides of [0.8, 1.2]
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, old, ref, adv, mask


def _trl_loss(logp_leaf, old, ref, adv, mask, loss_type, beta, eps):
    stub = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type=loss_type, epsilon_low=eps, epsilon_high=eps, use_vllm=False, vllm_importance_sampling_correction=False,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False), model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        max_completion_length=T, accelerator=_Accelerator(), _metrics=defaultdict(lambda: defaultdict(list)),
    )
    stub._get_per_token_logps_and_entropies = lambda *a, **k: (logp_leaf, torch.zeros_like(logp_leaf), None)
    inputs = {
        "prompt_ids": torch.zeros(B, P, dtype=torch.long), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
    }
    loss = grpo_trainer.GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, stub._metrics["train"]


def _our_loss(logp_leaf, old, ref, adv, mask, agg, beta, eps):
    fmask = mask.to(logp_leaf.dtype)
    token_loss, clipped = clipped_policy_loss(logp_leaf, old, adv[:, None] * fmask, eps)
    kl = k3(logp_leaf, ref)
    loss = LOSS_AGGREGATIONS[agg](token_loss + beta * kl, fmask)
    count = fmask.sum()
    return loss, float((clipped * fmask).sum() / count), float((kl.detach() * fmask).sum() / count)


@pytest.mark.parametrize("agg", sorted(TRL_LOSS_TYPE))
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_loss_and_gradient_as_trl(agg, beta, seed):
    logp, old, ref, adv, mask = _batch(seed)
    theirs_leaf = logp.clone().requires_grad_(True)
    ours_leaf = logp.clone().requires_grad_(True)
    theirs, metrics = _trl_loss(theirs_leaf, old, ref, adv, mask, TRL_LOSS_TYPE[agg], beta, 0.2)
    ours, clip_fraction, kl_mean = _our_loss(ours_leaf, old, ref, adv, mask, agg, beta, 0.2)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-10, abs=1e-12)
    theirs.backward()
    ours.backward()
    assert torch.allclose(ours_leaf.grad, theirs_leaf.grad, rtol=1e-10, atol=1e-12)
    assert (ours_leaf.grad[mask == 0] == 0).all()
    # the clipped flag agrees with TRL's "region" clip ratio, and k3 with its KL metric
    assert 0 < clip_fraction < 1
    assert clip_fraction == pytest.approx(metrics["clip_ratio/region_mean"][-1], abs=1e-6)  # TRL logs in float32
    if beta:
        assert kl_mean == pytest.approx(metrics["kl"][-1], rel=1e-6)


def test_the_aggregations_really_differ_here():
    """Guard against a vacuous comparison: the three TRL loss types give three numbers on this batch."""
    logp, old, ref, adv, mask = _batch(0)
    values = {agg: float(_our_loss(logp, old, ref, adv, mask, agg, 0.04, 0.2)[0]) for agg in TRL_LOSS_TYPE}
    assert len({round(v, 9) for v in values.values()}) == 3
