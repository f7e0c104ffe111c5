"""pass@k and maj@k from n graded samples per prompt.

Both are estimated from n >= k samples rather than by drawing exactly k, which
would waste samples and be far noisier: each is the expectation, over a
uniformly random k-subset of the n samples, of the per-subset metric.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence


def _check_k(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..n, got k={k} with n={n} samples")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that a random k-subset of n samples, c of them correct, holds a correct one.

    Unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
    Trained on Code", eq. 1): 1 - C(n-c, k) / C(n, k), evaluated as
    1 - prod_{i=n-c+1}^{n} (1 - k/i) so that no huge binomials are formed.
    """
    _check_k(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"c must be in 0..n, got c={c} with n={n} samples")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _vote_credit(subset: Sequence[int], sample_key: Sequence[int], key_correct: Sequence[bool],
                 weights: Sequence[float] | None) -> float:
    """Credit of one vote over the samples in `subset` (key id -1 = no answer).

    The winner is the answer with the most votes (or the largest total weight);
    a tie between several answers gets the fraction of them that are correct
    (the expected score of breaking the tie uniformly at random). A subset with
    no answers at all scores 0.
    """
    tally: dict[int, float] = {}
    for i in subset:
        key = sample_key[i]
        if key >= 0:
            tally[key] = tally.get(key, 0.0) + (1.0 if weights is None else weights[i])
    if not tally:
        return 0.0
    top = max(tally.values())
    winners = [key for key, total in tally.items() if total == top]
    return sum(key_correct[key] for key in winners) / len(winners)


def maj_at_k(
    keys: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    *,
    max_subsets: int = 2000,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> float:
    """Expected accuracy of majority voting over a uniformly random k-subset of the samples.

    With `weights`, each sample votes with its weight (reward-weighted voting,
    e.g. σ(reward) per sample) instead of 1.

    `keys[i]` is sample i's vote key (None: no answer) and `correct[i]` its
    grade. Samples sharing a key are assumed to share correctness; the first
    sample with a key decides it. Exact over all C(n, k) subsets when there are
    at most `max_subsets` of them, otherwise the mean over `max_subsets`
    subsets drawn with random.Random(seed), so results are reproducible.
    """
    n = len(keys)
    if len(correct) != n:
        raise ValueError(f"{n} keys but {len(correct)} correctness flags")
    _check_k(n, k)
    ids: dict[str, int] = {}
    key_correct: list[bool] = []
    sample_ids: list[int] = []
    for key, ok in zip(keys, correct):
        if key is None:
            sample_ids.append(-1)
            continue
        if key not in ids:
            ids[key] = len(key_correct)
            key_correct.append(bool(ok))
        sample_ids.append(ids[key])

    if math.comb(n, k) <= max_subsets:
        subsets = itertools.combinations(range(n), k)
        return math.fsum(_vote_credit(s, sample_ids, key_correct, weights) for s in subsets) / math.comb(n, k)
    rng = random.Random(seed)
    total = math.fsum(_vote_credit(rng.sample(range(n), k), sample_ids, key_correct, weights) for _ in range(max_subsets))
    return total / max_subsets


def ks_up_to(n: int) -> list[int]:
    """Powers of two 1, 2, 4, ... not above n: the k values reported for n samples."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    return [1 << i for i in range(n.bit_length())]


def summarize(
    groups: Sequence[tuple[Sequence[str | None], Sequence[bool]]],
    *,
    max_subsets: int = 2000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean pass@k and maj@k over prompts, for k in ks_up_to(n).

    `groups` holds one (keys, correct) pair per prompt, all with the same n.
    maj@1 is left out: with one sample the vote is that sample, so it equals
    pass@1 (when unanswered samples are graded incorrect).
    """
    if not groups:
        raise ValueError("no prompts to summarize")
    sizes = {len(correct) for _, correct in groups}
    if len(sizes) != 1:
        raise ValueError(f"all prompts need the same number of samples, got sizes {sorted(sizes)}")
    n = sizes.pop()
    summary: dict[str, float | int] = {"n": n, "num_prompts": len(groups)}
    for k in ks_up_to(n):
        passes = [pass_at_k(n, sum(bool(ok) for ok in correct), k) for _, correct in groups]
        summary[f"pass@{k}"] = math.fsum(passes) / len(groups)
        if k > 1:
            votes = [maj_at_k(keys, correct, k, max_subsets=max_subsets, seed=seed) for keys, correct in groups]
            summary[f"maj@{k}"] = math.fsum(votes) / len(groups)
    return summary
