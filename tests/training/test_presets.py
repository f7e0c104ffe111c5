"""`--preset paper` on train-policy: every method knob takes the paper's code value, a flag the user gives wins,
and the preset and the resolved knobs reach the run's options (manifest and run.json)."""

from __future__ import annotations

import pytest

from rlhfctl.training.loop import manifest_options

# The paper's code (the authors' OpenRLHF fork): no advantage whitening, per-sequence token means,
# log-ratio clamped at ±0.5, group std floored at 1/3, normalised rewards clipped below at -0.4.
PAPER = {"whiten_advantages": False, "loss_agg": "seq-mean-token-mean", "kl_clip": 0.5,
         "reward_std_floor": pytest.approx(1 / 3), "reward_clip_range": (-0.4, 5.0), "neg_reward_scale": 1.0}
RLHFCTL = {"whiten_advantages": True, "loss_agg": "token-mean", "kl_clip": 10.0, "reward_std_floor": 0.0,
           "reward_clip_range": None, "neg_reward_scale": 1.0}


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Runs train-policy's command up to the `PolicyConfig` it builds; returns the config's manifest options."""
    import rlhfctl.training.policy.run as run_module

    seen = {}

    def fake_run(config):
        seen["options"] = manifest_options(config)
        return {}

    monkeypatch.setattr(run_module, "run", fake_run)
    return seen


def _train_policy(run_main, tmp_path, *extra):
    return run_main("train-policy", tmp_path / "p.jsonl", "--model", "toy:tiny", "--out", tmp_path / "o", "--verifier", "math", "--algo", "ppo", *extra)


def _knobs(options):
    return {k: tuple(options[k]) if isinstance(options[k], list) else options[k] for k in PAPER}


def test_without_a_preset_the_knobs_keep_rlhfctl_defaults(run_main, captured, tmp_path):
    r = _train_policy(run_main, tmp_path)
    assert r.code == 0, r.err
    assert _knobs(captured["options"]) == RLHFCTL
    assert captured["options"]["preset"] is None


def test_preset_paper_sets_each_knob_to_the_paper_value(run_main, captured, tmp_path):
    r = _train_policy(run_main, tmp_path, "--preset", "paper")
    assert r.code == 0, r.err
    options = captured["options"]
    assert options["preset"] == "paper"
    for knob, want in PAPER.items():
        assert _knobs(options)[knob] == want, knob


@pytest.mark.parametrize("flags, knob, want", [
    (["--whiten-advantages"], "whiten_advantages", True),
    (["--loss-agg", "token-mean"], "loss_agg", "token-mean"),
    (["--kl-clip", "10"], "kl_clip", 10.0),
    (["--reward-std-floor", "0"], "reward_std_floor", 0.0),
    (["--reward-clip-range", "-1,1"], "reward_clip_range", (-1.0, 1.0)),
    (["--neg-reward-scale", "0.5"], "reward_clip_range", None),  # the other form of the step replaces the preset's range
])
def test_an_explicit_flag_wins_over_the_preset(flags, knob, want, run_main, captured, tmp_path):
    r = _train_policy(run_main, tmp_path, "--preset", "paper", *flags)
    assert r.code == 0, r.err
    knobs = _knobs(captured["options"])
    assert knobs[knob] == want
    others = {k: v for k, v in PAPER.items() if k != knob and not (knob == "reward_clip_range" and k == "neg_reward_scale")}
    assert {k: knobs[k] for k in others} == others


def test_an_unknown_preset_is_refused(run_main, captured, tmp_path):
    r = _train_policy(run_main, tmp_path, "--preset", "trl")
    assert r.code != 0
    assert "unknown --preset 'trl'" in r.err
    assert "options" not in captured


def test_no_whiten_advantages_without_a_preset_and_both_forms_refused(run_main, captured, tmp_path):
    r = _train_policy(run_main, tmp_path, "--no-whiten-advantages")
    assert r.code == 0, r.err
    assert captured["options"]["whiten_advantages"] is False and captured["options"]["loss_agg"] == "token-mean"
    captured.clear()
    r = _train_policy(run_main, tmp_path, "--whiten-advantages", "--no-whiten-advantages")
    assert r.code != 0 and "give one" in r.err and "options" not in captured
