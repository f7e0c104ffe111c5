"""Reward-model metrics and PRM step aggregation, against hand computation and brute force."""

import itertools
import math
import random
import statistics

import pytest

from rlhfctl.rm.metrics import (
    AGGREGATIONS, aggregate_steps, auc, binary_accuracy, first_error_accuracy, mean_std, pair_accuracy, sigmoid as stable_sigmoid,
)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("x", [-30.0, -2.0, 0.0, 0.5, 3.0, 30.0])
def test_sigmoid_by_hand(x):
    assert stable_sigmoid(x) == pytest.approx(sigmoid(x), rel=1e-12)


def test_sigmoid_of_large_magnitudes_does_not_overflow():
    assert stable_sigmoid(1000.0) == 1.0
    assert stable_sigmoid(-1000.0) == 0.0  # exp(1000) would overflow
    assert stable_sigmoid(-745.0) > 0.0


STEPS = [1.0, -2.0, 0.5, 3.0]
PROBS = [sigmoid(s) for s in STEPS]  # 0.7311, 0.1192, 0.6225, 0.9526


@pytest.mark.parametrize("agg,expected", [
    ("min", sigmoid(-2.0)),
    ("last", sigmoid(3.0)),
    ("prod", sigmoid(1.0) * sigmoid(-2.0) * sigmoid(0.5) * sigmoid(3.0)),
    ("mean", (sigmoid(1.0) + sigmoid(-2.0) + sigmoid(0.5) + sigmoid(3.0)) / 4),
])
def test_aggregate_steps_by_hand(agg, expected):
    assert aggregate_steps(STEPS, agg) == pytest.approx(expected, rel=1e-12)
    assert aggregate_steps([0.0], agg) == pytest.approx(0.5)


def test_aggregations_rank_solutions_differently():
    """min punishes one bad step, last looks only at the end: the two disagree on this pair."""
    one_bad_step, weak_throughout = [4.0, -3.0, 4.0], [0.2, 0.2, 0.2]
    assert aggregate_steps(one_bad_step, "min") < aggregate_steps(weak_throughout, "min")
    assert aggregate_steps(one_bad_step, "last") > aggregate_steps(weak_throughout, "last")
    assert set(AGGREGATIONS) == {"min", "last", "prod", "mean"}


def test_aggregate_is_stable_for_large_scores():
    assert aggregate_steps([-800.0], "min") == pytest.approx(0.0) and aggregate_steps([800.0], "min") == 1.0
    assert aggregate_steps([], "min") == 0.0


def test_first_error_accuracy_by_hand():
    scores = [
        [1.0, -1.0, 2.0],  # first scored wrong: step 1
        [1.0, 1.0],  # none scored wrong
        [-0.5, 1.0],  # step 0
        [0.0, 1.0],  # a score of exactly 0 is σ = ½: scored wrong at step 0
        [2.0, 2.0, -1.0],  # step 2
    ]
    labels = [
        [1.0, 0.0, 0.0],  # first wrong 1: hit
        [True, True],  # no wrong step, none predicted: hit
        [1.0, 0.0],  # first wrong 1, predicted 0: miss
        [0.4, 1.0],  # soft label 0.4 < ½ is wrong at step 0: hit
        [1.0, 1.0, 1.0],  # predicted an error that is not there: miss
    ]
    assert first_error_accuracy(scores, labels) == pytest.approx(3 / 5)
    assert first_error_accuracy([], []) is None


def test_pair_and_binary_accuracy_by_hand():
    assert pair_accuracy([1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, -1.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert pair_accuracy([], []) is None
    assert binary_accuracy([0.5, -0.1, 0.0, 2.0], [True, False, True, False]) == pytest.approx(2 / 4)
    assert binary_accuracy([], []) is None


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 12)
    scores = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(n)]
    labels = [rng.random() < 0.5 for _ in range(n)]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        assert auc(scores, labels) is None
        return
    brute = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert auc(scores, labels) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [-3.5, 0.25], [0.1 * i ** 2 - 2 for i in range(50)]])
def test_mean_std_is_the_unbiased_std(values):
    mu, sigma = mean_std(values)
    assert mu == pytest.approx(statistics.mean(values), abs=1e-12)
    assert sigma == pytest.approx(statistics.stdev(values), abs=1e-12)


def test_mean_std_of_fewer_than_two_values_standardises_nothing():
    assert mean_std([]) == (0.0, 1.0)
    assert mean_std([3.0]) == (0.0, 1.0)
