"""Reward shaping: normalise → clip → shrink, the asymmetric clip range, and placement on eos."""

import math
import statistics

import pytest
import torch

from rlhfctl.rl.shaping import Shaping, place_on_eos, shape_rewards, standardize


def _t(xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_order_is_normalise_then_clip_then_shrink():
    """A group where every other order gives another answer.

    raw [0, 10, 10, 10] → group-normalised [-1.5, .5, .5, .5] → clip 1 → [-1, .5, .5, .5] → α=.5 → [-.5, .5, .5, .5].
    shrink before clip: [-.75, ...]; clip before normalise: [-.75, ...] (clip raw → [0,1,1,1] → [-1.5, ...] → shrink);
    no shrink: [-1, ...].
    """
    got = shape_rewards(_t([0.0, 10.0, 10.0, 10.0]), 4, Shaping(norm="group", eps=0.0, clip=1.0, neg_scale=0.5))
    assert got.tolist() == pytest.approx([-0.5, 0.5, 0.5, 0.5])
    # the alternatives really differ
    normed = [-1.5, 0.5, 0.5, 0.5]
    shrink_then_clip = [max(-1.0, min(1.0, x * 0.5 if x < 0 else x)) for x in normed]
    assert shrink_then_clip[0] == -0.75


def test_matches_a_plain_python_pipeline():
    g = torch.Generator().manual_seed(0)
    raw = (torch.randn(12, generator=g, dtype=torch.float64) * 3).tolist()
    n, eps, c, alpha = 3, 1e-6, 1.2, 0.3
    want = []
    for k in range(0, len(raw), n):
        group = raw[k:k + n]
        mean, std = statistics.mean(group), statistics.stdev(group)
        for x in group:
            y = max(-c, min(c, (x - mean) / (std + eps)))
            want.append(y * alpha if y < 0 else y)
    got = shape_rewards(_t(raw), n, Shaping(norm="group", eps=eps, clip=c, neg_scale=alpha))
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_clip_range_replaces_neg_scale():
    shaping = Shaping(norm="none", clip=5.0, clip_range=(-0.5, 2.0), neg_scale=0.1)
    got = shape_rewards(_t([-3.0, -0.2, 1.0, 10.0]), 2, shaping)
    assert got.tolist() == pytest.approx([-0.5, -0.2, 1.0, 2.0])  # -0.2 is not shrunk: the range is the alternative


def test_neg_scale_alone_and_no_clip():
    got = shape_rewards(_t([-2.0, 0.0, 3.0, 100.0]), 2, Shaping(norm="none", clip=None, neg_scale=0.5))
    assert got.tolist() == [-1.0, 0.0, 3.0, 100.0]
    got = shape_rewards(_t([-7.0, 9.0]), 2, Shaping(norm="none"))  # defaults: clip 5, α = 1
    assert got.tolist() == [-5.0, 5.0]


def test_batch_norm():
    xs = [1.0, 2.0, 4.0, 8.0, 16.0, 0.0]
    mean, std = statistics.mean(xs), statistics.stdev(xs)
    got = shape_rewards(_t(xs), 2, Shaping(norm="batch", eps=0.0, clip=None))
    assert got.tolist() == pytest.approx([(x - mean) / std for x in xs], abs=1e-12)


def test_std_floor_reaches_group_norm():
    got = shape_rewards(_t([1.0, 1.1]), 2, Shaping(norm="group", eps=0.0, std_floor=0.5, clip=None))
    assert got.tolist() == pytest.approx([-0.1, 0.1])


def test_standardize():
    assert standardize(_t([3.0, -1.0]), 1.0, 2.0).tolist() == [1.0, -1.0]
    assert standardize(_t([3.0]), 1.0, 0.0).tolist() == [2.0]  # σ = 0: shift only


def test_place_on_eos():
    mask = _t([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    got = place_on_eos(_t([1.5, -2.0, 3.0, 7.0]), mask)
    assert got.tolist() == [[0, 0, 1.5, 0], [-2.0, 0, 0, 0], [0, 0, 0, 3.0], [0, 0, 0, 0]]
    assert got.dtype == torch.float64


def test_place_on_eos_random_rows():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 9, (10,), generator=g).tolist()
    mask = _t([[1] * n + [0] * (8 - n) for n in lengths])
    scores = torch.randn(10, generator=g, dtype=torch.float64)
    got = place_on_eos(scores, mask)
    for b, n in enumerate(lengths):
        row = [0.0] * 8
        row[n - 1] = float(scores[b])
        assert got[b].tolist() == row
    assert math.isclose(float(got.sum()), float(scores.sum()))
