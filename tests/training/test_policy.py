"""Policy training: rollout batches (experience.py) and the PPO/GRPO update (policy/update.py); whole runs
(resume, two ranks) are in test_policy_runs.py.

Unit tests use a fresh toy:tiny model and compare with independent
computations: an unpadded forward pass per row, plain-Python GAE and
whitening, hand-aggregated losses and a separately built autograd graph.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from types import SimpleNamespace

import pytest
import torch

from rlhfctl.rl.shaping import Shaping
from rlhfctl.training.experience import (
    AdvantageSettings, Experience, advantages_for, assemble, pack_responses, response_logprobs, response_values, shape_scores,
)
from rlhfctl.training.policy.config import PolicyConfig
from rlhfctl.training.policy.update import Models, UpdateSettings, _global_count, aggregation, update

PAD = 0


class OneRank:
    """The accelerator of a single process: reductions are the identity."""

    num_processes, process_index, device, is_main_process = 1, 0, torch.device("cpu"), True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


@pytest.fixture(scope="module")
def tiny():
    from rlhfctl.models import load_causal_lm

    return load_causal_lm("toy:tiny", seed=0).eval()


def _rows(seed=0, prompt_lens=(3, 5, 2, 4), resp_lens=(4, 1, 6, 3)):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 100, (n,), generator=g).tolist() for n in prompt_lens]
    responses = [torch.randint(3, 100, (n,), generator=g).tolist() for n in resp_lens]
    return prompts, responses


# --- experience: layout, log-probs, values -----------------------------------------------------------

def test_assemble_left_pads_prompts_and_right_pads_responses():
    ids, mask, resp = assemble([[5, 6], [7]], [[8], [9, 10, 11]], PAD)
    assert ids.tolist() == [[5, 6, 8, 0, 0], [0, 7, 9, 10, 11]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert resp.tolist() == [[1, 0, 0], [1, 1, 1]]


def _unpadded_logprobs(model, prompt, response):
    """log π(response_t | prompt, response_<t) and the entropies, from one unpadded sequence."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp_all = torch.log_softmax(logits, -1)
    out, ent = [], []
    for t, tok in enumerate(response):
        row = logp_all[len(prompt) + t - 1]
        out.append(float(row[tok]))
        ent.append(float(-(row.exp() * row).sum()))
    return out, ent


def _shared_prompt_rows():
    """Two prompts with three responses each (the layout of a rollout batch, n = 3), response lengths varied."""
    prompts, responses = _rows(2, prompt_lens=(3, 3, 3, 5, 5, 5), resp_lens=(4, 1, 6, 3, 2, 5))
    prompts = [prompts[0]] * 3 + [prompts[3]] * 3
    responses[1] = responses[0][:1]  # a response that is a prefix of a sibling's: its own token is still its own
    return prompts, responses, torch.tensor([0, 0, 0, 1, 1, 1])


def _batch(packed: bool, seed: int):
    """(prompts, responses, ids, mask, response mask, layout): padded rows, or rows packed by prompt."""
    if not packed:
        prompts, responses = _rows(seed)
        return (prompts, responses, *assemble(prompts, responses, PAD), None)
    prompts, responses, groups = _shared_prompt_rows()
    ids, mask, resp = assemble(prompts, responses, PAD)
    layout = pack_responses(ids, mask, resp.shape[1], groups)
    assert layout.packed.input_ids.shape[0] == 2  # one row per prompt
    return prompts, responses, ids, mask, resp, layout


@pytest.mark.parametrize("packed", [False, True])
def test_response_logprobs_match_an_unpadded_forward(tiny, packed):
    prompts, responses, ids, mask, resp, layout = _batch(packed, seed=0)
    with torch.no_grad():
        logp, entropy = response_logprobs(tiny, ids, mask, resp.shape[1], with_entropy=True, layout=layout)
    assert logp.shape == entropy.shape == resp.shape and torch.isfinite(logp).all()
    for b, (p, r) in enumerate(zip(prompts, responses)):
        want, want_ent = _unpadded_logprobs(tiny, p, r)
        assert logp[b, :len(r)].tolist() == pytest.approx(want, abs=1e-4), b
        assert entropy[b, :len(r)].tolist() == pytest.approx(want_ent, abs=1e-4), b


@pytest.mark.parametrize("packed", [False, True])
def test_response_values_read_the_position_before_each_token(packed):
    from rlhfctl.rm.model import PRM, TokenValues, build_reward_model

    critic = TokenValues(build_reward_model("toy:tiny", PRM, seed=0)).eval()
    torch.nn.init.normal_(critic.model.score.weight, generator=torch.Generator().manual_seed(0))  # a non-zero head
    prompts, responses, ids, mask, resp, layout = _batch(packed, seed=1)
    with torch.no_grad():
        values = response_values(critic, ids, mask, resp.shape[1], layout=layout)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            alone = critic(torch.tensor([p + r]), torch.ones(1, len(p + r), dtype=torch.long))[0]
            assert values[b, :len(r)].tolist() == pytest.approx(alone[len(p) - 1:len(p) + len(r) - 1].tolist(), abs=1e-4), b


def test_a_mini_batch_packs_its_own_rows():
    prompts, responses, groups = _shared_prompt_rows()
    ids, mask, resp = assemble(prompts, responses, PAD)
    exp = Experience(ids, mask, resp, None, torch.zeros(resp.shape), None, groups=groups)
    assert exp.layout().packed.row.tolist() == [0, 0, 0, 1, 1, 1]
    mb = exp.rows(torch.tensor([4, 1, 3]))
    assert mb.groups.tolist() == [1, 0, 1] and mb.layout().packed.row.tolist() == [0, 1, 0]
    assert Experience(ids, mask, resp, None, torch.zeros(resp.shape), None).layout() is None  # no groups: padded forwards


# --- experience: advantages -------------------------------------------------------------------------

def _exp(seed=0, rows=4, width=5, values=False):
    g = torch.Generator().manual_seed(seed)
    lengths = [width, 2, 4, 1][:rows]
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    old = -torch.rand(rows, width, generator=g) * 2
    ref = old + 0.5 * torch.randn(rows, width, generator=g)
    v = torch.randn(rows, width, generator=g) if values else None
    ids = torch.zeros(rows, width + 2, dtype=torch.long)
    return Experience(ids, torch.ones_like(ids), mask, old, ref, torch.zeros_like(old), v), lengths


def _settings(algo, **kw):
    base = dict(algo=algo, n=2, shaping=Shaping(), kl_coef=0.1, kl_estimator="k1", kl_in="loss", gamma=1.0, lam=0.95,
                whiten_advantages=False)
    return AdvantageSettings(**{**base, **kw})


def test_grpo_advantage_is_the_shaped_score_on_every_response_token():
    exp, lengths = _exp()
    shaped = torch.tensor([0.5, -1.0, 2.0, 0.25])
    adv, returns = advantages_for(shaped, exp, _settings("grpo", kl_in="loss"), OneRank())
    assert returns is None
    for b, n in enumerate(lengths):
        assert adv[b].tolist() == [float(shaped[b])] * n + [0.0] * (5 - n)


def test_grpo_with_the_kl_in_the_reward_subtracts_it_per_token():
    exp, lengths = _exp()
    shaped = torch.tensor([0.5, -1.0, 2.0, 0.25])
    adv, _ = advantages_for(shaped, exp, _settings("grpo", kl_in="reward", kl_estimator="k2", kl_coef=0.3), OneRank())
    for b, n in enumerate(lengths):
        for t in range(5):
            d = float(exp.old_logp[b, t]) - float(exp.ref_logp[b, t])
            want = float(shaped[b]) - 0.3 * 0.5 * d * d if t < n else 0.0
            assert float(adv[b, t]) == pytest.approx(want, abs=1e-6), (b, t)


@pytest.mark.parametrize("whiten", [False, True])
def test_ppo_advantages_are_gae_over_eos_reward_minus_kl(whiten):
    exp, lengths = _exp(values=True)
    shaped = torch.tensor([1.0, -0.5, 0.25, 2.0])
    gamma, lam, beta = 0.9, 0.8, 0.2
    settings = _settings("ppo", kl_in="reward", kl_estimator="k1", kl_coef=beta, gamma=gamma, lam=lam, whiten_advantages=whiten)
    adv, ret = advantages_for(shaped, exp, settings, OneRank())
    # by hand: r_t = -β (logp - ref) on every token, + the score at the last one; GAE with V after the end = 0
    want_adv, want_ret = [], []
    for b, n in enumerate(lengths):
        r = [-beta * (float(exp.old_logp[b, t]) - float(exp.ref_logp[b, t])) for t in range(n)]
        r[-1] += float(shaped[b])
        v = [float(exp.values[b, t]) for t in range(n)] + [0.0]
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        a = [sum((gamma * lam) ** k * delta[t + k] for k in range(n - t)) for t in range(n)]
        want_adv.append(a)
        want_ret.append([a[t] + v[t] for t in range(n)])
    flat = [x for row in want_adv for x in row]
    if whiten:
        mean, var = statistics.fmean(flat), statistics.pvariance(flat)
        want_adv = [[(x - mean) / math.sqrt(var + 1e-8) for x in row] for row in want_adv]
    for b, n in enumerate(lengths):
        assert adv[b, :n].tolist() == pytest.approx(want_adv[b], abs=1e-5), b
        assert ret[b, :n].tolist() == pytest.approx(want_ret[b], abs=1e-5), b  # returns are never whitened
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0


class _SecondOfTwoRanks(OneRank):
    """Rank 1 of 2: `gather` puts rank 0's scores first."""

    num_processes, process_index = 2, 1

    def __init__(self, rank0_scores):
        self.rank0 = rank0_scores

    def gather(self, x):
        return torch.cat([self.rank0, x])


def test_shape_scores_normalises_over_the_global_batch():
    rank0, rank1 = torch.tensor([1.0, 3.0, 0.0, 0.0]), torch.tensor([2.0, 4.0, 10.0, 20.0])
    settings = _settings("grpo", shaping=Shaping(norm="batch", eps=0.0, clip=None))
    got = shape_scores(rank1, settings, _SecondOfTwoRanks(rank0))
    everything = rank0.tolist() + rank1.tolist()
    mean, std = statistics.mean(everything), statistics.stdev(everything)
    assert got.tolist() == pytest.approx([(x - mean) / std for x in rank1.tolist()])
    # group normalisation sees only whole groups: rank 1's groups are its own
    settings = _settings("grpo", shaping=Shaping(norm="group", eps=0.0, clip=None))
    got = shape_scores(rank1, settings, _SecondOfTwoRanks(rank0))
    s2, s10 = statistics.stdev([2.0, 4.0]), statistics.stdev([10.0, 20.0])
    assert got.tolist() == pytest.approx([-1 / s2, 1 / s2, -5 / s10, 5 / s10])


# --- config ---------------------------------------------------------------------------------------

def test_per_algorithm_defaults_and_overrides():
    base = dict(prompts="p.jsonl", model="toy:tiny", out="o", verifier="math")
    grpo = PolicyConfig(**base, algo="grpo").resolved()
    ppo = PolicyConfig(**base, algo="ppo").resolved()
    assert (grpo.kl_coef, grpo.kl_estimator, grpo.kl_in) == (0.04, "k3", "loss")
    assert (ppo.kl_coef, ppo.kl_estimator, ppo.kl_in) == (0.005, "k1", "reward")
    mine = PolicyConfig(**base, algo="ppo", kl_coef=0.0, kl_estimator="k3", kl_in="loss").resolved()
    assert (mine.kl_coef, mine.kl_estimator, mine.kl_in) == (0.0, "k3", "loss")  # 0.0 is a choice, not "unset"
    assert mine.shaping == Shaping()


# --- the update: one actor step against an independent computation -------------------------------------

def _update_config(loss_agg, **kw):
    base = dict(prompts="p.jsonl", model="toy:tiny", out="o", verifier="math", algo="grpo", loss_agg=loss_agg,
                max_new_tokens=16, max_grad_norm=1e9, lr=1e-3)
    return UpdateSettings.of(PolicyConfig(**{**base, **kw}).resolved())


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_actor_step_loss_and_gradient(loss_agg, tiny):
    """The first PPO step of a batch has ratio 1: loss = agg(-A + β k3), checked with loops and a separate graph."""
    import copy

    from accelerate import Accelerator

    config = _update_config(loss_agg)
    prompts, responses = _rows(2)
    ids, mask, resp = assemble(prompts, responses, PAD)
    width = resp.shape[1]
    policy = copy.deepcopy(tiny)
    with torch.no_grad():
        old, _ = response_logprobs(policy, ids, mask, width)
    g = torch.Generator().manual_seed(5)
    ref = old + 0.3 * torch.randn(old.shape, generator=g)
    adv_row = [0.7, -1.2, 0.4, -0.1]
    adv = torch.tensor(adv_row)[:, None] * resp
    exp = Experience(ids, mask, resp, old, ref, adv)

    # independent: each row on its own, unpadded, in float64 sums
    twin = copy.deepcopy(tiny).train()
    beta, per_row, count = config.kl_coef, [], 0
    for b, (p, r) in enumerate(zip(prompts, responses)):
        logits = twin(input_ids=torch.tensor([p + r])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)[len(p) - 1:len(p) + len(r) - 1].gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        ratio = (logp - old[b, :len(r)]).exp()
        d = ref[b, :len(r)] - logp
        per_row.append(-ratio * adv_row[b] + beta * (d.exp() - 1 - d))
        count += len(r)
    if loss_agg == "token-mean":
        want = sum(x.sum() for x in per_row) / count
    elif loss_agg == "seq-mean-token-mean":
        want = sum(x.mean() for x in per_row) / len(per_row)
    else:  # Dr. GRPO: divided by the generation budget (16), not the padded width
        want = sum(x.sum() for x in per_row) / (len(per_row) * config.max_new_tokens)
    want.backward()
    want_norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in twin.parameters() if p.grad is not None))

    opt = torch.optim.SGD(policy.parameters(), lr=1e-3)
    stats = update(Models(policy, opt), exp, config, Accelerator(cpu=True), step=1, seed=0)
    assert stats["policy_loss"] == pytest.approx(float(want.detach()), rel=1e-5, abs=1e-7)
    assert stats["grad_norm"] == pytest.approx(want_norm, rel=1e-4)
    assert stats["clip_fraction"] == 0.0
    k3_mean = sum(float((ref[b, :len(r)] - old[b, :len(r)]).exp().sub(1).sub(ref[b, :len(r)] - old[b, :len(r)]).sum())
                  for b, r in enumerate(responses)) / count
    assert stats["kl_loss_term"] == pytest.approx(k3_mean, rel=1e-4)
    # SGD step: every parameter moved by -lr * its gradient
    for (name, new), old_p, twin_p in zip(policy.named_parameters(), tiny.parameters(), twin.parameters()):
        if twin_p.grad is not None:
            assert torch.allclose(new, old_p - 1e-3 * twin_p.grad, atol=1e-6), name


def test_critic_warmup_freezes_the_actor(tiny):
    import copy

    from accelerate import Accelerator

    config = _update_config("token-mean", algo="ppo", critic_warmup_steps=2)
    prompts, responses = _rows(3)
    ids, mask, resp = assemble(prompts, responses, PAD)
    policy = copy.deepcopy(tiny)
    with torch.no_grad():
        old, _ = response_logprobs(policy, ids, mask, resp.shape[1])

    class Critic(torch.nn.Module):  # V(s) = w·1: one trainable number
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, input_ids, attention_mask, position_ids=None):
            return self.w * torch.ones(input_ids.shape, dtype=torch.float)

    critic = Critic()
    values = torch.full(resp.shape, 0.5) * resp
    exp = Experience(ids, mask, resp, old, old.clone(), torch.ones(resp.shape) * resp, values, torch.zeros(resp.shape))
    models = Models(policy, torch.optim.SGD(policy.parameters(), lr=1.0), critic, torch.optim.SGD(critic.parameters(), lr=0.1))
    stats = update(models, exp, config, Accelerator(cpu=True), step=2, seed=0)
    assert "policy_loss" not in stats and "value_loss" in stats
    assert stats["value_loss"] == pytest.approx(0.5 * 0.5 ** 2)  # ½ (V - R)², V = 0.5, R = 0, inside the clip
    for a, b in zip(policy.parameters(), tiny.parameters()):
        assert torch.equal(a, b)
    assert float(critic.w.detach()) == pytest.approx(0.5 - 0.1 * 0.5)  # d/dw ½(w - 0)² = w
    stats = update(models, exp, config, Accelerator(cpu=True), step=3, seed=0)
    assert "policy_loss" in stats


# --- two ranks: the global denominator makes the ranks' gradients add up to one process's ------------------

def _linear_policy_batch(seed=0, rows=6, width=7, hidden=5, vocab=11):
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 2, 5, 3, 1, 4][:rows]
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], dtype=torch.float64)
    tokens = torch.randint(0, vocab, (rows, width), generator=g)
    feats = torch.randn(rows, width, hidden, generator=g, dtype=torch.float64)
    weight = torch.randn(hidden, vocab, generator=g, dtype=torch.float64)
    with torch.no_grad():
        old = _linear_logp(weight, feats, tokens) + 0.2 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    ref = old + 0.3 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    adv = torch.randn(rows, 1, generator=g, dtype=torch.float64) * mask
    exp = Experience(tokens, torch.ones_like(tokens), mask, old, ref, adv)
    return exp, feats, weight


def _linear_logp(weight, feats, tokens):
    return torch.log_softmax(feats @ weight, -1).gather(-1, tokens[..., None]).squeeze(-1)


def _trim(exp: Experience, feats):
    """A rank's own batch: its response width is its longest response, not the global one."""
    width = int(exp.response_mask.sum(-1).max())
    cut = lambda t: t[:, :width]  # noqa: E731
    kept = [getattr(exp, f.name) for f in dataclasses.fields(Experience) if f.init]
    return Experience(*(None if t is None else cut(t) for t in kept)), feats[:, :width]


def _actor_loss(weight, exp, feats, agg, denominator, clip_eps=0.2, beta=0.04):
    from rlhfctl.rl.kl import k3
    from rlhfctl.rl.losses import clipped_policy_loss

    logp = _linear_logp(weight, feats, exp.input_ids)
    loss, _ = clipped_policy_loss(logp, exp.old_logp, exp.advantages, clip_eps)
    return agg(loss + beta * k3(logp, exp.ref_logp), exp.response_mask, denominator)


class _SumOverRanks(OneRank):
    """`reduce` adds the other rank's local count, as an all-reduce would."""

    num_processes = 2

    def __init__(self, other):
        self.other = other

    def reduce(self, x, reduction="sum"):
        return x + self.other


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_rank_gradients_add_up_to_the_full_batch_gradient(loss_agg):
    exp, feats, weight0 = _linear_policy_batch()
    agg = aggregation(SimpleNamespace(loss_agg=loss_agg, max_new_tokens=9))
    # one process, the whole batch
    w = weight0.clone().requires_grad_(True)
    _actor_loss(w, exp, feats, agg, _global_count(exp.response_mask, loss_agg, OneRank())).backward()
    full = w.grad.clone()
    # two ranks, each with its own rows and its own padding width; DDP averages the two gradients
    halves = [torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])]
    parts = [_trim(exp.rows(ix), feats[ix]) for ix in halves]
    local_counts = [_global_count(p[0].response_mask, loss_agg, OneRank()) for p in parts]
    assert parts[0][0].response_mask.shape[1] != parts[1][0].response_mask.shape[1]
    grads = []
    for r, (mb, f) in enumerate(parts):
        denominator = _global_count(mb.response_mask, loss_agg, _SumOverRanks(local_counts[1 - r]))
        assert float(denominator) == (exp.response_mask.sum() if loss_agg == "token-mean" else 6)
        w = weight0.clone().requires_grad_(True)
        (_actor_loss(w, mb, f, agg, denominator) * 2).backward()  # × world size, as policy/update.py does
        grads.append(w.grad)
    assert torch.allclose((grads[0] + grads[1]) / 2, full, rtol=1e-10, atol=1e-12)


def test_sum_norm_with_the_padded_width_would_not_add_up():
    """Why Dr. GRPO's norm must be the budget: with each rank's own width the ranks disagree with one process."""
    from rlhfctl.rl.aggregation import seq_mean_token_sum_norm

    exp, feats, weight0 = _linear_policy_batch()
    full = _actor_loss(weight0, exp, feats, seq_mean_token_sum_norm, None)
    parts = [_trim(exp.rows(ix), feats[ix]) for ix in (torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]))]
    split = sum(_actor_loss(weight0, mb, f, seq_mean_token_sum_norm, torch.tensor(6.0)) for mb, f in parts)
    assert float(split) != pytest.approx(float(full), rel=1e-6)
