"""KL estimators k1, k2, k3 (Schulman 2020) against hand-computed values and a Monte Carlo check."""

import math

import numpy as np
import pytest
import torch

from rlhfctl.rl.kl import KL_ESTIMATORS, k1, k2, k3


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_by_hand():
    # π(a) = 0.5, π_ref(a) = 0.25: d = log π - log π_ref = log 2
    logp, ref = _t(math.log(0.5)), _t(math.log(0.25))
    assert float(k1(logp, ref)) == pytest.approx(math.log(2))
    assert float(k2(logp, ref)) == pytest.approx(0.5 * math.log(2) ** 2)
    # k3 = r - 1 - log r with r = π_ref / π = 0.5
    assert float(k3(logp, ref)) == pytest.approx(0.5 - 1 - math.log(0.5))
    # the other way round: π = 0.2, π_ref = 0.6, r = 3
    logp, ref = _t(math.log(0.2)), _t(math.log(0.6))
    assert float(k1(logp, ref)) == pytest.approx(math.log(0.2 / 0.6))
    assert float(k2(logp, ref)) == pytest.approx(0.5 * math.log(3) ** 2)
    assert float(k3(logp, ref)) == pytest.approx(3 - 1 - math.log(3))


def test_elementwise_on_tensors():
    logp = _t(-1.0, -2.0, -0.5, -3.0).view(2, 2)
    ref = _t(-1.5, -1.0, -0.5, -0.1).view(2, 2)
    for name, want in {
        "k1": lambda a, b: a - b,
        "k2": lambda a, b: 0.5 * (a - b) ** 2,
        "k3": lambda a, b: math.exp(b - a) - 1 - (b - a),
    }.items():
        got = KL_ESTIMATORS[name](logp, ref)
        assert got.shape == (2, 2)
        for i in range(2):
            for j in range(2):
                assert float(got[i, j]) == pytest.approx(want(float(logp[i, j]), float(ref[i, j])), rel=1e-12), (name, i, j)


def test_zero_when_equal_and_k2_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 16, generator=g, dtype=torch.float64) * 3
    ref = torch.randn(64, 16, generator=g, dtype=torch.float64) * 3
    assert (k3(logp, ref) >= 0).all() and (k2(logp, ref) >= 0).all()
    assert (k1(logp, ref) < 0).any()  # k1 can be negative
    for est in (k1, k2, k3):
        assert torch.equal(est(logp, logp), torch.zeros_like(logp))


def _categoricals(kind):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6))
    if kind == "far":
        return p, rng.dirichlet(np.ones(6))
    p = rng.dirichlet(10 * np.ones(6))  # a nearby reference: the regime of policy training
    q = p * np.exp(0.3 * rng.standard_normal(6))
    return p, q / q.sum()


def _sampled(p, q, count=200_000):
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(torch.tensor(p), count, replacement=True, generator=g)
    return torch.tensor(np.log(p))[draws], torch.tensor(np.log(q))[draws]


@pytest.mark.parametrize("kind", ["far", "near"])
def test_k1_and_k3_are_unbiased_on_a_sampled_categorical(kind):
    """E_{a~π}[k3] = KL(π || π_ref): the Monte Carlo mean against the exact sum."""
    p, q = _categoricals(kind)
    exact = float(np.sum(p * (np.log(p) - np.log(q))))
    logp, ref = _sampled(p, q)
    est3 = k3(logp, ref)
    assert float(est3.min()) >= 0
    assert float(est3.mean()) == pytest.approx(exact, rel=0.05, abs=2e-3)
    assert float(k1(logp, ref).mean()) == pytest.approx(exact, rel=0.05, abs=2e-3)
    assert float(k2(logp, ref).mean()) > 0


def test_k3_has_lower_variance_than_k1_near_the_reference():
    p, q = _categoricals("near")
    logp, ref = _sampled(p, q)
    assert float(k3(logp, ref).var()) < float(k1(logp, ref).var())
