"""Shared fixtures: the real CLI (in a subprocess or in-process), toy data, a tiny SFT run.

The test machine has two cores shared with other work. Torch's intra-op
threads spin-wait for each other, which makes a toy model's forward pass a
hundred times slower when the cores are busy, so everything runs with one
thread (set before torch is imported, here and in every subprocess).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("RLHFCTL_DEBUG", None)

# The test run's tiny SFT run (built once); test_sft, test_cli and the two-rank test compare against it.
SFT_ARGS = ["--model", "toy:tiny", "--max-steps", "6", "--save-every", "2", "--batch-size", "8", "--seed", "0"]


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Environment for CLI subprocesses: a temporary home (no user accelerate config), one thread."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONUNBUFFERED="1")
    env.pop("RLHFCTL_DEBUG", None)
    return env


@pytest.fixture(scope="session")
def cli(cli_env):
    """``cli(*args, cwd=None, timeout=300)``: run ``python -m rlhfctl ARGS`` and return the CompletedProcess."""

    def run(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rlhfctl", *map(str, args)], cwd=cwd, env=env or cli_env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@dataclass
class MainResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_main(monkeypatch, capsys):
    """``run_main(*args)``: `rlhfctl.cli.main` in this process (no interpreter start-up), as the console script runs it."""
    from rlhfctl import cli

    def run(*args: str) -> MainResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["rlhfctl", *map(str, args)])
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return MainResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory, cli) -> Path:
    """``rlhfctl toy-data DIR --sft 64 --train 8 --test 8`` (seed 0)."""
    out = tmp_path_factory.mktemp("toy")
    proc = cli("toy-data", out, "--sft", "64", "--train", "8", "--test", "8", "--seed", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    return out


@dataclass
class SFTRun:
    path: Path
    summary: dict
    metrics: list[dict]


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, cli, toy_dir) -> SFTRun:
    """A toy:tiny model trained for 6 steps of 8 records, a checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("sft") / "run"
    proc = cli("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr
    return SFTRun(out, json.loads(proc.stdout), read_jsonl(out / "metrics.jsonl"))


def stderr_lines(err: str) -> list[str]:
    """stderr's lines less the ``model: …`` line that a command which loads a model prints first."""
    return [line for line in err.strip().splitlines() if not line.startswith("model: ")]


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_cpu_ranks(cli_env: dict[str, str], *args, launcher: tuple[str, ...] = ("--multi_gpu",),
                         entry: tuple[str, ...] = ("-m", "rlhfctl"), env: dict[str, str] | None = None,
                         timeout: float = 300) -> subprocess.CompletedProcess:
    """``accelerate launch`` with two real CPU ranks (gloo; ``ACCELERATE_USE_CPU=true``) running ``entry ARGS``.

    ``launcher`` picks the parallelism (``--multi_gpu``: DDP; ``--config_file F``: that file's). A rank that
    waits on a collective the other never makes hangs: the timeout turns that into a failure.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *entry, *map(str, args)]
    return subprocess.run(cmd, env=dict(cli_env, ACCELERATE_USE_CPU="true", **(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def write_prompts(path: Path, count: int, seed: int = 0) -> list[dict]:
    """``count`` distinct toy prompts with answers, written as prompts JSONL."""
    import random

    from rlhfctl.records import prompt_id, write_jsonl
    from rlhfctl.toy.task import ToyTaskConfig, draw_problem

    rng, found = random.Random(seed), {}
    while len(found) < count:
        p = draw_problem(rng, ToyTaskConfig())
        found[p.prompt] = {"id": prompt_id(p.prompt), "prompt": p.prompt, "answer": str(p.answer), "task": "math"}
    records = list(found.values())
    write_jsonl(path, records)
    return records


@pytest.fixture(scope="session")
def rm_run(cli, toy_dir, sft_run, tmp_path_factory):
    """A tiny ORM (2 steps on 32 pairs) so that rewards vary and every step updates the policy."""
    folder = tmp_path_factory.mktemp("policy-rm")
    pairs = []
    for r in read_jsonl(toy_dir / "sft.jsonl")[:32]:
        body, answer = r["completion"].rsplit("Answer: ", 1)
        pairs.append({"prompt": r["prompt"], "chosen": r["completion"], "rejected": f"{body}Answer: {int(answer) + 7}"})
    (folder / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    proc = cli("train-rm", folder / "prefs.jsonl", "--model", sft_run.path, "--out", folder / "rm", "--max-steps", "2",
               "--batch-size", "8", "--seed", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "rm"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x01  # inside the tensor data, past the header
    path.write_bytes(bytes(data))


def _empty(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()


# What a power cut, a full disk or a bad block leaves in a checkpoint folder, and the reason a resume gives.
CHECKPOINT_DAMAGE = {
    "truncated-state": (lambda d: _truncate(d / "state.pt"), r"state\.pt is \d+ bytes, expected \d+"),
    "truncated-weights": (lambda d: _truncate(d / "model.safetensors"), r"model\.safetensors is \d+ bytes, expected \d+"),
    "empty-folder": (_empty, r"model\.safetensors is missing"),
    "missing-state": (lambda d: (d / "state.pt").unlink(), r"state\.pt is missing"),
    "flipped-byte": (lambda d: _flip_a_byte(d / "model.safetensors"), r"model\.safetensors does not match its checksum"),
}
