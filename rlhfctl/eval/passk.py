"""pass@k and maj@k from n graded samples per prompt.

Both are estimated from n >= k samples rather than by drawing exactly k, which
would waste samples and be far noisier: each is the expectation, over a
uniformly random k-subset of the n samples, of the per-subset metric, and
both are exact (reward-weighted voting is exact for small n only; see
`weighted_maj_at_k`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction


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
                 weights: Sequence[float]) -> float:
    """Credit of one weighted vote over the samples in `subset` (key id -1 = no answer).

    The winner is the answer with the largest total weight; a tie between
    several answers gets the fraction of them that are correct (the expected
    score of breaking the tie uniformly at random). A subset with no answers
    at all scores 0.
    """
    tally: dict[int, float] = {}
    for i in subset:
        key = sample_key[i]
        if key >= 0:
            tally[key] = tally.get(key, 0.0) + weights[i]
    if not tally:
        return 0.0
    top = max(tally.values())
    winners = [key for key, total in tally.items() if total == top]
    return sum(key_correct[key] for key in winners) / len(winners)


def _classes(keys: Sequence[str | None], correct: Sequence[bool], k: int) -> tuple[list[int], list[int], list[bool]]:
    """Sample i's class id (-1: no answer), and each class's size and correctness.

    Samples sharing a key are assumed to share correctness; the first sample
    with a key decides it.
    """
    n = len(keys)
    if len(correct) != n:
        raise ValueError(f"{n} keys but {len(correct)} correctness flags")
    _check_k(n, k)
    ids: dict[str, int] = {}
    sizes: list[int] = []
    key_correct: list[bool] = []
    sample_ids: list[int] = []
    for key, ok in zip(keys, correct):
        if key is None:
            sample_ids.append(-1)
            continue
        if key not in ids:
            ids[key] = len(sizes)
            sizes.append(0)
            key_correct.append(bool(ok))
        sizes[ids[key]] += 1
        sample_ids.append(ids[key])
    return sample_ids, sizes, key_correct


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """Expected accuracy of majority voting over a uniformly random k-subset of the samples, exactly.

    `keys[i]` is sample i's vote key (None: no answer) and `correct[i]` its
    grade. The answer with the most votes wins; a tie between several answers
    gets the fraction of them that are correct (the expected score of breaking
    the tie uniformly at random); a subset with no answers scores 0.

    By linearity, the expectation is the sum over correct answers a of
    E[1{a is among the top} / #top] over the C(n, k) subsets, and that only
    depends on the answer counts c_1..c_m, so it is computed from them
    (`_top_share`) with integer counts, in time polynomial in n and k, and
    divided once at the end.
    """
    sample_ids, sizes, key_correct = _classes(keys, correct, k)
    unanswered = sample_ids.count(-1)
    total = Fraction(0)
    for size, count in Counter(c for c, ok in zip(sizes, key_correct) if ok).items():
        others = list(sizes)
        others.remove(size)  # correct answers of the same size have the same share
        total += count * _top_share(size, others, unanswered, k)
    return float(total / math.comb(len(keys), k))


def _top_share(size: int, others: Sequence[int], free: int, k: int) -> Fraction:
    """Sum over k-subsets of 1{answer a is among the top} / #top, for an answer a of `size` samples.

    `others` are the other answers' sizes and `free` the samples that vote for
    nothing. When a gets j votes, a subset counts if every other answer gets
    fewer than j or exactly j, and the t answers tied at j share the win, so it
    is worth 1 / (t + 1). For each j a dynamic program over the answers with
    at least j samples counts the ways, W[t][d], to give them d of the other
    k - j votes with t of them tied at j (answers smaller than j, and the
    unanswered samples, can take any share, C(rest, k - j - d) ways):

        share = sum_j C(size, j) sum_t sum_d W[t][d] C(rest, k - j - d) / (t + 1)
    """
    share = Fraction(0)
    for j in range(1, min(size, k) + 1):
        room = k - j
        rest = free + sum(c for c in others if c < j)
        most_tied = room // j
        ways = [[1] + [0] * room] + [[0] * (room + 1) for _ in range(most_tied)]  # W[t][d]
        for c in others:
            if c >= j:
                ways = _add_answer(ways, c, j)
        fill = [math.comb(rest, room - d) for d in range(room + 1)]
        for t, row in enumerate(ways):
            count = sum(w * f for w, f in zip(row, fill))
            if count:
                share += Fraction(math.comb(size, j) * count, t + 1)
    return share


def _add_answer(ways: list[list[int]], size: int, j: int) -> list[list[int]]:
    """W[t][d] after one more answer of `size` samples takes i < j votes, or j and ties."""
    room = len(ways[0]) - 1
    below = [math.comb(size, i) for i in range(min(j, room + 1))]
    at = math.comb(size, j)
    new = [[0] * (room + 1) for _ in ways]
    for t, row in enumerate(ways):
        out = new[t]
        for d, w in enumerate(row):
            if not w:
                continue
            for i in range(min(len(below), room + 1 - d)):
                out[d + i] += w * below[i]
            if t + 1 < len(ways) and d + j <= room:
                new[t + 1][d + j] += w * at
    return new


def weighted_maj_at_k(
    keys: Sequence[str | None],
    correct: Sequence[bool],
    weights: Sequence[float],
    k: int,
    *,
    exact_up_to: int = 20_000,
    samples: int = 2000,
    seed: int = 0,
) -> float:
    """Expected accuracy of weighted voting over a random k-subset: each sample votes with its weight.

    Reward-weighted voting (e.g. σ(reward) per sample); ties and unanswered
    samples as in `maj_at_k`. Unlike vote counts, which answer wins depends on
    sums of real weights, and counting the subsets each answer wins is a
    subset-sum count with no known polynomial algorithm. So the expectation is
    exact over all C(n, k) subsets when there are at most `exact_up_to` of
    them (every k for n <= 16), and otherwise an estimate: the mean over
    `samples` subsets drawn with random.Random(seed), reproducible.
    """
    sample_ids, _, key_correct = _classes(keys, correct, k)
    if len(weights) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(weights)} weights")
    n = len(keys)
    if math.comb(n, k) <= exact_up_to:
        subsets = itertools.combinations(range(n), k)
        return math.fsum(_vote_credit(s, sample_ids, key_correct, weights) for s in subsets) / math.comb(n, k)
    rng = random.Random(seed)
    total = math.fsum(_vote_credit(rng.sample(range(n), k), sample_ids, key_correct, weights) for _ in range(samples))
    return total / samples


def ks_up_to(n: int) -> list[int]:
    """Powers of two 1, 2, 4, ... not above n: the k values reported for n samples."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    return [1 << i for i in range(n.bit_length())]


def summarize(
    groups: Sequence[tuple[Sequence[str | None], Sequence[bool]]],
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
            votes = [maj_at_k(keys, correct, k) for keys, correct in groups]
            summary[f"maj@{k}"] = math.fsum(votes) / len(groups)
    return summary
