"""Whole train-policy runs through the CLI: resume, one-update steps that reuse the training forward,
PPO with the RM as critic, two CPU ranks. (The functions of experience.py and policy/update.py are
tested one by one in test_policy.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import read_jsonl
from rlhfctl.training.loop import MEMORY_KEYS

def crash_after_checkpoint(run, lost_step: int) -> None:
    """What a kill after the previous checkpoint leaves: no step-``lost_step`` checkpoint, no final model."""
    shutil.rmtree(run / "checkpoints" / f"step-{lost_step}")
    for f in run.iterdir():
        if f.is_file() and f.name not in ("run.json", "metrics.jsonl"):
            f.unlink()


def _grpo_args(toy_dir, sft_run, rm, out, *extra):
    return ["train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--rm", rm, "--out", out, "--algo", "grpo",
            "--n", "2", "--prompts-per-step", "2", "--max-new-tokens", "10", "--seed", "3", *extra]


def test_resume_gives_the_same_next_metrics(run_main, toy_dir, sft_run, rm_run, tmp_path):
    from safetensors.torch import load_file

    args = ["--max-steps", "4", "--save-every", "2"]
    r = run_main(*_grpo_args(toy_dir, sft_run, rm_run, tmp_path / "a", *args))
    assert r.code == 0, r.err
    r = run_main(*_grpo_args(toy_dir, sft_run, rm_run, tmp_path / "b", *args))
    assert r.code == 0, r.err
    unbroken = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert [m["step"] for m in unbroken] == [1, 2, 3, 4]
    assert all(m["grad_norm"] > 0 for m in unbroken)  # the RM's rewards really move the policy
    assert unbroken[-1]["kl"] != 0.0
    b = tmp_path / "b"
    crash_after_checkpoint(b, lost_step=4)
    r = run_main(*_grpo_args(toy_dir, sft_run, rm_run, b, *args, "--resume"))
    assert r.code == 0, r.err
    assert "resuming from step 2" in r.err
    resumed = read_jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]  # steps 3-4 logged once, again
    for got, want in zip(resumed[2:], unbroken[2:]):
        assert got.keys() == want.keys()
        for k, v in want.items():
            if k not in {"seconds", *MEMORY_KEYS}:
                assert got[k] == pytest.approx(v, abs=1e-6), (want["step"], k)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert json.loads((b / "rlhfctl.json").read_text())["results"] == json.loads((tmp_path / "a" / "rlhfctl.json").read_text())["results"]


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_one_update_reads_pi_old_off_its_own_forward_with_the_same_results(algo, run_main, toy_dir, sft_run, rm_run, tmp_path,
                                                                             monkeypatch):
    """One epoch, one mini-batch: π_old is the update's own forward pass, detached, and the KL penalty and
    advantages are computed there; metrics and weights equal those of a run with a separate π_old pass."""
    from safetensors.torch import load_file

    import rlhfctl.training.experience as experience
    import rlhfctl.training.policy.update  # noqa: F401  (imported before the patch: it keeps the real functions, so only collect's calls count)

    calls = {"policy+ref": 0, "critic": 0}
    real_logprobs, real_values = experience.response_logprobs, experience.response_values

    def logprobs(*args, **kwargs):
        calls["policy+ref"] += 1
        return real_logprobs(*args, **kwargs)

    def values(*args, **kwargs):
        calls["critic"] += 1
        return real_values(*args, **kwargs)

    monkeypatch.setattr(experience, "response_logprobs", logprobs)
    monkeypatch.setattr(experience, "response_values", values)
    args = ["--max-steps", "2", "--save-every", "10", "--algo", algo]  # the last --algo wins
    r = run_main(*_grpo_args(toy_dir, sft_run, rm_run, tmp_path / "reused", *args))
    assert r.code == 0, r.err
    critic = 2 if algo == "ppo" else 0  # PPO's V_old: a no-grad pass in collect either way
    assert calls == {"policy+ref": 2, "critic": critic}  # in collect: the reference only, once per step
    monkeypatch.setattr(experience, "reuses_update_forward", lambda *a: False)
    calls.update({"policy+ref": 0, "critic": 0})
    r = run_main(*_grpo_args(toy_dir, sft_run, rm_run, tmp_path / "separate", *args))
    assert r.code == 0, r.err
    assert calls == {"policy+ref": 4, "critic": critic}
    reused, separate = read_jsonl(tmp_path / "reused" / "metrics.jsonl"), read_jsonl(tmp_path / "separate" / "metrics.jsonl")
    assert any(m["grad_norm"] > 0 for m in separate)
    for got, want in zip(reused, separate, strict=True):
        assert got.keys() == want.keys()
        for k, v in want.items():
            if k not in {"seconds", *MEMORY_KEYS}:
                assert got[k] == pytest.approx(v, abs=1e-6), (want["step"], k)
    wa, wb = load_file(str(tmp_path / "reused" / "model.safetensors")), load_file(str(tmp_path / "separate" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_reuses_update_forward_only_for_one_update_on_the_batch():
    from types import SimpleNamespace

    from rlhfctl.training.experience import reuses_update_forward

    def cfg(**kw):
        return SimpleNamespace(**{"mini_batch_size": None, "ppo_epochs": 1, "critic_warmup_steps": 0, **kw})

    assert reuses_update_forward(cfg(), rows=8, world=1)
    assert reuses_update_forward(cfg(mini_batch_size=16), rows=8, world=2)  # 8 per rank: one mini-batch
    assert not reuses_update_forward(cfg(mini_batch_size=8), rows=8, world=2)  # 4 per rank: two
    assert not reuses_update_forward(cfg(ppo_epochs=2), rows=8, world=1)
    assert not reuses_update_forward(cfg(critic_warmup_steps=3), rows=8, world=1)  # warm-up steps train the critic alone


def test_ppo_with_the_rm_as_critic(run_main, toy_dir, sft_run, rm_run, tmp_path):
    out = tmp_path / "ppo"
    r = run_main("train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--rm", rm_run, "--verifier", "math",
                 "--rm-weight", "0.5", "--out", out, "--algo", "ppo", "--critic-init", "rm", "--n", "2", "--prompts-per-step", "2",
                 "--max-new-tokens", "8", "--max-steps", "2", "--ppo-epochs", "2", "--mini-batch-size", "2", "--json")
    assert r.code == 0, r.err
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"value_loss", "critic_grad_norm", "policy_loss", "rm_score_mean", "accuracy"} <= m.keys()
        assert m["reward_raw_mean"] == pytest.approx(m["accuracy"] + 0.5 * m["rm_score_mean"], abs=1e-5)
    options = json.loads((out / "rlhfctl.json").read_text())["options"]
    assert (options["critic_init"], options["rm_weight"], options["kl_coef"]) == ("rm", 0.5, 0.005)


@pytest.mark.slow
def test_two_cpu_ranks_finish(toy_dir, sft_run, tmp_path, cli_env):
    """`accelerate launch` with two CPU processes, one GRPO step: exit 0, one metrics line, one summary."""
    from conftest import launch_two_cpu_ranks

    out = tmp_path / "ddp"
    proc = launch_two_cpu_ranks(cli_env, "train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--out", out,
                                "--algo", "grpo", "--verifier", "math", "--n", "2", "--prompts-per-step", "2",
                                "--max-new-tokens", "8", "--max-steps", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # only rank 0 prints
    assert summary["algo"] == "grpo" and summary["steps"] == 1
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1]
    assert metrics[0]["response_length"] >= 1 and (out / "rlhfctl.json").is_file()
    assert (out / "checkpoints" / "step-1" / "model.safetensors").is_file()
