"""Same inputs and seed, same bytes on a CPU: rollout, train-sft and build-prefs, each run in two processes.

Two processes rather than one process twice: each starts with its own hash
seed (``PYTHONHASHSEED``), so an output that follows a set's iteration order
differs between them, as it would between a user's two runs. What GPUs do
differently is in docs/training.md (Reproducibility).
"""

from __future__ import annotations

import json
import random

import pytest

from conftest import SFT_ARGS, read_jsonl, write_prompts
from rlhfctl.records import write_jsonl
from rlhfctl.training.loop import MEMORY_KEYS

TIMING_KEYS = {"seconds", "samples_per_s", "tokens_per_s", *MEMORY_KEYS}  # wall-clock numbers and peak memory in metrics.jsonl


@pytest.fixture
def hash_seeds(cli_env):
    """Two environments that differ only in the interpreter's hash seed."""
    return [dict(cli_env, PYTHONHASHSEED=str(seed)) for seed in (1, 2)]


def _run_twice(cli, hash_seeds, *args):
    for env in hash_seeds:
        proc = cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]


def _without(record: dict, keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def test_rollout_writes_the_same_bytes(toy_dir, tmp_path, cli, hash_seeds, run_main):
    """Sampled at temperature 1, so the seed, not greedy decoding, makes them equal."""
    common = [toy_dir / "test.jsonl", "--model", "toy:tiny", "--n", "3", "--temperature", "1", "--max-new-tokens", "12",
              "--batch-size", "4", "--seed", "1"]
    for env, name in zip(hash_seeds, "ab"):
        proc = cli("rollout", *common, "--out", tmp_path / f"{name}.jsonl", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first = (tmp_path / "a.jsonl").read_bytes()
    assert first == (tmp_path / "b.jsonl").read_bytes()
    other = run_main("rollout", *common[:-1], "2", "--out", tmp_path / "c.jsonl")
    assert other.code == 0, other.err
    assert (tmp_path / "c.jsonl").read_bytes() != first  # the seed does matter: equal bytes are not a constant


def test_train_sft_writes_the_same_weights(sft_run, toy_dir, tmp_path, cli, hash_seeds):
    """A second run of the test run's tiny SFT run: the same safetensors bytes, checkpoints, optimizer state, metrics."""
    import torch

    again = tmp_path / "again"
    proc = cli("train-sft", toy_dir / "sft.jsonl", "--out", again, *SFT_ARGS, env=hash_seeds[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (again / "model.safetensors").read_bytes() == (sft_run.path / "model.safetensors").read_bytes()
    checkpoints = sorted(p.name for p in (sft_run.path / "checkpoints").iterdir())
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == checkpoints and checkpoints
    for name in checkpoints:
        a, b = sft_run.path / "checkpoints" / name, again / "checkpoints" / name
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes(), name
        _assert_equal_state(torch.load(a / "state.pt", weights_only=True), torch.load(b / "state.pt", weights_only=True), name)
    got = [_without(m, TIMING_KEYS) for m in read_jsonl(again / "metrics.jsonl")]
    assert got == [_without(m, TIMING_KEYS) for m in sft_run.metrics]


def test_lora_with_dropout_gives_the_same_weights(toy_dir, tmp_path, run_main):
    """LoRA's adapter init and its dropout masks draw from torch's global generator, which --seed now seeds."""
    pytest.importorskip("peft")
    args = ["--model", "toy:tiny", "--max-steps", "3", "--batch-size", "8", "--seed", "0", "--lora-r", "4", "--lora-dropout", "0.5"]
    for name in "ab":
        r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", tmp_path / name, *args)
        assert r.code == 0, r.err[-3000:]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def _assert_equal_state(a, b, where: str) -> None:
    """Optimizer, scheduler and RNG state: the same nested values, tensors equal to the bit."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _graded_rollouts(path, count: int = 12) -> None:
    """Prompts with six responses each, a seeded mix of right and wrong (some texts repeated)."""
    rng = random.Random(0)
    rollouts = []
    for p in write_prompts(path.with_name("prompts.jsonl"), count):
        answer = int(p["answer"])
        responses = [f"Answer: {answer + rng.choice([0, 0, 1, -1, 2])}" for _ in range(6)]
        rollouts.append(dict(p, responses=responses, correct=[t == f"Answer: {answer}" for t in responses]))
    write_jsonl(path, rollouts)


def test_build_prefs_writes_the_same_bytes(tmp_path, cli, hash_seeds, run_main):
    _graded_rollouts(tmp_path / "rollouts.jsonl")
    common = ["build-prefs", tmp_path / "rollouts.jsonl", "--pairs-per-prompt", "3", "--binary-per-prompt", "2", "--seed", "0"]
    for env, name in zip(hash_seeds, "ab"):
        proc = cli(*common, "--out", tmp_path / f"{name}.jsonl", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first = (tmp_path / "a.jsonl").read_bytes()
    assert first == (tmp_path / "b.jsonl").read_bytes()
    manifests = [json.loads((tmp_path / f"{name}.jsonl.manifest.json").read_text()) for name in "ab"]
    assert [_without(m, {"created", "options"}) for m in manifests] == [_without(manifests[0], {"created", "options"})] * 2
    other = run_main(*common[:-1], "1", "--out", tmp_path / "c.jsonl")
    assert other.code == 0, other.err
    assert (tmp_path / "c.jsonl").read_bytes() != first  # the seed picks the pairs


def test_rm_ranked_prefs_break_ties_by_rollout_order(monkeypatch, tmp_path):
    """Equal scores (a bf16 RM, texts cut at the same max length, or a tokenizer that maps them to the same ids)
    keep the rollout's order; ordering them by a set made the pairs change with the process's hash seed."""
    from rlhfctl.rm import prefs

    texts = [f"Answer: {i}" for i in range(10)]
    rollout = {"id": "p", "prompt": "Compute 1+2.\n", "responses": texts}
    tied = [1.0] * 5 + [0.0] * 5  # two tied groups: the best five and the worst five
    monkeypatch.setattr(prefs, "score_rollouts", lambda rollouts, rm: [tied for _ in rollouts])
    config = prefs.PrefsConfig(source=str(tmp_path / "r.jsonl"), out=str(tmp_path / "p.jsonl"), mode="rm", rm="rm",
                               pairs_per_prompt=3)
    pairs = prefs.ranked_prefs([rollout], config, dropped=prefs.Counter())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(texts[0], texts[9]), (texts[1], texts[8]), (texts[2], texts[7])]
