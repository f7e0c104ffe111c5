"""`toy-data`: the prompt, SFT, test and style-preference files of the toy task."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhfctl.errors import ConfigError
from rlhfctl.records import prompt_id, write_json, write_jsonl
from rlhfctl.toy.task import SLIP_KINDS, Problem, ToyTaskConfig, draw_problem, write_solution


@dataclass(frozen=True)
class ToyDataConfig:
    out_dir: str
    task: ToyTaskConfig
    n_sft: int = 64000
    n_train: int = 2000
    n_test: int = 500
    n_style: int = 1000
    seed: int = 0

    def check(self) -> None:
        t = self.task
        if t.slip_kind not in SLIP_KINDS:
            raise ConfigError(f"unknown --slip-kind {t.slip_kind!r}: choose one of {', '.join(SLIP_KINDS)}")
        for name, value in (("--slip-rate", t.slip_rate), ("--carry-rate", t.carry_rate)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if not 1 <= t.min_ops <= t.max_ops:
            raise ConfigError(f"need 1 <= --min-ops <= --max-ops, got {t.min_ops} and {t.max_ops}")
        for name, value in (("--sft", self.n_sft), ("--train", self.n_train), ("--test", self.n_test), ("--style-pairs", self.n_style)):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")


def run(config: ToyDataConfig) -> dict[str, Any]:
    """Write sft.jsonl, train.jsonl, test.jsonl and toy.json; return counts.

    Test problems never appear in the SFT or train files, so held-out numbers
    measure generalisation, not recall.
    """
    config.check()
    rng = random.Random(config.seed)
    test = _distinct(rng, config.task, config.n_test, set())
    seen = set(test)
    train = _distinct(rng, config.task, config.n_train, seen)
    sft_problems = [p for p in (draw_problem(rng, config.task) for _ in range(config.n_sft * 2)) if p not in seen][: config.n_sft]
    slip_rng = random.Random(config.seed + 1)
    sft = []
    for p in sft_problems:
        text, slipped = write_solution(p, slip_rng, config.task)
        sft.append({"prompt": p.prompt, "completion": text, "meta": {"clean": write_solution(p, None, config.task)[0], "slipped": slipped}})
    out = Path(config.out_dir)
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "train.jsonl", [_prompt_record(p, config.task) for p in train])
    write_jsonl(out / "test.jsonl", [_prompt_record(p, config.task) for p in test])
    style_rng = random.Random(config.seed + 2)
    style = [style_pair(p, style_rng, config.task) for p in (train[i % len(train)] for i in range(config.n_style))] if train else []
    write_jsonl(out / "prefs_style.jsonl", style)
    summary = {"sft": len(sft), "train": len(train), "test": len(test), "style_pairs": len(style),
               "sft_slipped": sum(r["meta"]["slipped"] for r in sft) / max(1, len(sft)), "out_dir": str(out)}
    write_json(out / "toy.json", {"config": asdict(config), "summary": summary})
    return summary


def style_pair(p: Problem, rng: random.Random, task: ToyTaskConfig) -> dict[str, Any]:
    """A preference that is not about correctness: both answers are right, but
    the chosen one shows every step and the rejected one skips them (it jumps
    to the answer, or does the whole chain on one line)."""
    clean = write_solution(p, None, task)[0]
    chain = p.prompt[len("Compute "):].strip().rstrip(".")
    rejected = f"Answer: {p.answer}" if rng.random() < 0.5 else f"{chain}={p.answer}\nAnswer: {p.answer}"
    return {"prompt": p.prompt, "chosen": clean, "rejected": rejected, "source": "toy-style"}


def _distinct(rng: random.Random, task: ToyTaskConfig, count: int, exclude: set[Problem]) -> list[Problem]:
    found: dict[Problem, None] = {}
    for _ in range(count * 20):
        if len(found) == count:
            break
        p = draw_problem(rng, task)
        if p not in exclude:
            found[p] = None
    if len(found) < count:
        raise ConfigError(f"only {len(found)} distinct problems found for {count} asked: widen --max-ops")
    return list(found)


def _prompt_record(p: Problem, task: ToyTaskConfig) -> dict[str, Any]:
    return {"id": prompt_id(p.prompt), "prompt": p.prompt, "answer": str(p.answer), "task": "math",
            "meta": {"clean": write_solution(p, None, task)[0]}}
