"""train-sft, train-rm and train-policy under accelerate's FSDP version 2, on two CPU ranks.

accelerate picks FSDP only where there is an accelerator, so these runs go
through `tests/fsdp_on_cpu.py`, which sets accelerate's state to FSDP with
the plugin of `examples/accelerate/fsdp.yaml` (version 2) and then runs the
CLI: the code path of a GPU run under that file, bar the device. Each run is
compared with an independent one: one process for train-sft and train-rm,
two DDP ranks (the same samples, rank by rank) for train-policy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SFT_ARGS, launch_two_cpu_ranks, read_jsonl
from test_policy_runs import crash_after_checkpoint
from test_sft import _assert_close_on_average

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "fsdp_on_cpu.py"
FSDP_CONFIG = ROOT / "examples" / "accelerate" / "fsdp.yaml"


def _fsdp(cli_env, *args) -> subprocess.CompletedProcess:
    """Under examples/accelerate/fsdp.yaml (FSDP version 2), as a GPU user would launch it."""
    return launch_two_cpu_ranks(cli_env, *args, launcher=("--config_file", str(FSDP_CONFIG)), entry=(str(HARNESS),), timeout=240)


def _ddp(cli_env, *args) -> subprocess.CompletedProcess:
    return launch_two_cpu_ranks(cli_env, *args, timeout=240)


FULL_WEIGHTS_CHECK = """
import json
import os
import sys
import torch
sys.path.insert(0, {tests!r})
import fsdp_on_cpu  # noqa: F401 (points accelerate at FSDP)
from torch.distributed.tensor import DTensor
from rlhfctl.models import load_causal_lm
from rlhfctl.training.scale import full_weights, make_accelerator

acc = make_accelerator(False)
model = load_causal_lm("toy:tiny", seed=0)
model, _ = acc.prepare(model, torch.optim.AdamW(model.parameters()))
ids = torch.tensor([[1, 5, 6, 7]])


def sharded_after_forward():
    # Which weights a training forward pass leaves sharded: each FSDP unit's own resharding setting.
    out = model(input_ids=ids)
    sharded = sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor))
    out.logits.sum().backward()
    return sharded


seen = {{"first": sharded_after_forward()}}
with full_weights(acc, model):
    seen["inside"] = sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor))
    with torch.no_grad():
        for _ in range(1 + 3 * acc.process_index):  # rank 1 makes more passes than rank 0
            model(input_ids=ids)
    seen["after the passes"] = sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor))
seen["on leaving"] = sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor))
seen["again"] = sharded_after_forward()
seen["all"] = sorted(n for n, _ in model.named_parameters())
with open({out!r} + f"/seen-{{acc.process_index}}.json", "w") as f:  # the ranks share stdout: a file each
    json.dump(seen, f)
acc.wait_for_everyone()
torch.distributed.destroy_process_group()  # a rank that exits while gloo still runs in the other may abort it
os._exit(0)  # and so may the interpreter's teardown of threads gloo left joinable (as rlhfctl.cli leaves)
"""


def test_full_weights_keeps_units_whole_then_restores_resharding(cli_env, tmp_path):
    script = tmp_path / "check.py"
    script.write_text(FULL_WEIGHTS_CHECK.format(tests=str(ROOT / "tests"), out=str(tmp_path)))
    proc = launch_two_cpu_ranks(cli_env, launcher=("--config_file", str(FSDP_CONFIG)), entry=(str(script),), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"seen-{rank}.json").read_text())
        assert "model.layers.0.self_attn.q_proj.weight" in seen["first"]  # decoder layers reshard after forward...
        assert set(seen["first"]) < set(seen["all"])  # ...and some unit (accelerate's lm_head/norm unit) does not
        assert seen["inside"] == seen["after the passes"] == []  # every weight whole, however many passes
        assert seen["on leaving"] == seen["all"]  # all sharded again
        assert seen["again"] == seen["first"], rank  # each unit's own setting is back


def test_train_sft_matches_one_process_and_resumes(cli_env, toy_dir, sft_run, tmp_path):
    out = tmp_path / "fsdp"
    proc = _fsdp(cli_env, "train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no shared prefix (FSDP wraps every forward pass)" in proc.stderr  # proof that FSDP, not DDP, ran
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for two, one in zip(metrics, sft_run.metrics):
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-4), two["step"]
        assert two["tokens"] == one["tokens"]
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4), two["step"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]
    _assert_close_on_average(out, sft_run.path, mean_atol=1e-4)  # the full state dict, gathered on rank 0
    # Killed after the step-4 checkpoint: --resume loads its weights and the gathered AdamW state into the shards.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    crash_after_checkpoint(resumed, 6)
    proc = _fsdp(cli_env, "train-sft", toy_dir / "sft.jsonl", "--out", resumed, *SFT_ARGS, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 4" in proc.stderr
    again = read_jsonl(resumed / "metrics.jsonl")
    assert [m["step"] for m in again] == [1, 2, 3, 4, 5, 6]
    for g, w in zip(again, metrics):  # step 6 follows an AdamW update made from the restored moments
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6) and g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5)
    _assert_close_on_average(resumed, out, mean_atol=1e-7)


def test_train_rm_matches_one_process(cli, cli_env, rm_run, sft_run, tmp_path):
    prefs = rm_run.parent / "prefs.jsonl"
    args = ["--model", sft_run.path, "--max-steps", "3", "--batch-size", "8", "--seed", "0", "--json"]
    one = cli("train-rm", prefs, "--out", tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr[-3000:]
    proc = _fsdp(cli_env, "train-rm", prefs, "--out", tmp_path / "fsdp", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = read_jsonl(tmp_path / "fsdp" / "metrics.jsonl"), read_jsonl(tmp_path / "one" / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-5), g["step"]
    results = [json.loads((tmp_path / d / "rlhfctl.json").read_text())["results"] for d in ("fsdp", "one")]
    assert results[0]["pair_accuracy"] == results[1]["pair_accuracy"]  # held-out scoring through the sharded model
    assert results[0]["reward_mean"] == pytest.approx(results[1]["reward_mean"], abs=1e-5)
    _assert_close_on_average(tmp_path / "fsdp", tmp_path / "one", mean_atol=1e-5)


@pytest.mark.parametrize("algo, extra", [
    ("grpo", []),
    ("ppo", ["--ppo-epochs", "2", "--mini-batch-size", "4"]),
    ("grpo", ["--lora-r", "4"]),  # the reference is the policy with its adapters off, inside the gathered weights
], ids=["grpo", "ppo", "grpo-lora"])
def test_train_policy_matches_ddp(cli_env, toy_dir, sft_run, rm_run, tmp_path, algo, extra):
    """Ranks decode for different numbers of steps; with FSDP's units kept gathered meanwhile, nothing waits for ever,
    and every step equals the DDP run's (same seeds, so the same samples on each rank)."""
    args = ["train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--algo", algo, "--verifier", "math",
            "--rm", rm_run, "--rm-weight", "0.5", "--n", "2", "--prompts-per-step", "4", "--max-new-tokens", "12",
            "--max-steps", "2", "--eval-data", toy_dir / "test.jsonl", "--eval-every", "1", "--eval-max-prompts", "4",
            "--json", *extra]
    fsdp = _fsdp(cli_env, *args, "--out", tmp_path / "fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    ddp = _ddp(cli_env, *args, "--out", tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    got, want = read_jsonl(tmp_path / "fsdp" / "metrics.jsonl"), read_jsonl(tmp_path / "ddp" / "metrics.jsonl")
    assert [m["step"] for m in got] == [0, 1, 2]
    assert all(m["reward_raw_std"] > 0 for m in got[1:])  # rewards vary, so every step updates the policy
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in ("reward_raw_mean", "response_length", "eval_pass@1", "kl", "policy_loss", "grad_norm", "value_loss"):
            if key in w:
                assert g[key] == pytest.approx(w[key], abs=1e-5), (g["step"], key)
    _assert_close_on_average(tmp_path / "fsdp", tmp_path / "ddp", mean_atol=1e-6)


def test_ppo_resumes_under_fsdp(cli_env, toy_dir, sft_run, rm_run, tmp_path):
    """Both optimizers (policy and critic) come back from the gathered state, sharded afresh."""
    args = ["train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--algo", "ppo", "--verifier", "math",
            "--rm", rm_run, "--rm-weight", "0.5", "--n", "2", "--prompts-per-step", "4", "--max-new-tokens", "12",
            "--max-steps", "3", "--save-every", "1", "--json"]
    whole = _fsdp(cli_env, *args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    crash_after_checkpoint(tmp_path / "resumed", 3)
    resumed = _fsdp(cli_env, *args, "--out", tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stderr
    got, want = read_jsonl(tmp_path / "resumed" / "metrics.jsonl"), read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3]
    for key in ("reward_raw_mean", "policy_loss", "value_loss", "grad_norm", "critic_grad_norm", "kl"):
        assert got[2][key] == pytest.approx(want[2][key], abs=1e-6), key
    _assert_close_on_average(tmp_path / "resumed", tmp_path / "whole", mean_atol=1e-7)


def test_train_policy_refuses_fsdp_version_1(cli_env, toy_dir, sft_run, tmp_path):
    proc = launch_two_cpu_ranks(cli_env, "train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--out", tmp_path / "v1",
                                "--verifier", "math", "--max-steps", "1", entry=(str(HARNESS),), env={"FSDP_ON_CPU_VERSION": "1"},
                                timeout=240)
    assert proc.returncode != 0  # each rank exits with 2; the launcher reports the failed ranks
    assert "error: train-policy does not run under FSDP version 1" in proc.stderr and "fsdp_version: 2" in proc.stderr
    assert "rlhfctl/training" not in proc.stderr  # a one-line error, no stack trace from the ranks
    assert not (tmp_path / "v1" / "rlhfctl.json").exists()
