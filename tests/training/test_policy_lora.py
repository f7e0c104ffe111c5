"""train-policy with LoRA adapters: resume, the base as reference, a LoRA critic (peft)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import read_jsonl
from test_policy_runs import _grpo_args, crash_after_checkpoint
from rlhfctl.training.loop import MEMORY_KEYS


def test_lora_grpo_resume_gives_the_same_next_metrics(run_main, toy_dir, sft_run, rm_run, tmp_path):
    """GRPO on LoRA adapters: the reference is the policy with adapters off (KL moves once they train),
    the checkpoints hold the adapters only, and a resumed run logs what the unbroken run did."""
    from safetensors.torch import load_file

    pytest.importorskip("peft")
    args = ["--max-steps", "4", "--save-every", "2", "--lora-r", "4", "--lr", "3e-2"]
    a = tmp_path / "a"
    r = run_main(*_grpo_args(toy_dir, sft_run, rm_run, a, *args))
    assert r.code == 0, r.err
    unbroken = read_jsonl(a / "metrics.jsonl")
    assert unbroken[0]["kl"] == 0.0 and unbroken[-1]["kl"] != 0.0  # the adapters start as a no-op, then move away
    assert all(".lora_" in k for k in load_file(str(a / "checkpoints" / "step-4" / "model.safetensors")))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    crash_after_checkpoint(b, lost_step=4)
    r = run_main(*_grpo_args(toy_dir, sft_run, rm_run, b, *args, "--resume"))
    assert r.code == 0, r.err
    assert "resuming from step 2" in r.err
    resumed = read_jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed[2:], unbroken[2:]):
        for k, v in want.items():
            if k not in {"seconds", *MEMORY_KEYS}:
                assert got[k] == pytest.approx(v, abs=1e-6), (want["step"], k)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert not any("lora" in k for k in wa)  # merged: a plain causal LM
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_ppo_with_a_lora_critic_gradient_checkpointing_and_bf16(run_main, toy_dir, sft_run, rm_run, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "ppo-lora"
    r = run_main("train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--rm", rm_run, "--out", out, "--algo", "ppo",
                 "--n", "2", "--prompts-per-step", "2", "--max-new-tokens", "8", "--max-steps", "2", "--lora-r", "4",
                 "--gradient-checkpointing", "--bf16", "--json")
    assert r.code == 0, r.err
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["value_loss"]) and math.isfinite(m["policy_loss"]) for m in metrics)
    critic = {k for k in load_checkpoint_weights(out / "checkpoints" / "step-2") if k.startswith("critic::")}
    assert critic and {k for k in critic if ".lora_" not in k} == {"critic::model.score.weight", "critic::model.score.bias"}
    options = json.loads((out / "rlhfctl.json").read_text())["options"]
    assert (options["lora_r"], options["gradient_checkpointing"], options["bf16"]) == (4, True, True)
    assert r.err.count("runs eager attention") == 2  # bf16 on a CPU: the policy and the critic


def load_checkpoint_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))
