"""`toy-data`: the prompt, SFT, test and style-preference files of the toy task.

The arithmetic problems come in three forms, one per grader (`--task`):
``math`` (the default: sft.jsonl, train.jsonl, test.jsonl, prefs_style.jsonl,
toy.json), ``mcq`` and ``code`` (the same files with an ``mcq_`` or ``code_``
prefix, so all three can share one folder; no style pairs).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhfctl.errors import ConfigError
from rlhfctl.records import prompt_id, write_json, write_jsonl
from rlhfctl.toy import code_task, mcq_task
from rlhfctl.toy.task import SLIP_KINDS, Problem, ToyTaskConfig, draw_problem, write_solution

TASK_KINDS = ("math", "mcq", "code")


@dataclass(frozen=True)
class ToyDataConfig:
    out_dir: str
    task: ToyTaskConfig
    n_sft: int = 64000
    n_train: int = 2000
    n_test: int = 500
    n_style: int = 1000
    seed: int = 0
    kind: str = "math"  # which grader's form of the problems: math, mcq or code

    def check(self) -> None:
        t = self.task
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"unknown --task {self.kind!r}: choose one of {', '.join(TASK_KINDS)}")
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
    """Write the task's sft, train and test files and toy.json (math: also prefs_style.jsonl); return counts.

    Test problems never appear in the SFT or train files, so held-out numbers
    measure generalisation, not recall.
    """
    config.check()
    if config.kind != "math":
        return _run_graded_form(config)
    test, train, sft_problems = _draw_splits(config, key=lambda p: p)
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


_FORMS = {"mcq": mcq_task, "code": code_task}


def _run_graded_form(config: ToyDataConfig) -> dict[str, Any]:
    """The mcq or code form: ``{kind}_sft.jsonl``, ``{kind}_train.jsonl``, ``{kind}_test.jsonl``, ``{kind}_toy.json``.

    Problems are distinct by their prompt; a code prompt shows only the
    operations (the first number is a test input), so two problems that
    differ only there are one code problem.
    """
    form = _FORMS[config.kind]
    test, train, sft_problems = _draw_splits(config, key=(lambda p: p.ops) if config.kind == "code" else (lambda p: p))
    slip_rng, form_rng = random.Random(config.seed + 1), random.Random(config.seed + 3)
    sft = [form.demonstration(p, slip_rng, form_rng, config.task) for p in sft_problems]
    out, prefix = Path(config.out_dir), f"{config.kind}_"
    write_jsonl(out / f"{prefix}sft.jsonl", sft)
    write_jsonl(out / f"{prefix}train.jsonl", [form.prompt_record(p, form_rng, config.task) for p in train])
    write_jsonl(out / f"{prefix}test.jsonl", [form.prompt_record(p, form_rng, config.task) for p in test])
    summary = {"task": config.kind, "sft": len(sft), "train": len(train), "test": len(test),
               "sft_slipped": sum(r["meta"]["slipped"] for r in sft) / max(1, len(sft)), "out_dir": str(out)}
    write_json(out / f"{prefix}toy.json", {"config": asdict(config), "summary": summary})
    return summary


def _draw_splits(config: ToyDataConfig, key: Callable[[Problem], Hashable]) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """Test, train and SFT problems; none of the latter two shares its `key` with a test problem."""
    rng = random.Random(config.seed)
    test = _distinct(rng, config.task, config.n_test, set(), key)
    seen = {key(p) for p in test}
    train = _distinct(rng, config.task, config.n_train, seen, key)
    sft = [p for p in (draw_problem(rng, config.task) for _ in range(config.n_sft * 2)) if key(p) not in seen]
    return test, train, sft[: config.n_sft]


def style_pair(p: Problem, rng: random.Random, task: ToyTaskConfig) -> dict[str, Any]:
    """A preference that is not about correctness: both answers are right, but
    the chosen one shows every step and the rejected one skips them (it jumps
    to the answer, or does the whole chain on one line)."""
    clean = write_solution(p, None, task)[0]
    chain = p.prompt[len("Compute "):].strip().rstrip(".")
    rejected = f"Answer: {p.answer}" if rng.random() < 0.5 else f"{chain}={p.answer}\nAnswer: {p.answer}"
    return {"prompt": p.prompt, "chosen": clean, "rejected": rejected, "source": "toy-style"}


def _distinct(rng: random.Random, task: ToyTaskConfig, count: int, exclude: set,
              key: Callable[[Problem], Hashable]) -> list[Problem]:
    """`count` problems with distinct keys, none of them in `exclude`."""
    found: dict[Hashable, Problem] = {}
    for _ in range(count * 20):
        if len(found) == count:
            break
        p = draw_problem(rng, task)
        if key(p) not in exclude and key(p) not in found:
            found[key(p)] = p
    if len(found) < count:
        raise ConfigError(f"only {len(found)} distinct problems found for {count} asked: widen --max-ops")
    return list(found.values())


def _prompt_record(p: Problem, task: ToyTaskConfig) -> dict[str, Any]:
    return {"id": prompt_id(p.prompt), "prompt": p.prompt, "answer": str(p.answer), "task": "math",
            "meta": {"clean": write_solution(p, None, task)[0]}}
