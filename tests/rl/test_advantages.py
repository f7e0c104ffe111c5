"""GAE, group/batch normalisation and masked whitening against plain Python."""

import math
import statistics

import pytest
import torch

from rlhfctl.rl.advantages import batch_normalize, gae, group_normalize, whiten


def _right_padded(seed, rows=5, width=8):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=g).tolist()
    lengths[0] = width  # one full row
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths], dtype=torch.float64)
    rewards = torch.randn(rows, width, generator=g, dtype=torch.float64)
    values = torch.randn(rows, width, generator=g, dtype=torch.float64)
    return rewards, values, mask, lengths  # garbage rewards/values on padding on purpose


def _gae_by_hand(rewards, values, lengths, gamma, lam):
    """A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} - V_t, V after the last real token = 0."""
    out = []
    for b, n in enumerate(lengths):
        r = [float(x) for x in rewards[b, :n]]
        v = [float(x) for x in values[b, :n]] + [0.0]
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        out.append([sum((gamma * lam) ** l * delta[t + l] for l in range(n - t)) for t in range(n)])
    return out


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.5, 0.3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gae_matches_the_double_loop(seed, gamma, lam):
    rewards, values, mask, lengths = _right_padded(seed)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want = _gae_by_hand(rewards, values, lengths, gamma, lam)
    for b, n in enumerate(lengths):
        assert adv[b, :n].tolist() == pytest.approx(want[b], abs=1e-10), b
        assert ret[b, :n].tolist() == pytest.approx([a + float(v) for a, v in zip(want[b], values[b, :n])], abs=1e-10), b
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0, b


def test_gae_with_reward_at_the_end_only():
    """γ = λ = 1, V = 0: every token's advantage is the final reward (Monte Carlo return)."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    adv, ret = gae(rewards, torch.zeros_like(rewards), mask, 1.0, 1.0)
    assert adv.tolist() == [[2.0, 2.0, 2.0, 0.0], [-1.0, -1.0, -1.0, -1.0]]
    assert ret.tolist() == adv.tolist()


def _group_by_hand(scores, n, eps, floor):
    out = []
    for k in range(0, len(scores), n):
        group = scores[k:k + n]
        mean, std = statistics.mean(group), statistics.stdev(group)  # unbiased
        out.extend((x - mean) / (max(std, floor) + eps) for x in group)
    return out


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_group_normalize_matches_python(n, floor):
    g = torch.Generator().manual_seed(n)
    scores = torch.randn(5 * n, generator=g, dtype=torch.float64) * 0.6
    scores[:n] = 1.25  # a uniform group: all zeros, no division by zero
    got = group_normalize(scores, n, eps=1e-6, std_floor=floor)
    want = _group_by_hand(scores.tolist(), n, 1e-6, floor)
    assert got.tolist() == pytest.approx(want, abs=1e-9)
    assert got[:n].tolist() == [0.0] * n


def test_group_normalize_by_hand_and_floor():
    scores = torch.tensor([0.0, 10.0, 10.0, 10.0, 1.0, 1.1], dtype=torch.float64)
    assert group_normalize(scores[:4], 4, eps=0.0).tolist() == pytest.approx([-1.5, 0.5, 0.5, 0.5])
    # group [1.0, 1.1]: std = 0.0707; the floor 0.5 takes over
    got = group_normalize(scores[4:], 2, eps=0.0, std_floor=0.5)
    assert got.tolist() == pytest.approx([-0.1, 0.1])
    got = group_normalize(scores[4:], 2, eps=0.0)
    assert got.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_batch_normalize_matches_python():
    xs = [3.0, -1.0, 4.0, 1.0, 5.0, -9.0, 2.0]
    mean, std = statistics.mean(xs), statistics.stdev(xs)
    got = batch_normalize(torch.tensor(xs, dtype=torch.float64), eps=1e-6)
    assert got.tolist() == pytest.approx([(x - mean) / (std + 1e-6) for x in xs], abs=1e-12)
    got = batch_normalize(torch.tensor(xs, dtype=torch.float64), eps=0.0, std_floor=100.0)
    assert got.tolist() == pytest.approx([(x - mean) / 100.0 for x in xs], abs=1e-12)


VALUES = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -7.0, 42.0]], dtype=torch.float64)
VMASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)


def _flat(rows):
    return [x for r in rows for x in r]


def test_whiten_by_hand():
    # masked entries 1..5: mean 3, population variance (4+1+0+1+4)/5 = 2
    got = whiten(VALUES, VMASK, eps=0.0)
    s = math.sqrt(2.0)
    assert got.view(-1).tolist() == pytest.approx(_flat([[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]]), abs=1e-12)
    got = whiten(VALUES, VMASK, shift_mean=False, eps=0.0)
    assert got.view(-1).tolist() == pytest.approx(_flat([[-2 / s + 3, -1 / s + 3, 3.0, 0.0], [1 / s + 3, 2 / s + 3, 0.0, 0.0]]), abs=1e-12)


def test_whiten_with_given_statistics():
    got = whiten(VALUES, VMASK, mean=1.0, var=4.0, eps=0.0)
    assert got.view(-1).tolist() == pytest.approx(_flat([[0.0, 0.5, 1.0, 0.0], [1.5, 2.0, 0.0, 0.0]]), abs=1e-12)
    # only the mean given: the variance is taken around it
    got = whiten(VALUES, VMASK, mean=0.0, eps=0.0)
    var = (1 + 4 + 9 + 16 + 25) / 5
    assert got[0, :3].tolist() == pytest.approx([x / math.sqrt(var) for x in (1, 2, 3)], abs=1e-12)


def test_whiten_eps():
    got = whiten(VALUES, VMASK, eps=1.0)
    assert float(got[1, 1]) == pytest.approx(2 / math.sqrt(3.0))
