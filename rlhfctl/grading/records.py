"""Grading a prompt record: which task it is, whether it can be graded here, and the verdicts on its responses."""

from __future__ import annotations

from rlhfctl.errors import DataError
from rlhfctl.grading.code import parse_tests
from rlhfctl.grading.mcq import gold_letter
from rlhfctl.grading.registry import get_grader, known_tasks
from rlhfctl.grading.sandbox import ensure_working
from rlhfctl.records import Record


def task_of(record: Record) -> str | None:
    """The grading task of a prompt record: its ``task``, else math when it has an answer."""
    if record.get("task"):
        return record["task"]
    return "math" if record.get("answer") is not None else None


def check_graders(records: list[Record], path: str) -> None:
    """Fail before any generation if a record names a task with no grader, or
    cannot be graded (an mcq gold that is no choice, code without valid tests,
    a code sandbox that cannot run programs here)."""
    for i, r in enumerate(records):
        task = task_of(r)
        if task is not None and task != "chat" and task not in known_tasks():
            raise DataError(path, i + 1, f"no grader for task {task!r} (known: {', '.join(known_tasks())}, chat)", "task")
        if task is not None and task != "chat":
            get_grader(task)
        if task == "mcq" and r.get("answer") is not None:
            try:
                gold_letter(r)
            except DataError as e:
                raise DataError(path, i + 1, e.problem, e.field) from None
        if task == "code":
            try:
                parse_tests(r.get("tests"))
            except DataError as e:
                raise DataError(path, i + 1, e.problem, e.field) from None
    if any(task_of(r) == "code" for r in records):
        ensure_working()  # a machine where programs cannot run fails now, not after generating


def gold_field(task: str | None) -> str:
    """The field a response is checked against: a code prompt's `tests`, any other prompt's `answer`."""
    return "tests" if task == "code" else "answer"


def grade(record: Record, responses: list[str], extract: str = "strict") -> list[bool] | None:
    """Correctness of each response, or None when the prompt has no answer to check.

    `extract` is the grader's extraction mode (``strict`` or ``flexible``, see `grading.math`).
    """
    found = explain(record, responses, extract)
    return None if found is None else found["correct"]


def explain(record: Record, responses: list[str], extract: str = "strict") -> dict[str, list] | None:
    """``correct``, ``extracted`` and ``extract_rule`` for each response, or None when the prompt has no answer.

    ``extracted`` is the answer as the response states it (None when it states
    none, and for code, whose program is the response itself); ``extract_rule``
    names the rule that found it (None: nothing found).
    """
    task = task_of(record)
    if task is None or task == "chat" or record.get("answer") is None and task in ("math", "mcq"):
        return None
    grader = get_grader(task, extract)
    found = [grader.find(r) for r in responses]
    return {"correct": [grader.is_correct(r, record) for r in responses],
            "extracted": [None if f is None or task == "code" else f.answer for f in found],
            "extract_rule": [None if f is None else f.rule for f in found]}
