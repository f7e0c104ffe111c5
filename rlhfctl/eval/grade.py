"""`grade`: grade responses that came from anywhere, into rollout-shaped records.

Input rows (any source of `rlhfctl.sources`, columns mapped with ``--field``)
hold a prompt, its gold (``answer``, or ``tests`` for code) and the responses
in one of three shapes: ``responses`` (a list, as `rollout` writes), one
``response``, or TRL's prompt-completion ``completion`` (a string or the
assistant's messages). Each output record is the row with ``responses``,
``correct``, ``extracted`` and ``extract_rule`` added, so `best-of-n`,
`build-prefs`, `label-prm` and ``eval --responses`` read it like a rollout.

Records are appended and flushed one by one: a rerun skips the ids already
graded (docs/design.md §3). A row without an ``id`` gets its prompt's id, with
``:N`` for the N-th repeat of a prompt (single-response data repeats them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rlhfctl.console import Progress
from rlhfctl.errors import DataError
from rlhfctl.grading import check_graders, explain, gold_field, task_of
from rlhfctl.locks import locked
from rlhfctl.records import RESPONSES, ROLLOUTS, Record, read_records
from rlhfctl.resumable import ResumableWriter


@dataclass(frozen=True)
class GradeConfig:
    responses: str
    out: str
    extract: str = "strict"
    fields: dict[str, str] = field(default_factory=dict)


def run(config: GradeConfig) -> dict[str, Any]:
    """Grade every row of ``config.responses`` into ``config.out``; the summary counts answers by extraction rule."""
    rows = read_records(config.responses, RESPONSES, fields=config.fields)
    records = [as_rollout(row, n, config.responses) for n, row in enumerate(_with_ids(rows), start=1)]
    check_graders(records, config.responses)
    summary: dict[str, Any] = {"records": len(records), "already_done": 0, "graded": 0, "responses": 0,
                               "accuracy": None, "no_answer": 0, "rules": {}, "extract": config.extract, "out": config.out}
    rules: Counter[str] = Counter()
    correct = 0
    with locked(config.out):
        writer = ResumableWriter(config.out, ROLLOUTS)
        todo = [r for r in records if r["id"] not in writer.done]
        summary["already_done"] = len(records) - len(todo)
        with writer, Progress("grade", len(todo), 0, True) as progress:
            for record in todo:
                verdicts = explain(record, record["responses"], config.extract)
                writer.write({**record, **verdicts})
                summary["graded"] += 1
                summary["responses"] += len(record["responses"])
                correct += sum(verdicts["correct"])
                rules.update(rule or "none" for rule in verdicts["extract_rule"])
                progress.advance()
    summary["no_answer"] = rules.pop("none", 0)
    summary["rules"] = dict(sorted(rules.items()))
    if summary["responses"]:
        summary["accuracy"] = correct / summary["responses"]
    return summary


def _with_ids(rows: list[Record]) -> list[Record]:
    """Rows whose id came from their prompt get ``:N`` on the N-th repeat of that prompt."""
    seen: Counter[str] = Counter()
    for row in rows:
        seen[row["id"]] += 1
        if seen[row["id"]] > 1:
            row["id"] = f"{row['id']}:{seen[row['id']]}"
    return rows


def as_rollout(row: Record, line: int, path: str) -> Record:
    """The row with its responses as a list of strings, and a gold to grade against."""
    if "responses" in row:
        responses = row["responses"]
    elif "response" in row:
        responses = [row.pop("response")]
    elif "completion" in row:
        responses = [_completion_text(row.pop("completion"), path, line)]
    else:
        raise DataError(path, line, "missing: grade needs responses (a list), response, or completion", "responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError(path, line, "expected a list of strings", "responses")
    gold = gold_field(task_of(row))
    if row.get(gold) is None or task_of(row) in (None, "chat"):
        raise DataError(path, line, f"missing: grade needs {'tests' if gold == 'tests' else 'a gold answer'} for every record", gold)
    return {**row, "responses": responses}


def _completion_text(completion: Any, path: str, line: int) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in completion):
        return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")
    raise DataError(path, line, "expected a string or a list of chat messages", "completion")
