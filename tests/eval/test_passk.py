import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfctl.eval.passk import ks_up_to, maj_at_k, pass_at_k, summarize


def brute_pass_at_k(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


def brute_maj_at_k(keys, correct, k):
    """Independent reference: majority vote per subset, exact rationals."""
    verdict = {}
    for key, ok in zip(keys, correct):
        verdict.setdefault(key, ok)
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(keys)), k))
    for subset in subsets:
        votes = Counter(keys[i] for i in subset if keys[i] is not None)
        if not votes:
            continue
        best = max(votes.values())
        tied = sorted(key for key, count in votes.items() if count == best)
        total += Fraction(sum(verdict[key] for key in tied), len(tied))
    return total / len(subsets)


@pytest.mark.parametrize(
    "n,c,k",
    [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 2), (5, 2, 4), (6, 3, 4), (8, 1, 3), (10, 0, 5), (10, 10, 3), (9, 4, 6)],
)
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_known_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)


@pytest.mark.parametrize("n,c,k", [(3, 1, 4), (3, 1, 0), (3, 4, 1), (3, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_maj_at_k_hand_computed():
    # Two answers tie in every 2-subset {a, b}: half credit.
    assert maj_at_k(["a", "b"], [True, False], 2) == pytest.approx(0.5)
    # Subsets {None, None}: 0; {None, a} twice: 1.
    assert maj_at_k([None, None, "a"], [False, False, True], 2) == pytest.approx(2 / 3)
    # Wrong "w" x2 beats right "r" x1 in the full vote.
    assert maj_at_k(["w", "w", "r"], [False, False, True], 3) == 0.0
    assert maj_at_k(["r", "r", "w"], [True, True, False], 3) == 1.0
    # Three-way tie, one right: a third.
    assert maj_at_k(["a", "b", "c"], [False, True, False], 3) == pytest.approx(1 / 3)


CASES = [
    (["a", "b", "a", "c", None, "b"], [True, False, True, False, False, False]),
    (["x", "y", "z", "x", "y", "z", None], [False, True, False, False, True, False, False]),
    ([None, None, "q", "q", "r"], [False, False, False, False, True]),
    (["1/2", "1/2", "1/2", "3", "3", "4", "4", "4"], [True, True, True, False, False, False, False, False]),
]


@pytest.mark.parametrize("keys,correct", CASES)
def test_maj_at_k_exact_matches_brute_force(keys, correct):
    for k in range(1, len(keys) + 1):
        expected = float(brute_maj_at_k(keys, correct, k))
        assert maj_at_k(keys, correct, k) == pytest.approx(expected, abs=1e-12), k


def _random_votes(rng, n):
    """n samples split into a random number of answers, some correct (or none), some unanswered."""
    answers = [str(a) for a in range(rng.randint(1, n))]
    right = set(rng.sample(answers, rng.randint(0, min(2, len(answers)))))
    keys = [rng.choice(answers + [None] * rng.randint(0, 1)) for _ in range(n)]
    return keys, [key in right for key in keys]


@pytest.mark.parametrize("seed", range(40))
def test_maj_at_k_matches_enumeration_on_random_votes(seed):
    rng = random.Random(seed)
    keys, correct = _random_votes(rng, rng.randint(1, 12))
    for k in range(1, len(keys) + 1):
        assert maj_at_k(keys, correct, k) == pytest.approx(float(brute_maj_at_k(keys, correct, k)), abs=1e-12), (keys, correct, k)


def test_maj_at_k_is_exact_past_the_old_sampling_limit():
    keys = ["a"] * 5 + ["b"] * 5 + ["c"] * 4 + [None] * 2
    correct = [True] * 5 + [False] * 11
    assert maj_at_k(keys, correct, 8) == float(brute_maj_at_k(keys, correct, 8))  # C(16, 8) = 12870 subsets


def test_maj_at_k_closed_forms_at_large_n():
    # one answer and unanswered samples: right unless the subset holds no answer at all
    assert maj_at_k(["a"] * 40 + [None] * 24, [True] * 40 + [False] * 24, 8) == pytest.approx(1 - math.comb(24, 8) / math.comb(64, 8))
    # 128 distinct answers, 1 right: k votes of 1 tie, the right one is in the subset with prob. k/n and wins 1/k of it
    assert maj_at_k([str(i) for i in range(128)], [True] + [False] * 127, 64) == pytest.approx(1 / 128)
    # two answers of 64: by symmetry a half at every k
    for k in (1, 2, 63, 64, 127, 128):
        assert maj_at_k(["r"] * 64 + ["w"] * 64, [True] * 64 + [False] * 64, k) == pytest.approx(0.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=7), st.data())
def test_maj_at_1_is_accuracy_and_matches_brute_force(keys, data):
    verdict = {key: data.draw(st.booleans()) for key in set(keys) - {None}}
    correct = [key is not None and verdict[key] for key in keys]
    assert maj_at_k(keys, correct, 1) == pytest.approx(sum(correct) / len(keys))
    k = data.draw(st.integers(1, len(keys)))
    assert maj_at_k(keys, correct, k) == pytest.approx(float(brute_maj_at_k(keys, correct, k)))


def test_maj_at_k_rejects_mismatched_lengths_and_bad_k():
    with pytest.raises(ValueError):
        maj_at_k(["a", "b"], [True], 1)
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True], 2)


def test_ks_up_to():
    assert ks_up_to(1) == [1]
    assert ks_up_to(2) == [1, 2]
    assert ks_up_to(7) == [1, 2, 4]
    assert ks_up_to(8) == [1, 2, 4, 8]
    assert ks_up_to(100) == [1, 2, 4, 8, 16, 32, 64]
    with pytest.raises(ValueError):
        ks_up_to(0)


def test_summarize():
    groups = [
        (["a", "a", "b", None], [True, True, False, False]),
        (["x", "y", "y", "y"], [True, False, False, False]),
    ]
    summary = summarize(groups)
    assert set(summary) == {"n", "num_prompts", "pass@1", "pass@2", "pass@4", "maj@2", "maj@4"}
    assert summary["n"] == 4 and summary["num_prompts"] == 2
    assert summary["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert summary["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2)
    assert summary["pass@4"] == 1.0
    assert summary["maj@4"] == 0.5  # "a" wins prompt 1, "y" wins prompt 2
    expected_maj2 = (brute_maj_at_k(*groups[0], 2) + brute_maj_at_k(*groups[1], 2)) / 2
    assert summary["maj@2"] == pytest.approx(float(expected_maj2))


def test_summarize_rejects_ragged_or_empty_groups():
    with pytest.raises(ValueError):
        summarize([(["a"], [True]), (["a", "b"], [True, False])])
    with pytest.raises(ValueError):
        summarize([])
