"""Best-of-N accuracy for every N from one set of N_max samples.

Drawing fresh N-subsets would waste samples and add noise; instead each
estimate is the exact expectation over a uniformly random N-subset of the n
samples a prompt has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def best_of_n_accuracy(scores: Sequence[float], correct: Sequence[bool], k: int) -> float:
    """Expected correctness of the top-scored sample of a random k-subset.

    Without ties, the sample ranked i-th lowest is the maximum of a random
    k-subset with probability C(i-1, k-1) / C(n, k). With ties, the pick is
    uniform among the tied top samples ("ties shared fairly"): the maximum
    score is v with probability [C(L_v + g_v, k) - C(L_v, k)] / C(n, k), where
    L_v samples score below v and g_v score exactly v, and then the expected
    correctness is the mean correctness of the g_v tied samples.
    """
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..n, got k={k} with n={n} samples")
    if any(math.isnan(s) for s in scores):
        raise ValueError("a NaN score has no rank")
    groups: dict[float, list[bool]] = {}
    for s, c in zip(scores, correct):
        groups.setdefault(float(s), []).append(bool(c))
    total = math.comb(n, k)
    below, acc = 0, 0.0
    for value in sorted(groups):
        members = groups[value]
        p_max = (math.comb(below + len(members), k) - math.comb(below, k)) / total
        acc += p_max * sum(members) / len(members)
        below += len(members)
    return acc


def oracle_accuracy(correct: Sequence[bool], k: int) -> float:
    """pass@k: the best any selector can do with k samples."""
    return best_of_n_accuracy([float(c) for c in correct], correct, k)
