"""What `report` reads: training run folders and result JSON files.

Every input is read and checked before anything is written, so a bad path
or a bad line stops the command with one line (`FILE:LINE: problem`) and no
output. A run folder is known by its manifest (`rlhfctl.json`, or the
`run.json` a training command writes at start, so a run still going or
killed can be reported) and its `metrics.jsonl`; a torn last line of the
metrics (a run killed mid-write) is dropped, as `--resume` drops it.

This module imports nothing heavy: no matplotlib, no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from rlhfctl.errors import DataError, RlhfctlError
from rlhfctl.records import METRICS, read_metrics

MANIFEST = "rlhfctl.json"  # artifacts.MANIFEST; not imported, to keep this module light
RUN_FILE = "run.json"  # training.loop.RUN_FILE: the options, written when a run starts
TRAINING_COMMANDS = ("train-policy", "train-sft", "train-rm")
# Options that differ between any two runs without saying anything about them.
NOT_SETTINGS = frozenset({"out", "resume"})


@dataclass(frozen=True)
class TrainingRun:
    """A train-policy, train-sft or train-rm folder."""

    name: str
    path: Path
    command: str
    options: dict[str, Any]
    results: dict[str, Any]
    metrics: list[dict[str, Any]]  # one object per logged step, in file order

    @property
    def kind(self) -> str:
        return self.command

    @property
    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k not in NOT_SETTINGS}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, for the steps that logged a finite number.

        A step logged twice keeps its last value, so a resumed run's log
        reads as one run.
        """
        by_step: dict[int, float] = {}
        for row in self.metrics:
            value = row.get(key)
            if is_number(value):
                by_step[int(row["step"])] = float(value)
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]


@dataclass(frozen=True)
class BestOfNResult:
    """A `best-of-n --out` file: one accuracy per N for each selector."""

    name: str
    path: Path
    n: list[int]
    curves: dict[str, list[float]]
    num_prompts: int | None
    source: str | None

    kind = "best-of-n"

    @property
    def settings(self) -> dict[str, Any]:
        return {"source": self.source}


@dataclass(frozen=True)
class EvalResult:
    """An `eval --out` file: pass@k / maj@k of a policy, or a reward model's accuracies."""

    name: str
    path: Path
    numbers: dict[str, Any] = field(repr=False)

    kind = "eval"

    @property
    def settings(self) -> dict[str, Any]:
        found = {k: self.numbers[k] for k in ("model", "rm", "data") if k in self.numbers}
        options = self.numbers.get("options")
        return {**found, **(options if isinstance(options, dict) else {})}


ReportInput = Union[TrainingRun, BestOfNResult, EvalResult]


def load_inputs(paths: list[str]) -> list[ReportInput]:
    """Every input, named uniquely; the same path given twice counts once."""
    if not paths:
        raise RlhfctlError("give at least one run folder or result file")
    resolved: list[Path] = []
    for raw in paths:
        path = _existing(raw)
        if path.resolve() not in [p.resolve() for p in resolved]:
            resolved.append(path)
    names = unique_names(resolved)
    return [_load(path, name) for path, name in zip(resolved, names)]


def _existing(raw: str) -> Path:
    """The path to read: a run folder, or a result file; metrics.jsonl or
    rlhfctl.json given directly stand for their folder."""
    path = Path(raw)
    if not path.exists():
        raise RlhfctlError(f"{raw}: no such file or folder")
    if path.is_file() and path.name in (METRICS, MANIFEST):
        return path.parent
    return path


def unique_names(paths: list[Path]) -> list[str]:
    """Folder names and file stems; where two collide, the parent folders are
    added (``a/grpo``, ``b/grpo``) until every name is unique."""
    parts = [_name_parts(p) for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            return _numbered(names)
        for i in grow:
            depth[i] += 1


def _name_parts(path: Path) -> list[str]:
    absolute = path.resolve()
    last = absolute.stem if absolute.is_file() else absolute.name
    return [p for p in absolute.parent.parts if p != absolute.anchor] + [last or str(absolute)]


def _numbered(names: list[str]) -> list[str]:
    """Names still equal after using every parent (``a.json`` and ``a.jsonl``) get ``#2``, ``#3``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _load(path: Path, name: str) -> ReportInput:
    if path.is_dir():
        return _load_run(path, name)
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise DataError(str(path), None, "expected a JSON object (a best-of-n or eval result)")
    if "curves" in data:
        return _best_of_n(path, name, data)
    if any(k.startswith(("pass@", "maj@")) for k in data) or "pair_accuracy" in data or "step_accuracy" in data:
        return EvalResult(name, path, data)
    raise DataError(str(path), None, "not a result file rlhfctl knows: expected best-of-n keys 'n' and 'curves', "
                                     "or eval keys 'pass@1' / 'pair_accuracy'")


def read_json_file(path: Path) -> Any:
    """One JSON document; a syntax error is reported with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise RlhfctlError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None


# --- run folders -------------------------------------------------------------------

def _load_run(path: Path, name: str) -> TrainingRun:
    manifest = _manifest(path)
    has_metrics = (path / METRICS).is_file()
    if manifest is None and not has_metrics:
        raise RlhfctlError(f"{path}: not a training run folder (no {MANIFEST} and no {METRICS})")
    metrics = read_metrics(path)
    manifest = manifest or {}
    command = manifest.get("command") or _guess_command(metrics)
    if command not in TRAINING_COMMANDS:
        raise RlhfctlError(f"{path}: made by {command!r}; report reads {', '.join(TRAINING_COMMANDS)} runs")
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    results = manifest.get("results") if isinstance(manifest.get("results"), dict) else {}
    return TrainingRun(name, path, command, options, results, metrics)


def _manifest(path: Path) -> dict[str, Any] | None:
    """The finished run's manifest, else the options its start recorded, else None."""
    for file_name in (MANIFEST, RUN_FILE):
        file = path / file_name
        if file.is_file():
            data = read_json_file(file)
            if not isinstance(data, dict):
                raise DataError(str(file), None, "expected a JSON object")
            return data
    return None


def _guess_command(metrics: list[dict[str, Any]]) -> str:
    """A folder with metrics but no manifest: its command, from what it logged."""
    keys = {k for row in metrics for k in row}
    if keys & {"reward_raw_mean", "eval_pass@1", "kl"}:
        return "train-policy"
    if keys & {"pair_acc", "binary_acc", "step_acc"}:
        return "train-rm"
    return "train-sft"


# --- result files ------------------------------------------------------------------

def _best_of_n(path: Path, name: str, data: dict[str, Any]) -> BestOfNResult:
    shown = str(path)
    ns, curves = data.get("n"), data["curves"]
    if not (isinstance(ns, list) and ns and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in ns)):
        raise DataError(shown, None, "expected a non-empty list of positive integers", "n")
    if not isinstance(curves, dict) or not curves:
        raise DataError(shown, None, "expected an object of selector: [accuracy per N]", "curves")
    for selector, ys in curves.items():
        if not (isinstance(ys, list) and len(ys) == len(ns) and all(is_number(y) for y in ys)):
            raise DataError(shown, None, f"selector {selector!r}: expected {len(ns)} numbers, one per N", "curves")
    num_prompts = data.get("num_prompts") if isinstance(data.get("num_prompts"), int) else None
    source = data.get("source") if isinstance(data.get("source"), str) else None
    return BestOfNResult(name, path, list(ns), {k: [float(y) for y in v] for k, v in curves.items()}, num_prompts, source)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what the tables and plots can use."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
