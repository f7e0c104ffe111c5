import itertools
import random
from fractions import Fraction

import pytest

from rlhfctl.eval.selection import best_of_n_accuracy, oracle_accuracy


def brute_force(scores, correct, k):
    """Average over all k-subsets; ties at the top split the credit evenly."""
    total, count = Fraction(0), 0
    for subset in itertools.combinations(range(len(scores)), k):
        top = max(scores[i] for i in subset)
        tied = [i for i in subset if scores[i] == top]
        total += Fraction(sum(correct[i] for i in tied), len(tied))
        count += 1
    return float(total / count)


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_with_ties(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    scores = [rng.choice([0.0, 0.5, 1.0, 2.0, rng.random()]) for _ in range(n)]
    correct = [rng.random() < 0.5 for _ in range(n)]
    for k in range(1, n + 1):
        assert best_of_n_accuracy(scores, correct, k) == pytest.approx(brute_force(scores, correct, k), abs=1e-12)


def test_hand_computed():
    # scores ranked 1 < 2 < 3, only the middle one correct; k=2: subsets {1,2} -> 2 ok, {1,3} -> 3 no, {2,3} -> 3 no.
    assert best_of_n_accuracy([1.0, 2.0, 3.0], [False, True, False], 2) == pytest.approx(1 / 3)
    # k=1 is the mean correctness, k=n picks the top sample.
    assert best_of_n_accuracy([1.0, 2.0, 3.0], [False, True, False], 1) == pytest.approx(1 / 3)
    assert best_of_n_accuracy([1.0, 2.0, 3.0], [False, True, False], 3) == 0.0
    # all tied: any k gives the mean correctness
    assert best_of_n_accuracy([0.0] * 4, [True, False, False, False], 3) == pytest.approx(0.25)


def test_oracle_is_pass_at_k_and_bounds_any_scorer():
    correct = [False, True, False, False, True]
    rng = random.Random(0)
    for k in range(1, 6):
        oracle = oracle_accuracy(correct, k)
        assert oracle == pytest.approx(brute_force([float(c) for c in correct], correct, k))
        for _ in range(20):
            scores = [rng.random() for _ in correct]
            assert best_of_n_accuracy(scores, correct, k) <= oracle + 1e-12
    assert oracle_accuracy(correct, 4) == 1.0  # only 3 wrong samples: any 4 hold a right one


def test_rejects_bad_k():
    with pytest.raises(ValueError):
        best_of_n_accuracy([1.0], [True], 2)
