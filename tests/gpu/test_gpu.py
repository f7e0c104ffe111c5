"""The commands on a CUDA GPU (marked ``gpu``: deselected by default; `tests/gpu/run.sh` runs them).

Each test drives the real CLI on the toy task, so what runs is what a user
runs on a GPU machine: training placed by accelerate, inference on the GPU
(`rlhfctl.models.inference_device`), bf16, gradient checkpointing and LoRA.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import read_jsonl

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SFT_GPU = ["--model", "toy:tiny", "--max-steps", "20", "--batch-size", "16", "--save-every", "1000", "--seed", "0", "--lr", "3e-3"]


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


def _responses(path) -> list[list[str]]:
    return [r["responses"] for r in read_jsonl(path)]


def test_hf_backend_greedy_equals_model_generate_on_the_gpu():
    """The decode loop against `generate` on the card, with this machine's transformers: a GPU-vs-CPU
    comparison alone cannot see a loop that is wrong on both (as under transformers 5.17, where the KV
    cache went in under a keyword that release does not take)."""
    from rlhfctl.generation.base import SamplingParams
    from rlhfctl.generation.hf import _decode_loop
    from rlhfctl.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer("toy:tiny")
    model = load_causal_lm("toy:tiny", seed=0).to("cuda").eval()
    prompts = ["Compute 1+2.\n", "Compute 31+5+30-49+38.\n", "Compute 12-3+4.\n"]
    rows = [tok(p)["input_ids"] for p in prompts]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=16)
    eos = tok.eos_token_id
    ours = _decode_loop(model, rows, params, tok.pad_token_id, frozenset({eos}), torch.Generator(device="cuda").manual_seed(0), "cuda")
    enc = tok(prompts, return_tensors="pt", padding=True).to("cuda")
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    for (tokens, _), want in zip(ours, ref[:, enc.input_ids.shape[1]:].tolist()):
        assert tokens and tokens == want[:len(tokens)]


def test_rollout_greedy_on_the_gpu_matches_the_cpu(cli, cli_env, sft_run, toy_dir, tmp_path):
    args = ["rollout", toy_dir / "test.jsonl", "--model", sft_run.path, "--n", "1", "--temperature", "0",
            "--max-new-tokens", "48"]
    gpu = cli(*args, "--out", tmp_path / "gpu.jsonl")
    cpu = cli(*args, "--out", tmp_path / "cpu.jsonl", env=dict(cli_env, RLHFCTL_DEVICE="cpu"))
    assert gpu.returncode == 0 and cpu.returncode == 0, gpu.stderr + cpu.stderr
    same = sum(a == b for a, b in zip(_responses(tmp_path / "gpu.jsonl"), _responses(tmp_path / "cpu.jsonl")))
    assert same >= len(_responses(tmp_path / "cpu.jsonl")) - 1  # fp32 both sides; a near-tie may flip one argmax


def test_eval_with_sampling_on_the_gpu(cli, sft_run, toy_dir, tmp_path):
    proc = cli("eval", "--model", sft_run.path, "--data", toy_dir / "test.jsonl", "--n", "4", "--out", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert 0.0 <= result["pass@1"] <= result["pass@4"] <= 1.0


def test_train_sft_bf16_learns_and_saves_a_plain_folder(cli, toy_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    proc = cli("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_GPU, "--bf16")
    assert proc.returncode == 0, proc.stderr
    losses = _losses(out)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 20, 21]])).logits).all()


def test_gradient_checkpointing_gives_the_same_losses(cli, toy_dir, tmp_path):
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    for out, extra in ((plain, []), (ckpt, ["--gradient-checkpointing"])):
        proc = cli("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_GPU, "--max-steps", "5", *extra)
        assert proc.returncode == 0, proc.stderr
    assert _losses(ckpt) == pytest.approx(_losses(plain), rel=1e-3)


def test_lora_sft_on_the_gpu_saves_merged_weights(cli, toy_dir, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    proc = cli("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_GPU, "--bf16", "--lora-r", "8")
    assert proc.returncode == 0, proc.stderr
    assert all(math.isfinite(x) for x in _losses(out))
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain folder: no peft needed to load it
    assert not any("lora" in name for name in model.state_dict())


def test_train_rm_on_the_gpu(cli, toy_dir, tmp_path):
    out = tmp_path / "rm"
    proc = cli("train-rm", toy_dir / "prefs_style.jsonl", "--model", "toy:tiny", "--out", out, "--max-steps", "8",
               "--batch-size", "8", "--bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert all(math.isfinite(x) for x in _losses(out))


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_train_policy_on_the_gpu(algo, cli, sft_run, toy_dir, tmp_path):
    out = tmp_path / algo
    proc = cli("train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--out", out, "--algo", algo,
               "--verifier", "math", "--n", "4", "--prompts-per-step", "4", "--max-new-tokens", "32", "--max-steps", "3",
               "--bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "step" in r and r["step"] > 0]
    assert len(rows) == 3
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_train_policy_under_fsdp_yaml_on_one_gpu(algo, cli_env, sft_run, toy_dir, tmp_path):
    """examples/accelerate/fsdp.yaml (FSDP version 2) on one GPU: the units gathered for generation, then trained.
    (tests/training/test_fsdp.py runs the same code path on two CPU ranks.)"""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    config = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp.yaml"
    out = tmp_path / algo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1",
           "--main_process_port", str(free_port()), "-m", "rlhfctl", "train-policy", str(toy_dir / "train.jsonl"),
           "--model", str(sft_run.path), "--out", str(out), "--algo", algo, "--verifier", "math", "--n", "4",
           "--prompts-per-step", "4", "--max-new-tokens", "32", "--max-steps", "2", "--bf16", "--json"]
    proc = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("step", 0) > 0]
    assert len(rows) == 2 and all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert (out / "model.safetensors").is_file()
