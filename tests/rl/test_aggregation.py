"""The three loss aggregations by hand, and their split-and-sum property with a global denominator."""

import pytest
import torch

from rlhfctl.rl.aggregation import DENOMINATOR_UNIT, LOSS_AGGREGATIONS, seq_mean_token_mean, seq_mean_token_sum_norm, token_mean

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float64)


def test_token_mean_by_hand():
    assert float(token_mean(LOSS, MASK)) == pytest.approx((1 + 2 + 3 + 5 + 6) / 5)
    assert float(token_mean(LOSS, MASK, denominator=10)) == pytest.approx(17 / 10)


def test_seq_mean_token_mean_by_hand():
    assert float(seq_mean_token_mean(LOSS, MASK)) == pytest.approx(((1 + 2 + 3) / 3 + (5 + 6) / 2) / 2)
    assert float(seq_mean_token_mean(LOSS, MASK, denominator=4)) == pytest.approx((2 + 5.5) / 4)


def test_seq_mean_token_sum_norm_by_hand():
    # default norm: T = 4 (the padded width)
    assert float(seq_mean_token_sum_norm(LOSS, MASK)) == pytest.approx((6 / 4 + 11 / 4) / 2)
    assert float(seq_mean_token_sum_norm(LOSS, MASK, norm=10)) == pytest.approx((6 / 10 + 11 / 10) / 2)
    assert float(seq_mean_token_sum_norm(LOSS, MASK, denominator=4, norm=10)) == pytest.approx((0.6 + 1.1) / 4)


def test_padding_values_never_count():
    garbage = LOSS.clone()
    garbage[MASK == 0] = 1e6
    for name, agg in LOSS_AGGREGATIONS.items():
        assert float(agg(garbage, MASK)) == pytest.approx(float(agg(LOSS, MASK))), name


def test_empty_rows_do_not_divide_by_zero():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    assert float(token_mean(LOSS, mask)) == pytest.approx(1.5)
    assert float(seq_mean_token_mean(LOSS, mask)) == pytest.approx((1.5 + 0.0) / 2)
    assert float(token_mean(LOSS, torch.zeros_like(mask))) == 0.0


def test_registry_and_units():
    assert set(LOSS_AGGREGATIONS) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}
    assert DENOMINATOR_UNIT == {"token-mean": "tokens", "seq-mean-token-mean": "sequences", "seq-mean-token-sum-norm": "sequences"}


def _ragged(seed, rows=6, width=7):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(rows, width, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).double()
    return loss, mask


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_halves_with_global_denominator_sum_to_the_whole(name, seed):
    loss, mask = _ragged(seed)
    whole = LOSS_AGGREGATIONS[name](loss, mask)
    denominator = mask.sum() if DENOMINATOR_UNIT[name] == "tokens" else torch.tensor(float(loss.shape[0]), dtype=torch.float64)
    for split in ([0, 1, 2], [0, 4]):  # equal and unequal halves
        first = torch.tensor(split)
        rest = torch.tensor([i for i in range(loss.shape[0]) if i not in split])
        parts = sum(LOSS_AGGREGATIONS[name](loss[ix], mask[ix], denominator) for ix in (first, rest))
        assert float(parts) == pytest.approx(float(whole), rel=1e-12), split


def test_halves_with_local_denominators_do_not_sum_to_the_whole():
    """Why the global count matters: local token means of unequal halves are not the whole's mean."""
    loss, mask = _ragged(0)
    first, rest = torch.tensor([0, 4]), torch.tensor([1, 2, 3, 5])
    assert mask[first].sum() != mask[rest].sum()
    local = (token_mean(loss[first], mask[first]) + token_mean(loss[rest], mask[rest])) / 2
    assert float(local) != pytest.approx(float(token_mean(loss, mask)), rel=1e-6)
