"""The toy task's calibration, end to end at the defaults (slow: about 5 minutes on 2 CPU cores).

The later stages need an SFT policy whose errors are the taught slips: greedy
pass@1 between 0.30 and 0.70, pass@16 well above it, and an outcome reward
that can teach the policy to stop slipping.
"""

import json

import pytest

from conftest import read_jsonl


@pytest.mark.slow
def test_default_sft_policy_slips_by_choice_and_grpo_fixes_it(tmp_path, run_main):
    data, sft, grpo = tmp_path / "toy", tmp_path / "sft", tmp_path / "grpo"
    assert run_main("toy-data", data, "--test", "200").code == 0
    assert run_main("train-sft", data / "sft.jsonl", "--model", "toy:small", "--out", sft).code == 0

    assert run_main("eval", "--model", sft, "--data", data / "test.jsonl", "--out", tmp_path / "greedy.json").code == 0
    greedy = json.loads((tmp_path / "greedy.json").read_text())["pass@1"]
    assert 0.30 <= greedy <= 0.70
    assert run_main("eval", "--model", sft, "--data", data / "test.jsonl", "--n", "16", "--temperature", "1",
                    "--out", tmp_path / "sampled.json").code == 0
    sampled = json.loads((tmp_path / "sampled.json").read_text())
    assert sampled["pass@16"] >= sampled["pass@1"] + 0.25

    r = run_main("train-policy", data / "train.jsonl", "--model", sft, "--out", grpo, "--algo", "grpo",
                 "--verifier", "math", "--max-steps", "10", "--eval-data", data / "test.jsonl", "--eval-every", "10")
    assert r.code == 0, r.err
    evals = [m["eval_pass@1"] for m in read_jsonl(grpo / "metrics.jsonl") if "eval_pass@1" in m]
    assert len(evals) == 2 and evals[0] == pytest.approx(greedy, abs=0.02)
    assert evals[1] >= evals[0] + 0.20  # ten default GRPO steps (8 prompts x 8 responses each)
