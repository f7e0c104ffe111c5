"""How good a reward model is: pair accuracy, binary accuracy, AUC."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float | None:
    """Fraction of pairs with r(chosen) > r(rejected); a tie counts half. None without pairs."""
    if not chosen:
        return None
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    return wins / len(chosen)


def binary_accuracy(scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.0) -> float | None:
    """Fraction of items with (score > threshold) == label (σ(score) > ½ at the default). None without items."""
    if not scores:
        return None
    return sum((s > threshold) == bool(y) for s, y in zip(scores, labels)) / len(scores)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half.

    None when only one class is present (the AUC is undefined).

    The Mann-Whitney U statistic over all positive/negative pairs, computed
    from ranks in O(n log n).
    """
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1  # average rank of a tie block
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and unbiased standard deviation (the μ/σ consumers standardise with).

    σ² = Σ (v - μ)² / (n - 1), Bessel's correction, like ``statistics.stdev``
    and ``torch.std``'s default: the held-out scores are a sample of the RM's
    score distribution. Fewer than two values give no spread: (0, 1), which
    leaves scores as they are.
    """
    if len(values) < 2:
        return 0.0, 1.0
    mu = math.fsum(values) / len(values)
    var = math.fsum((v - mu) ** 2 for v in values) / (len(values) - 1)
    return mu, math.sqrt(var)


def first_error_accuracy(step_scores: Sequence[Sequence[float]], step_labels: Sequence[Sequence[float]]) -> float | None:
    """Share of solutions whose first step scored wrong (score ≤ 0) is the first
    step labelled wrong (label < ½); "no wrong step" must match too."""
    if not step_scores:
        return None
    hits = 0
    for scores, labels in zip(step_scores, step_labels):
        predicted = next((i for i, s in enumerate(scores) if s <= 0), None)
        actual = next((i for i, y in enumerate(labels) if y < 0.5), None)
        hits += predicted == actual
    return hits / len(step_scores)


AGGREGATIONS = {
    "min": lambda probs: min(probs),
    "last": lambda probs: probs[-1],
    "prod": lambda probs: math.prod(probs),
    "mean": lambda probs: math.fsum(probs) / len(probs),
}


def aggregate_steps(step_scores: Sequence[float], agg: str) -> float:
    """One solution score from its step scores (logits): min, last, prod or mean
    of the step probabilities σ(s) (Lightman et al. 2023 use prod and min)."""
    probs = [sigmoid(s) for s in step_scores]
    return AGGREGATIONS[agg](probs) if probs else 0.0


def sigmoid(x: float) -> float:
    """σ(x) without overflow: ``exp`` is only taken of a non-positive number."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
