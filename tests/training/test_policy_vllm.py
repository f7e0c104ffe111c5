"""train-policy with a colocated vLLM engine, on the CPU against a fake `vllm` (tests/fake_vllm.py).

The fake runs the engine's own copy of the weights, so a weight update that
does not happen shows up as a gap between the engine's log-probs and the
policy's: the `vllm_logprob_abs_diff` metric these tests read.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

import fake_vllm
from conftest import read_jsonl
from rlhfctl.errors import ConfigError


@pytest.fixture
def vllm(monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)
    return fake_vllm.install(monkeypatch)


@pytest.fixture
def varied_rewards(monkeypatch):
    """Rewards that differ within a group (a fresh toy model solves nothing), so every step moves the policy."""
    from rlhfctl.training import experience

    def rewards_for(prompts, samples, config, rm):
        return torch.tensor([float(len(s.text) % 3) for group in samples for s in group]), {}

    monkeypatch.setattr(experience, "rewards_for", rewards_for)


def _args(toy_dir, out, *extra):
    return ["train-policy", toy_dir / "train.jsonl", "--model", "toy:tiny", "--out", out, "--verifier", "math", "--n", "2",
            "--prompts-per-step", "2", "--max-steps", "2", "--max-new-tokens", "8", "--lr", "1e-2", "--save-every", "10",
            "--eval-data", toy_dir / "test.jsonl", "--eval-every", "1", "--eval-max-prompts", "3", *extra]


def _names(engine) -> list[str]:
    return [c[0] if c[0] != "wake_up" else f"wake_up:{','.join(c[1])}" for c in engine.calls]


def test_engine_sleeps_while_the_policy_trains_and_samples_from_the_updated_policy(vllm, varied_rewards, run_main, toy_dir, tmp_path):
    r = run_main(*_args(toy_dir, tmp_path / "run", "--backend", "vllm", "--gpu-memory-utilization", "0.25"))
    assert r.code == 0, r.err
    assert "generation: vllm" in r.err
    (engine,) = vllm.ENGINES
    init = engine.calls[0][1]
    assert init["enable_sleep_mode"] and init["logprobs_mode"] == "processed_logprobs" and init["gpu_memory_utilization"] == 0.25
    sync = ["sleep", "wake_up:weights", "apply_model", "wake_up:kv_cache", "reset_prefix_cache"]
    assert _names(engine) == [
        "init", "apply_model", "reset_prefix_cache",  # the engine starts from the policy's weights
        "generate",  # eval at step 0
        "generate", *sync, "generate",  # step 1: rollouts, update, eval
        "generate", *sync, "generate",  # step 2
    ]
    rows = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if row["step"] > 0]
    assert len(rows) == 2 and all(row["vllm_logprob_abs_diff"] < 1e-4 for row in rows), rows
    assert all(row["vllm_logprob_max_abs_diff"] >= row["vllm_logprob_abs_diff"] for row in rows)
    hf_run = run_main(*_args(toy_dir, tmp_path / "hf", "--backend", "hf"))
    assert hf_run.code == 0, hf_run.err
    assert not any(k.startswith("vllm_") for row in read_jsonl(tmp_path / "hf" / "metrics.jsonl") for k in row)


def test_the_logprob_gap_shows_an_engine_that_missed_an_update(vllm, varied_rewards, run_main, toy_dir, tmp_path, monkeypatch):
    from rlhfctl.generation.vllm import VLLMGenerator

    real = VLLMGenerator.update_weights
    updates = []

    def only_the_first(self, model):
        updates.append(1)
        if len(updates) == 1:
            real(self, model)
        else:
            self.wake_up()

    monkeypatch.setattr(VLLMGenerator, "update_weights", only_the_first)
    r = run_main(*_args(toy_dir, tmp_path / "run", "--backend", "vllm"))
    assert r.code == 0, r.err
    step1, step2 = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if row["step"] > 0]
    assert step1["vllm_logprob_abs_diff"] < 1e-4  # the engine still has the weights the policy sampled with
    assert step2["vllm_logprob_abs_diff"] > 1e-3  # it samples from the step-0 policy: off by one update


def test_a_stuck_engine_stops_the_run_with_an_error(monkeypatch, varied_rewards, run_main, toy_dir, tmp_path):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    vllm = fake_vllm.install(monkeypatch, hang_on_apply=2)  # the update after step 1 never returns
    try:
        r = run_main(*_args(toy_dir, tmp_path / "run", "--backend", "vllm", "--vllm-sync-timeout", "0.5"))
    finally:
        vllm.RELEASE.set()
    assert r.code == 1
    assert r.err.strip().splitlines()[-1].startswith("error: vLLM weight update did not finish in 0.5 s: the engine looks stuck")


@pytest.mark.parametrize("args, pattern", [
    (["--backend", "vllm"], r"--backend vllm needs vLLM, which is not installed: pip install 'rlhfctl\[vllm\]'"),
    (["--backend", "vllm2"], r"unknown --backend 'vllm2': choose one of auto, hf, vllm"),
    (["--gpu-memory-utilization", "0"], r"--gpu-memory-utilization must be in \(0, 1\], got 0.0"),
    (["--vllm-sync-timeout", "0"], r"--vllm-sync-timeout must be positive, got 0.0"),
], ids=["missing-vllm", "backend", "memory", "timeout"])
def test_bad_generation_flags_fail_before_the_run_folder_exists(args, pattern, run_main, toy_dir, tmp_path, monkeypatch):
    import re

    monkeypatch.setitem(sys.modules, "vllm", None)
    r = run_main(*_args(toy_dir, tmp_path / "run", *args))
    assert r.code == 2 and re.fullmatch("error: " + pattern, r.err.strip()), r.err
    assert not (tmp_path / "run").exists()


def test_auto_generates_a_lora_policy_with_hf(vllm, monkeypatch):
    from rlhfctl.generation.hf import HFGenerator
    from rlhfctl.models import load_causal_lm, load_tokenizer
    from rlhfctl.training.policy.config import PolicyConfig
    from rlhfctl.training.policy.engine import policy_generator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    policy, one = load_causal_lm("toy:tiny"), SimpleNamespace(num_processes=1, is_main_process=True)
    assert policy_generator(PolicyConfig("p", "toy:tiny", "o"), policy, load_tokenizer("toy:tiny"), one).name == "vllm"
    policy.peft_config = {"default": object()}
    assert isinstance(policy_generator(PolicyConfig("p", "toy:tiny", "o"), policy, load_tokenizer("toy:tiny"), one), HFGenerator)
    with pytest.raises(ConfigError, match="not LoRA adapters"):
        policy_generator(PolicyConfig("p", "toy:tiny", "o", backend="vllm"), policy, load_tokenizer("toy:tiny"), one)


def test_several_ranks_generate_with_hf_and_refuse_vllm(vllm):
    from rlhfctl.training.policy.config import PolicyConfig
    from rlhfctl.training.policy.engine import policy_backend

    ranks = SimpleNamespace(num_processes=2)
    assert policy_backend(PolicyConfig("p", "toy:tiny", "o", backend="auto"), ranks) == "hf"
    assert policy_backend(PolicyConfig("p", "toy:tiny", "o", backend="hf"), ranks) == "hf"
    with pytest.raises(ConfigError, match=r"runs in one process .* not 2 ranks"):
        policy_backend(PolicyConfig("p", "toy:tiny", "o", backend="vllm"), ranks)
    assert policy_backend(PolicyConfig("p", "toy:tiny", "o", backend="vllm"), SimpleNamespace(num_processes=1)) == "vllm"


def test_engine_logprob_gap_by_hand():
    from rlhfctl.generation.base import Sample
    from rlhfctl.training.experience import engine_logprob_gap

    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    samples = [[Sample("a", [1, 2, 3], "length", [-1.1, -2.0, -2.7])], [Sample("b", [2], "stop", [-0.5])]]
    gap = engine_logprob_gap(samples, old, mask)
    assert gap["vllm_logprob_abs_diff"] == pytest.approx((0.1 + 0.0 + 0.3 + 0.0) / 4)
    assert gap["vllm_logprob_max_abs_diff"] == pytest.approx(0.3)
    assert engine_logprob_gap([[Sample("a", [1], "length")]], old[:1, :1], mask[:1, :1]) == {}  # the HF backend reports none
