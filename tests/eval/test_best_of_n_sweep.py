"""best-of-n on hand-written rollouts, with stub scorers and the score cache: no reward model needed."""

import itertools
import json
import math
import os
import random
from fractions import Fraction

import pytest

from conftest import read_jsonl, write_prompts
from rlhfctl.eval import best_of_n_sweep
from rlhfctl.eval.passk import maj_at_k, weighted_maj_at_k
from rlhfctl.records import write_jsonl

# Four responses per prompt, graded; scores are the stub reward model's.
ROLLOUTS = [
    {"id": "p1", "prompt": "Compute 2+3.\n", "answer": "5", "task": "math",
     "responses": ["Answer: 5", "Answer: 6", "Answer: 5", "Answer: 7"], "correct": [True, False, True, False]},
    {"id": "p2", "prompt": "Compute 4+4.\n", "answer": "8", "task": "math",
     "responses": ["Answer: 9", "Answer: 9", "Answer: 8", "Answer: 1"], "correct": [False, False, True, False]},
    {"id": "p3", "prompt": "Compute 9-1.\n", "answer": "8", "task": "math",
     "responses": ["Answer: 7", "Answer: 6", "Answer: 5", "no answer"], "correct": [False, False, False, False]},
]
SCORES = {"p1": [0.2, 1.5, -0.3, 0.9], "p2": [2.0, 2.0, 1.0, -4.0], "p3": [0.0, 0.1, 0.2, 0.3]}


def brute_best_of_n(scores, correct, k):
    """Mean over all k-subsets of the correctness of the top score; ties at the top split the credit."""
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(scores)), k))
    for subset in subsets:
        top = max(scores[i] for i in subset)
        tied = [i for i in subset if scores[i] == top]
        total += Fraction(sum(correct[i] for i in tied), len(tied))
    return float(total / len(subsets))


def brute_vote(answers, correct, k, weights=None):
    """Mean over all k-subsets of a (weighted) vote over the stated answers; a tie between answers splits the credit."""
    right = {a for a, c in zip(answers, correct) if a is not None and c}
    subsets = list(itertools.combinations(range(len(answers)), k))
    total = 0.0
    for subset in subsets:
        tally = {}
        for i in subset:
            if answers[i] is not None:
                tally[answers[i]] = tally.get(answers[i], 0.0) + (1.0 if weights is None else weights[i])
        if tally:
            best = max(tally.values())
            winners = [a for a, v in tally.items() if v == best]
            total += sum(a in right for a in winners) / len(winners)
    return total / len(subsets)


def _answer(text):
    return text.split("Answer: ")[1] if "Answer: " in text else None


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """Rollouts on disk, a pre-filled score cache for a reward model folder that does not exist, and scorer stubs that count calls."""
    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, ROLLOUTS)
    rm = tmp_path / "no-such-rm"
    out = tmp_path / "bon.json"
    (tmp_path / "bon.json.scores.json").write_text(json.dumps({f"rm:{os.path.abspath(rm)}": SCORES}))
    calls = {"rm": [], "logprob": []}

    def fake_rm(rollouts, path, max_length=None, counts=None):
        calls["rm"].append([r["id"] for r in rollouts])
        return [[float(len(t)) for t in r["responses"]] for r in rollouts]

    def fake_logprob(rollouts, model):
        calls["logprob"].append([r["id"] for r in rollouts])
        return [[-float(i) for i in range(len(r["responses"]))] for r in rollouts]  # prefers the first response

    monkeypatch.setattr(best_of_n_sweep, "_score_rm", fake_rm)
    monkeypatch.setattr(best_of_n_sweep, "_score_logprob", fake_logprob)
    return src, rm, out, calls


def test_curves_from_cached_scores(setup, run_main, tmp_path):
    src, rm, out, calls = setup
    r = run_main("best-of-n", src, "--rm", rm, "--vote", "majority", "--vote", "weighted", "--out", out,
                 "--picks", tmp_path / "picks.jsonl", "--plot", tmp_path / "bon.png", "--json")
    assert r.code == 0, r.err
    assert calls["rm"] == []  # every score came from the cache
    result = json.loads(r.out)
    assert result == json.loads(out.read_text())
    assert result["n"] == [1, 2, 4] and result["num_prompts"] == 3
    assert set(result["curves"]) == {"oracle", "rm", "majority", "weighted"}
    for i, k in enumerate(result["n"]):
        rm_k = sum(brute_best_of_n(SCORES[x["id"]], x["correct"], k) for x in ROLLOUTS) / 3
        oracle_k = sum(brute_best_of_n([float(c) for c in x["correct"]], x["correct"], k) for x in ROLLOUTS) / 3
        answers = [[_answer(t) for t in x["responses"]] for x in ROLLOUTS]
        maj_k = sum(brute_vote(a, x["correct"], k) for a, x in zip(answers, ROLLOUTS)) / 3
        weighted_k = sum(brute_vote(a, x["correct"], k, [_sigmoid(s) for s in SCORES[x["id"]]])
                         for a, x in zip(answers, ROLLOUTS)) / 3
        assert result["curves"]["rm"][i] == pytest.approx(rm_k, abs=1e-12)
        assert result["curves"]["oracle"][i] == pytest.approx(oracle_k, abs=1e-12)
        assert result["curves"]["majority"][i] == pytest.approx(maj_k, abs=1e-12)
        assert result["curves"]["weighted"][i] == pytest.approx(weighted_k, abs=1e-12)
        assert result["curves"]["rm"][i] <= result["curves"]["oracle"][i] + 1e-12
    # hand-checked corners: N=1 is the mean accuracy; at N=4 the rm picks p1's "Answer: 6" and p2's tied top two (both wrong)
    assert result["curves"]["rm"][0] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    assert result["curves"]["rm"][2] == pytest.approx(0.0)
    assert result["curves"]["oracle"][2] == pytest.approx(2 / 3)
    # with two samples of p1, "5" (score 0.2) against "6" (1.5) is a 1-1 tie for majority (half credit) but "6" wins the
    # weighted vote, so the two curves part at N=2
    assert result["curves"]["weighted"][1] < result["curves"]["majority"][1]

    picks = read_jsonl(tmp_path / "picks.jsonl")
    assert [p["id"] for p in picks] == ["p1", "p2", "p3"]
    for p, x in zip(picks, ROLLOUTS):
        best = max(range(4), key=lambda j: SCORES[x["id"]][j])
        assert (p["prompt"], p["completion"], p["score"], p["correct"], p["scorer"]) == (
            x["prompt"], x["responses"][best], SCORES[x["id"]][best], x["correct"][best], "rm")
    png = (tmp_path / "bon.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    assert [p.name for p in tmp_path.glob(".bon.png*")] == []  # drawn beside it, then renamed into place


def test_another_scorer_reuses_the_cache(setup, run_main):
    src, rm, out, calls = setup
    r = run_main("best-of-n", src, "--rm", rm, "--logprob", "toy:tiny", "--out", out, "--json")
    assert r.code == 0, r.err
    assert calls == {"rm": [], "logprob": [["p1", "p2", "p3"]]}
    curves = json.loads(r.out)["curves"]
    # logprob prefers each prompt's first response: at every N the pick is the first of the subset in order
    assert curves["logprob"][0] == pytest.approx((2 / 4 + 1 / 4) / 3)
    assert curves["logprob"][2] == pytest.approx((1 + 0 + 0) / 3)
    cache = json.loads((out.parent / "bon.json.scores.json").read_text())
    assert cache[f"rm:{os.path.abspath(rm)}"] == SCORES and set(cache["logprob:toy:tiny"]) == {"p1", "p2", "p3"}
    # a third run scores nothing at all, and a new prompt is scored alone
    r = run_main("best-of-n", src, "--rm", rm, "--logprob", "toy:tiny", "--out", out, "--json")
    assert r.code == 0 and calls == {"rm": [], "logprob": [["p1", "p2", "p3"]]}
    write_jsonl(src, ROLLOUTS + [dict(ROLLOUTS[0], id="p4")])
    r = run_main("best-of-n", src, "--rm", rm, "--logprob", "toy:tiny", "--out", out, "--json")
    assert r.code == 0, r.err
    assert calls == {"rm": [["p4"]], "logprob": [["p1", "p2", "p3"], ["p4"]]}
    assert json.loads(r.out)["num_prompts"] == 4


def test_a_model_rewritten_in_place_is_scored_afresh(setup, run_main, tmp_path):
    src, _, out, calls = setup
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "model.safetensors").write_bytes(b"first weights")
    for _ in range(2):
        assert run_main("best-of-n", src, "--rm", rm, "--out", out, "--json").code == 0
    assert calls["rm"] == [["p1", "p2", "p3"]]  # the second run read the cache
    (rm / "model.safetensors").write_bytes(b"retrained weights")  # train-rm --out rm again
    assert run_main("best-of-n", src, "--rm", rm, "--out", out, "--json").code == 0
    assert calls["rm"] == [["p1", "p2", "p3"], ["p1", "p2", "p3"]]
    cache = json.loads((tmp_path / "bon.json.scores.json").read_text())
    assert [k for k in cache if k.startswith(f"rm:{os.path.abspath(rm)}")] == [best_of_n_sweep.model_key("rm", str(rm))]


def test_changed_responses_are_scored_afresh(setup, run_main):
    src, rm, out, calls = setup
    assert run_main("best-of-n", src, "--rm", rm, "--out", out, "--json").code == 0  # records what the scores are for
    changed = [dict(r) for r in ROLLOUTS]
    changed[1]["responses"] = ["Answer: 8"] + changed[1]["responses"][1:]  # p2 sampled again under the same id
    changed[1]["correct"] = [True] + changed[1]["correct"][1:]
    write_jsonl(src, changed)
    r = run_main("best-of-n", src, "--rm", rm, "--out", out, "--json")
    assert r.code == 0, r.err
    assert calls["rm"] == [["p2"]]  # p1 and p3 still come from the cache
    cache = json.loads((out.parent / "bon.json.scores.json").read_text())[f"rm:{os.path.abspath(rm)}"]
    assert cache["p1"] == SCORES["p1"] and cache["p2"] == [float(len(t)) for t in changed[1]["responses"]]
    # the same rollouts again, and the first N of them: nothing is rescored
    assert run_main("best-of-n", src, "--rm", rm, "--out", out, "--json").code == 0
    assert run_main("best-of-n", src, "--rm", rm, "--n", "2", "--out", out, "--json").code == 0
    assert calls["rm"] == [["p2"]]


def test_n_caps_the_samples(setup, run_main):
    src, rm, out, calls = setup
    r = run_main("best-of-n", src, "--rm", rm, "--n", "3", "--no-oracle", "--out", out, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["n"] == [1, 2, 3] and set(result["curves"]) == {"rm"}
    for i, k in enumerate([1, 2, 3]):
        want = sum(brute_best_of_n(SCORES[x["id"]][:3], x["correct"][:3], k) for x in ROLLOUTS) / 3
        assert result["curves"]["rm"][i] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("args,pattern", [
    (["--vote", "weighted"], r"--vote weighted needs --rm DIR"),
    (["--vote", "plurality", "--rm", "x"], r"unknown --vote 'plurality'"),
    (["--no-oracle"], r"nothing to compare"),
    (["--prm", "x", "--agg", "max"], r"unknown --agg 'max'"),
])
def test_bad_flags(setup, run_main, args, pattern):
    import re

    src, rm, out, calls = setup
    r = run_main("best-of-n", src, "--out", out, *args)
    assert r.code == 2 and re.search(pattern, r.err) and len(r.err.strip().splitlines()) == 1, r.err
    assert not out.exists()


def test_ungraded_rollouts_are_refused(tmp_path, run_main):
    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, [ROLLOUTS[0], {k: v for k, v in ROLLOUTS[1].items() if k != "correct"}])
    r = run_main("best-of-n", src, "--out", tmp_path / "bon.json")
    assert r.code == 2 and r.err.strip().startswith(f"error: {src}:2: field 'correct': missing"), r.err
    assert not (tmp_path / "bon.json").exists()


def test_nan_scores_are_refused(setup, run_main, tmp_path, monkeypatch):
    src, rm, out, calls = setup
    cache = tmp_path / "bon.json.scores.json"
    key = f"rm:{os.path.abspath(rm)}"
    cache.write_text(json.dumps({key: {**SCORES, "p1": [0.2, math.nan, -0.3, math.nan]}}))
    r = run_main("best-of-n", src, "--rm", rm, "--vote", "weighted", "--out", out)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert r.err.startswith(f"error: {cache}: 2 responses have a NaN rm score from {rm}"), r.err
    assert calls["rm"] == [] and not out.exists()
    # scored now: the error names the model folder, and nothing reaches the cache
    cache.unlink()
    monkeypatch.setattr(best_of_n_sweep, "_score_rm", lambda rollouts, path, *rest: [[1.0, math.nan, 0.5, 0.0]] + [[0.0] * 4] * (len(rollouts) - 1))
    r = run_main("best-of-n", src, "--rm", rm, "--out", out)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert r.err.startswith(f"error: {rm}: 1 of 12 responses got a NaN rm score"), r.err
    assert not cache.exists() and not out.exists()


def test_nan_counts_and_the_estimator_refuses_nan():
    from rlhfctl.eval.selection import best_of_n_accuracy

    assert best_of_n_sweep._nan_scores([[[0.1, math.nan], [0.2]], [[math.nan, math.nan]]]) == 2  # PRM step scores, per response
    with pytest.raises(ValueError, match="NaN"):
        best_of_n_accuracy([0.0, math.nan], [True, False], 1)


# --- weighted voting ----------------------------------------------------------------------------------------

def test_weighted_vote_by_hand():
    # unweighted: 9 wins 2 votes to 1; weighted: 8 (0.9) beats 9 (0.3 + 0.2)
    answers, correct, weights = ["9", "9", "8"], [False, False, True], [0.3, 0.2, 0.9]
    assert maj_at_k(answers, correct, 3) == 0.0
    assert weighted_maj_at_k(answers, correct, weights, 3) == 1.0
    # k=2: {9,9} -> 9; {9a,8} -> 8; {9b,8} -> 8
    assert weighted_maj_at_k(answers, correct, weights, 2) == pytest.approx(2 / 3)
    # an exact tie in weight splits the credit
    assert weighted_maj_at_k(["1", "2"], [True, False], [0.5, 0.5], 2) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(10))
def test_weighted_vote_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    answers = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
    gold = rng.choice(["1", "2"])
    correct = [a == gold for a in answers]
    weights = [rng.choice([0.25, 0.5, 1.0, rng.random()]) for _ in range(n)]
    for k in range(1, n + 1):
        assert weighted_maj_at_k(answers, correct, weights, k) == pytest.approx(brute_vote(answers, correct, k, weights), abs=1e-12)
        assert maj_at_k(answers, correct, k) == pytest.approx(brute_vote(answers, correct, k), abs=1e-12)


def test_weighted_vote_is_exact_up_to_16_samples_and_a_seeded_estimate_beyond():
    rng = random.Random(0)
    answers = [rng.choice(["1", "2", "3", None]) for _ in range(16)]
    correct = [a == "2" for a in answers]
    weights = [rng.random() for _ in range(16)]
    assert weighted_maj_at_k(answers, correct, weights, 8) == pytest.approx(brute_vote(answers, correct, 8, weights), abs=1e-12)
    # past exact_up_to subsets: with equal weights the weighted vote is the majority vote, known exactly
    answers, correct = answers + ["1", "2", "2", "3"], correct + [False, True, True, False]
    estimate = weighted_maj_at_k(answers, correct, [0.5] * 20, 10)  # C(20, 10) = 184756 subsets
    assert estimate == pytest.approx(maj_at_k(answers, correct, 10), abs=0.04)
    assert weighted_maj_at_k(answers, correct, [0.5] * 20, 10) == estimate
    assert weighted_maj_at_k(answers, correct, [0.5] * 20, 10, seed=1) != estimate


# --- sampling first, with --policy ---------------------------------------------------------------------------

def test_policy_samples_once_and_a_rerun_reuses_them(sft_run, tmp_path, run_main, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 3)
    out = tmp_path / "bon.json"
    args = ["best-of-n", prompts, "--policy", sft_run.path, "--n", "2", "--max-new-tokens", "8", "--out", out, "--json"]
    r = run_main(*args)
    assert r.code == 0, r.err
    sampled = tmp_path / "bon.rollouts.jsonl"
    records = read_jsonl(sampled)
    assert len(records) == 3 and all(len(x["responses"]) == 2 and len(x["correct"]) == 2 for x in records)
    assert all(max(x["num_tokens"]) <= 8 for x in records)
    first = json.loads(r.out)
    assert first["n"] == [1, 2] and set(first["curves"]) == {"oracle"}
    want = [sum(brute_best_of_n([float(c) for c in x["correct"]], x["correct"], k) for x in records) / 3 for k in (1, 2)]
    assert first["curves"]["oracle"] == pytest.approx(want)
    # the rerun never builds a generator: every prompt is already sampled
    import rlhfctl.generation.rollout as rollout_mod

    def refuse(*a, **kw):
        raise AssertionError("sampled again")

    monkeypatch.setattr(rollout_mod, "make_generator", refuse)
    before = sampled.read_bytes()
    r = run_main(*args)
    assert r.code == 0, r.err
    assert sampled.read_bytes() == before and json.loads(r.out) == first
