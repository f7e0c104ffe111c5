"""Per-token estimators of KL(π || π_ref) from samples of π.

With log-ratio ``d = log π(a|s) - log π_ref(a|s)`` of a sampled token
(Schulman, "Approximating KL Divergence", 2020):

- k1 = d                            unbiased, high variance, can be negative
- k2 = d² / 2                       biased, low variance, >= 0
- k3 = exp(-d) - 1 + d              unbiased, low variance, >= 0
  (= r - 1 - log r with r = π_ref/π; the estimator GRPO puts in its loss)
"""

from __future__ import annotations


def k1(logp, ref_logp):
    return logp - ref_logp


def k2(logp, ref_logp):
    return 0.5 * (logp - ref_logp) ** 2


def k3(logp, ref_logp):
    d = ref_logp - logp
    return d.exp() - 1.0 - d


KL_ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}
