"""SIGKILL train-rm and train-policy at a seeded random moment, resume: the run an unbroken one would have been.

docs/design.md §3 promises that ``--resume`` continues from the newest complete
checkpoint and logs the same next metrics as an unbroken run with the same
seed. Removing files by hand (test_rm, test_policy) checks the bookkeeping;
a real kill also lands mid-step, mid-log-line or mid-checkpoint-write. The
kill moment is drawn from a seeded generator, so a failure names a moment
that can be tried again. train-sft, rollout and label-prm have their own
kill tests beside their other tests.

The killed run is the only subprocess; the unbroken and resumed runs go
in-process (`run_main`) to spare an interpreter start-up each.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_jsonl
from rlhfctl.artifacts import list_checkpoints
from rlhfctl.training.loop import MEMORY_KEYS

KILL_SEED = 6  # change it to try other kill moments
TIMING_KEYS = {"seconds", "samples_per_s", *MEMORY_KEYS}  # wall-clock numbers and peak memory, never equal between two runs
RM_STEPS, RM_SAVE_EVERY = 40, 4
RM_ARGS = ["--model", "toy:tiny", "--max-steps", str(RM_STEPS), "--save-every", str(RM_SAVE_EVERY), "--batch-size", "4",
           "--lr", "5e-3", "--seed", "0"]
POLICY_STEPS, POLICY_SAVE_EVERY = 30, 3


@pytest.fixture(scope="module")
def prefs(toy_dir, tmp_path_factory) -> Path:
    """32 pairs: a demonstration against the same working with a wrong final answer."""
    path = tmp_path_factory.mktemp("kill-prefs") / "prefs.jsonl"
    pairs = []
    for r in read_jsonl(toy_dir / "sft.jsonl")[:32]:
        body, answer = r["completion"].rsplit("Answer: ", 1)
        pairs.append({"prompt": r["prompt"], "chosen": r["completion"], "rejected": f"{body}Answer: {int(answer) + 7}"})
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


@pytest.fixture(scope="module")
def unbroken_rm(prefs, cli) -> Path:
    """train-rm run straight through; also the reward model of the policy runs."""
    out = prefs.parent / "rm"
    proc = cli("train-rm", prefs, "--out", out, *RM_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# --- helpers --------------------------------------------------------------------------------------

def _logged_steps(run_dir: Path) -> int:
    """Complete lines in metrics.jsonl (a line being written has no newline yet)."""
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_at_a_random_moment(args: list[str], run_dir: Path, total: int, save_every: int, env: dict) -> int:
    """Run ``rlhfctl ARGS``, SIGKILL it at a seeded random moment after a checkpoint; return the steps it had logged.

    The moment: a checkpoint drawn at random, the step after it logged, then
    a random pause of up to half a toy step, so the kill lands somewhere in
    the next step (its forward pass, its log line, its checkpoint write).
    The run is stopped (SIGSTOP) there and looked at, and only killed if
    metrics.jsonl holds a step past its newest checkpoint, which the resume
    must cut: a toy step can be quicker than the pause, and a stop that
    lands after a checkpoint but before the next log line resumes the run
    until that line is written, then pauses and looks again.
    """
    rng = random.Random(f"{KILL_SEED}:{run_dir.name}")
    after_step = rng.randint(1, total // save_every - 2) * save_every + 1
    pause = rng.uniform(0.0, 0.02)
    log = run_dir.with_name(run_dir.name + ".log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rlhfctl", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while True:
                while not (list_checkpoints(run_dir) and _logged_steps(run_dir) >= after_step):
                    assert proc.poll() is None, f"the run ended before step {after_step}: {log.read_text()[-2000:]}"
                    assert time.monotonic() < deadline, f"step {after_step} never came"
                    time.sleep(0.005)
                time.sleep(pause)
                assert proc.poll() is None, f"the run finished before the kill (step {after_step} + {pause:.3f} s)"
                os.kill(proc.pid, signal.SIGSTOP)
                newest, logged = list_checkpoints(run_dir)[-1][0], _logged_steps(run_dir)
                if newest < logged < total:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                assert logged < total, f"the run logged its last step before the kill (step {after_step} + {pause:.3f} s)"
                os.kill(proc.pid, signal.SIGCONT)
                after_step = newest + 1
        finally:
            proc.kill()  # a no-op after the SIGKILL; stops the run if an assertion failed
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "rlhfctl.json").exists(), "the run was killed after it finished"
    return logged


def _resumed_from(stderr: str) -> int:
    line = next(x for x in stderr.splitlines() if "resuming from step" in x)
    return int(line.rsplit(" ", 1)[1])


def _assert_same_metrics(got: list[dict], want: list[dict], total: int) -> None:
    """Every step logged once, in order, each with the unbroken run's numbers."""
    assert [m["step"] for m in got] == list(range(1, total + 1))
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w.keys() - TIMING_KEYS:
            assert g[key] == pytest.approx(w[key], abs=1e-6), (w["step"], key)


def _assert_same_weights(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)


def _flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): obj}


def _assert_same_results(a: Path, b: Path) -> None:
    """The results in the two manifests (options differ: one run was resumed)."""
    got = _flat(json.loads((a / "rlhfctl.json").read_text())["results"])
    want = _flat(json.loads((b / "rlhfctl.json").read_text())["results"])
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float) and math.isfinite(value) and key.rsplit(".", 1)[-1] not in TIMING_KEYS:
            assert got[key] == pytest.approx(value, abs=1e-6), key
        elif not isinstance(value, float) and key != "out":
            assert got[key] == value, key


def _kill_resume_compare(args: list[str], run_dir: Path, unbroken: Path, total: int, save_every: int, run_main, env) -> int:
    """Kill a run, resume it in-process, and check it against the unbroken run; returns the resumed step."""
    logged = _kill_at_a_random_moment([str(a) for a in args], run_dir, total, save_every, env)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 0.')  # as a kill mid-write leaves it: a torn line to drop
    resumed = run_main(*args, "--resume")
    assert resumed.code == 0, resumed.err[-3000:]
    step = _resumed_from(resumed.err)
    assert save_every <= step < logged < total and step % save_every == 0  # logged steps past the checkpoint were cut
    _assert_same_metrics(read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(unbroken / "metrics.jsonl"), total)
    _assert_same_weights(run_dir, unbroken)
    _assert_same_results(run_dir, unbroken)
    return step


# --- the kills ------------------------------------------------------------------------------------

def test_train_rm_killed_and_resumed_matches_an_unbroken_run(prefs, unbroken_rm, tmp_path, run_main, cli_env):
    metrics = read_jsonl(unbroken_rm / "metrics.jsonl")
    assert len({round(m["loss"], 6) for m in metrics}) > RM_STEPS // 2  # it learns: a stale step would show
    args = ["train-rm", prefs, "--out", tmp_path / "rm", *RM_ARGS]
    _kill_resume_compare(args, tmp_path / "rm", unbroken_rm, RM_STEPS, RM_SAVE_EVERY, run_main, cli_env)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_train_policy_killed_and_resumed_matches_an_unbroken_run(algo, toy_dir, unbroken_rm, tmp_path, run_main, cli_env):
    """GRPO, and PPO (a critic with its own optimizer in the checkpoint), from toy:tiny scored by the RM."""
    def args(out: Path) -> list:
        return ["train-policy", toy_dir / "train.jsonl", "--model", "toy:tiny", "--rm", unbroken_rm, "--out", out,
                "--algo", algo, "--n", "2", "--prompts-per-step", "2", "--max-new-tokens", "8", "--seed", "0",
                "--max-steps", str(POLICY_STEPS), "--save-every", str(POLICY_SAVE_EVERY)]

    unbroken = tmp_path / "unbroken"
    r = run_main(*args(unbroken))
    assert r.code == 0, r.err[-3000:]
    metrics = read_jsonl(unbroken / "metrics.jsonl")
    assert all(m["grad_norm"] > 0 for m in metrics) and metrics[-1]["kl"] != 0.0  # the policy really moves
    _kill_resume_compare(args(tmp_path / "killed"), tmp_path / "killed", unbroken, POLICY_STEPS, POLICY_SAVE_EVERY,
                         run_main, cli_env)
