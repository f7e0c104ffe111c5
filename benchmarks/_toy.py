"""The default inputs of the benchmarks: toy data and a briefly trained toy:small, made with the rlhfctl CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "rlhfctl"]


def make_toy_data(folder: str, *toy_args: str) -> None:
    """`rlhfctl toy-data FOLDER TOY_ARGS...`, announced."""
    print(f"making toy data in {folder}", flush=True)
    subprocess.run(CLI + ["toy-data", folder, *toy_args], check=True, capture_output=True)


def train_toy_sft(data: str, out: str, steps: int, what: str = "pass --model to skip") -> None:
    """`rlhfctl train-sft DATA/sft.jsonl --model toy:small --max-steps STEPS` into OUT, announced."""
    print(f"training toy:small for {steps} steps into {out} ({what})", flush=True)
    subprocess.run(CLI + ["train-sft", os.path.join(data, "sft.jsonl"), "--model", "toy:small", "--out", out,
                          "--max-steps", str(steps)], check=True, capture_output=True)


def load_prompts(data: str, count: int) -> list:
    """The first ``count`` prompts of DATA/test.jsonl (strings or chat lists)."""
    records = [json.loads(line) for line in (Path(data) / "test.jsonl").read_text().splitlines() if line.strip()]
    if len(records) < count:
        raise SystemExit(f"{data}/test.jsonl has {len(records)} prompts, fewer than --num-prompts {count}")
    return [r["prompt"] for r in records[:count]]
