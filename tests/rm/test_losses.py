import math

import pytest
import torch

from rlhfctl.rm.losses import binary_loss, bradley_terry_loss, step_bce_loss, unified_loss


def _nll_sigmoid(x):
    return -math.log(1 / (1 + math.exp(-x)))


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.5])
    expected = (_nll_sigmoid(1.0) + _nll_sigmoid(-1.5)) / 2
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected)
    margin = torch.tensor([0.5, 0.0])
    expected_m = (_nll_sigmoid(0.5) + _nll_sigmoid(-1.5)) / 2
    assert float(bradley_terry_loss(chosen, rejected, margin)) == pytest.approx(expected_m)


def test_binary_by_hand():
    scores, labels = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([True, True, False])
    expected = (_nll_sigmoid(1.0) + _nll_sigmoid(-2.0) + _nll_sigmoid(-0.5)) / 3
    assert float(binary_loss(scores, labels)) == pytest.approx(expected)


def test_unified_averages_the_two_kinds():
    c, r = torch.tensor([1.0]), torch.tensor([0.0])
    s, y = torch.tensor([0.3]), torch.tensor([False])
    both, parts = unified_loss(c, r, None, s, y)
    assert float(both) == pytest.approx(0.5 * (_nll_sigmoid(1.0) + _nll_sigmoid(-0.3)))
    assert set(parts) == {"bt", "cls"}
    only_pairs, parts = unified_loss(c, r)
    assert float(only_pairs) == pytest.approx(_nll_sigmoid(1.0)) and set(parts) == {"bt"}
    only_binary, _ = unified_loss(scores=s, labels=y)
    assert float(only_binary) == pytest.approx(_nll_sigmoid(-0.3))
    with pytest.raises(ValueError):
        unified_loss()


def test_step_bce_soft_labels_by_hand():
    s, y = torch.tensor([0.0, 2.0]), torch.tensor([0.25, 1.0])
    p = 1 / (1 + math.exp(-2.0))
    expected = (-(0.25 * math.log(0.5) + 0.75 * math.log(0.5)) - math.log(p)) / 2
    assert float(step_bce_loss(s, y)) == pytest.approx(expected)

