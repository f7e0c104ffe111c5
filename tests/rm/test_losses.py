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


def test_unified_shares_of_a_batch_add_up_to_the_batch_loss():
    """Two ranks' shares of 3 pairs + 2 binary items, each scaled by the batch's counts: their sum is
    ½(mean BT + mean cls) over the whole batch; a share without binary items adds a zero that backpropagates."""
    c = torch.tensor([1.0, -0.5, 2.0], requires_grad=True)
    r = torch.tensor([0.0, 0.5, 1.0])
    m = torch.tensor([0.0, 0.5, 0.0])
    s = torch.tensor([0.3, -1.2], requires_grad=True)
    y = torch.tensor([False, True])
    bt = [_nll_sigmoid(1.0), _nll_sigmoid(-1.5), _nll_sigmoid(1.0)]
    cls = [_nll_sigmoid(-0.3), _nll_sigmoid(-1.2)]
    expected = 0.5 * (sum(bt) / 3 + sum(cls) / 2)
    first, parts = unified_loss(c[:2], r[:2], m[:2], s[:0], y[:0], pair_count=3, binary_count=2)
    assert float(parts["cls"]) == 0.0 and float(parts["bt"]) == pytest.approx((bt[0] + bt[1]) / 3)
    second, _ = unified_loss(c[2:], r[2:], m[2:], s, y, pair_count=3, binary_count=2)
    assert float((first + second).detach()) == pytest.approx(expected)
    (first + second).backward()
    assert c.grad is not None and s.grad is not None
    whole, _ = unified_loss(c, r, m, s, y)
    assert float(whole.detach()) == pytest.approx(expected)


def test_step_bce_soft_labels_by_hand():
    s, y = torch.tensor([0.0, 2.0]), torch.tensor([0.25, 1.0])
    p = 1 / (1 + math.exp(-2.0))
    expected = (-(0.25 * math.log(0.5) + 0.75 * math.log(0.5)) - math.log(p)) / 2
    assert float(step_bce_loss(s, y)) == pytest.approx(expected)

