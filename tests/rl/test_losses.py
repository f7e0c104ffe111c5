"""PPO's clipped policy and value losses, by hand."""

import math

import pytest
import torch

from rlhfctl.rl.losses import clipped_policy_loss, clipped_value_loss

EPS = 0.2
# (ratio, advantage, expected loss -min(ρA, clip(ρ)A), clip active?)
POLICY_CASES = [
    (1.1, 1.0, -1.1, 0),  # inside the trust region
    (0.9, -2.0, 1.8, 0),  # inside, negative advantage
    (1.5, 1.0, -1.2, 1),  # above 1+ε with A > 0: clipped to (1+ε)A
    (0.5, 1.0, -0.5, 0),  # below 1-ε with A > 0: the unclipped term is smaller, kept (pessimistic bound)
    (1.5, -1.0, 1.5, 0),  # above 1+ε with A < 0: unclipped kept
    (0.5, -1.0, 0.8, 1),  # below 1-ε with A < 0: clipped to (1-ε)A
    (3.0, 0.5, -0.6, 1),
    (1.7, 0.0, 0.0, 0),  # no advantage, no loss, nothing clipped
]


def _policy_tensors(cases):
    ratio = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    adv = torch.tensor([c[1] for c in cases], dtype=torch.float64)
    old = torch.linspace(-3.0, -0.1, len(cases), dtype=torch.float64)
    return (old + ratio.log()).view(2, -1), old.view(2, -1), adv.view(2, -1)


def test_clipped_policy_loss_by_hand():
    logp, old, adv = _policy_tensors(POLICY_CASES)
    loss, clipped = clipped_policy_loss(logp, old, adv, EPS)
    assert loss.shape == clipped.shape == (2, 4)
    for k, (ratio, a, want, flag) in enumerate(POLICY_CASES):
        i, j = divmod(k, 4)
        assert float(loss[i, j]) == pytest.approx(want, abs=1e-12), (ratio, a)
        assert float(clipped[i, j]) == flag, (ratio, a)


def test_clipped_tokens_carry_no_gradient():
    """d loss / d logp = -ρA inside the region (or where the unclipped term is the min), 0 where clipped."""
    logp, old, adv = _policy_tensors(POLICY_CASES)
    logp.requires_grad_(True)
    loss, clipped = clipped_policy_loss(logp, old, adv, EPS)
    loss.sum().backward()
    for k, (ratio, a, _, flag) in enumerate(POLICY_CASES):
        i, j = divmod(k, 4)
        want = 0.0 if flag else -ratio * a
        assert float(logp.grad[i, j]) == pytest.approx(want, abs=1e-12), (ratio, a)


def test_clip_eps_changes_the_bound():
    logp, old, adv = _policy_tensors([(1.5, 1.0, None, None), (0.5, -1.0, None, None)])
    loss, clipped = clipped_policy_loss(logp, old, adv, 0.1)
    assert loss.view(-1).tolist() == pytest.approx([-1.1, 0.9])
    assert clipped.view(-1).tolist() == [1.0, 1.0]
    loss, clipped = clipped_policy_loss(logp, old, adv, 0.6)  # both inside [0.4, 1.6]
    assert loss.view(-1).tolist() == pytest.approx([-1.5, 0.5])
    assert clipped.view(-1).tolist() == [0.0, 0.0]


# (V, V_old, R, expected with clip 0.2)
VALUE_CASES = [
    (1.0, 0.5, 0.0, 0.5 * max(1.0 ** 2, (0.7 - 0.0) ** 2)),  # = 0.5: plain term is larger
    (1.0, 0.5, 2.0, 0.5 * max(1.0 ** 2, (0.7 - 2.0) ** 2)),  # = 0.845: clipped term is larger
    (0.55, 0.5, 1.0, 0.5 * 0.45 ** 2),  # inside the clip range: both equal
    (0.0, 1.0, 0.5, 0.5 * max(0.25, (0.8 - 0.5) ** 2)),  # = 0.125
    (0.0, 1.0, -1.0, 0.5 * max(1.0, (0.8 + 1.0) ** 2)),  # = 1.62
]


def test_clipped_value_loss_by_hand():
    v, old, ret = (torch.tensor([c[i] for c in VALUE_CASES], dtype=torch.float64) for i in range(3))
    got = clipped_value_loss(v, old, ret, 0.2)
    assert got.tolist() == pytest.approx([c[3] for c in VALUE_CASES], abs=1e-12)
    assert [c[3] for c in VALUE_CASES] == pytest.approx([0.5, 0.845, 0.10125, 0.125, 1.62])


@pytest.mark.parametrize("clip", [None, 0.0])
def test_value_loss_without_clip(clip):
    v, old, ret = (torch.tensor([c[i] for c in VALUE_CASES], dtype=torch.float64) for i in range(3))
    got = clipped_value_loss(v, old, ret, clip)
    assert got.tolist() == pytest.approx([0.5 * (c[0] - c[2]) ** 2 for c in VALUE_CASES], abs=1e-12)


def test_value_loss_is_elementwise_on_2d():
    g = torch.Generator().manual_seed(0)
    v, old, ret = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    got = clipped_value_loss(v, old, ret, 0.3)
    for i in range(3):
        for j in range(5):
            a, b, r = float(v[i, j]), float(old[i, j]), float(ret[i, j])
            clipped_v = b + min(max(a - b, -0.3), 0.3)
            assert float(got[i, j]) == pytest.approx(0.5 * max((a - r) ** 2, (clipped_v - r) ** 2), abs=1e-12)
    assert math.isfinite(float(got.sum()))
