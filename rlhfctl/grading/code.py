"""Code grading: run the response's program against the prompt's tests, in the sandbox.

The program is the last fenced code block of the response tagged ``python``
(or ``py``, ``python3``) or untagged; an unclosed last fence runs to the end
of the response (generation stopped mid-block); a response with no fence at
all is taken as the program itself. It is run by Python 3.

The prompt record's ``tests`` is a non-empty list whose items are either

- ``{"stdin": "23\\n", "stdout": "64\\n"}``: the program reads `stdin`
  (optional, default empty) and must exit 0 having printed `stdout`
  (compared line by line, trailing spaces and trailing blank lines ignored);
- ``"assert add(2, 3) == 5"``: Python statements run after the program
  (MBPP / HumanEval style); all the strings of a record run together, once,
  and pass when they run to their end, exit 0, and every assert in them ran
  and held. The expected values stay here: `rlhfctl.grading.asserts` says how.

A response is correct when every test passes. Every run is confined by
`rlhfctl.grading.sandbox` (time, memory, processes, output, no network, no
writes outside its folder); a program that breaks a limit fails its test.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from rlhfctl.errors import DataError, RlhfctlError
from rlhfctl.grading import asserts, sandbox
from rlhfctl.grading.registry import Extracted
from rlhfctl.grading.sandbox import Limits

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n", re.MULTILINE)
_CLOSING = re.compile(r"^[ \t]*```[ \t]*$", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "py", "python3"}
_STDIO_KEYS = {"stdin", "stdout"}


@dataclass(frozen=True)
class StdioTest:
    """Feed `stdin`, expect `stdout`."""

    stdin: str
    stdout: str


@dataclass(frozen=True)
class AssertTest:
    """Python statements run after the program; `split` is what runs in the sandbox and what is checked here."""

    code: str
    split: asserts.SplitTests


Test = Union[StdioTest, AssertTest]


def extract_program(response: str) -> str | None:
    """The program in `response` (see the module docstring), or None if it is blank."""
    blocks = _fenced_blocks(response)
    if blocks:
        python = [code for tag, code in blocks if tag in _PYTHON_TAGS]
        program = python[-1] if python else None
    else:
        program = response
    return program if program and program.strip() else None


def _fenced_blocks(response: str) -> list[tuple[str, str]]:
    """(language tag, code) of each fenced block, in order; an unclosed last block runs to the end."""
    blocks, pos = [], 0
    while (fence := _FENCE.search(response, pos)) is not None:
        closing = _CLOSING.search(response, fence.end())
        end = closing.start() if closing else len(response)
        blocks.append((fence.group(1).lower(), response[fence.end():end]))
        pos = closing.end() if closing else len(response)
    return blocks


def canonical_program(program: str) -> str:
    """A vote key: the program without trailing spaces and blank lines (equal programs vote together)."""
    return "\n".join(line.rstrip() for line in program.splitlines() if line.strip())


def parse_tests(tests: Any) -> tuple[Test, ...]:
    """The record's ``tests`` as test objects; DataError (field ``tests``) saying what is wrong.

    The assert-style strings are joined into one AssertTest, run once.
    """
    if tests is None:
        raise DataError("<record>", None, "missing: code grading needs tests (a list of {stdin, stdout} "
                        "objects or assert strings)", field="tests")
    if not isinstance(tests, list) or not tests:
        raise DataError("<record>", None, "must be a non-empty list of {stdin, stdout} objects or assert strings",
                        field="tests")
    stdio, statements = [], []
    for i, item in enumerate(tests, start=1):
        if isinstance(item, str):
            statements.append((i, item))
        elif isinstance(item, Mapping):
            stdio.append(_stdio_test(item, i))
        else:
            raise DataError("<record>", None, f"item {i} is {type(item).__name__}: expected an object or a string",
                            field="tests")
    return tuple(stdio) + ((_assert_test(statements),) if statements else ())


def _assert_test(statements: list[tuple[int, str]]) -> AssertTest:
    for i, code in statements:
        try:
            compile(code, f"<test {i}>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            raise DataError("<record>", None, f"item {i} is not valid Python: {exc}", field="tests") from None
    code = "\n".join(code for _, code in statements)
    try:
        return AssertTest(code, asserts.split(code))
    except (SyntaxError, ValueError) as exc:
        raise DataError("<record>", None, f"the test strings together are not valid Python: {exc}",
                        field="tests") from None


def _stdio_test(item: Mapping, index: int) -> StdioTest:
    unknown = sorted(set(item) - _STDIO_KEYS)
    if unknown:
        raise DataError("<record>", None, f"item {index} has unknown key(s) {', '.join(map(repr, unknown))}: "
                        "expected 'stdin' and 'stdout'", field="tests")
    for key in ("stdin", "stdout"):
        if key in item and not isinstance(item[key], str):
            raise DataError("<record>", None, f"item {index}: '{key}' must be a string", field="tests")
    if "stdout" not in item:
        raise DataError("<record>", None, f"item {index} has no 'stdout'", field="tests")
    return StdioTest(item.get("stdin", ""), item["stdout"])


def same_output(expected: str, actual: str) -> bool:
    """Equal line by line, ignoring trailing spaces and trailing blank lines."""
    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.splitlines()]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(expected) == lines(actual)


def compiles(program: str) -> bool:
    """Whether `program` is valid Python; checked here, so that garbage costs no sandbox run.

    Compiling runs none of the program's code.
    """
    try:
        compile(program, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def _job(program: str, test: Test, limits: Limits) -> sandbox.Job:
    if isinstance(test, AssertTest):
        return sandbox.python_job(f"{program}\n\n{test.split.script}", "", limits)
    return sandbox.python_job(program, test.stdin, limits)


def _passes(result: sandbox.RunResult, test: Test) -> bool:
    if result.status == "setup-error":  # the sandbox is broken, not the program: stop, do not grade
        raise RlhfctlError(f"the code sandbox failed to start a program: {result.error}")
    if isinstance(test, AssertTest):
        return result.ok and asserts.holds(test.split, result.results)
    return result.ok and same_output(test.stdout, result.stdout)


class _VerdictCache:
    """Verdicts by (program, tests, limits), least recently used dropped first; thread-safe.

    Equal program texts get one verdict, so a flaky program is never graded
    both ways within a run (build-prefs would pair it with itself).
    """

    def __init__(self, size: int = 8192):
        self.size, self.lock, self.items = size, threading.Lock(), OrderedDict()

    def get(self, key) -> bool | None:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key, verdict: bool) -> None:
        with self.lock:
            self.items[key] = verdict
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_CACHE = _VerdictCache()


def verdicts(programs: list[str | None], tests: tuple[Test, ...], limits: Limits, workers: int) -> list[bool]:
    """Whether each program passes every test; None (no program) fails.

    Programs that do not compile fail without a run. The others run their
    first test, all in parallel (most wrong programs fail it); the survivors
    then run the remaining tests, again all in parallel.
    """
    todo = [p for p in dict.fromkeys(programs) if p is not None and _CACHE.get((p, tests, limits)) is None]
    runnable = [p for p in todo if compiles(p)]
    survivors = _passing(runnable, tests[:1], limits, workers)
    passed = set(_passing(survivors, tests[1:], limits, workers))
    fresh = {p: p in passed for p in todo}
    for p, verdict in fresh.items():
        _CACHE.put((p, tests, limits), verdict)
    return [p is not None and bool(fresh[p] if p in fresh else _CACHE.get((p, tests, limits))) for p in programs]


def _passing(programs: list[str], tests: tuple[Test, ...], limits: Limits, workers: int) -> list[str]:
    """The programs that pass all of `tests`, running every (program, test) pair in parallel."""
    if not tests or not programs:
        return programs
    pairs = [(p, t) for p in programs for t in tests]
    results = sandbox.run_many([_job(p, t, limits) for p, t in pairs], workers)
    failed = {p for (p, t), r in zip(pairs, results) if not _passes(r, t)}
    return [p for p in programs if p not in failed]


class CodeGrader:
    """Grades programs by running them on the record's ``tests`` in the sandbox."""

    name = "code"

    def __init__(self, limits: Limits | None = None, workers: int | None = None):
        self.limits = limits  # None: `Limits.from_env()` at each use
        self.workers = workers

    def with_extract(self, mode: str) -> "CodeGrader":
        """Programs have one extraction mode; `mode` changes nothing."""
        return self

    def find(self, response: str) -> Extracted | None:
        """The program `response` holds, with rule ``fenced`` (a code block) or ``whole`` (no fence), or None."""
        program = extract_program(response)
        if program is None:
            return None
        return Extracted(program, "fenced" if _fenced_blocks(response) else "whole")

    def extract(self, response: str) -> str | None:
        """The program, canonicalised (the majority-vote key), or None if the response has none."""
        program = extract_program(response)
        return None if program is None else canonical_program(program)

    def is_correct(self, response: str, record: Mapping[str, Any]) -> bool:
        """Whether the program of `response` passes every test of the record; no program is wrong."""
        return self.is_correct_many([response], record)[0]

    def is_correct_many(self, responses: list[str], record: Mapping[str, Any]) -> list[bool]:
        """`is_correct` for many responses to one record, their programs run in parallel."""
        tests = parse_tests(record.get("tests"))
        programs = [extract_program(r) for r in responses]
        return verdicts(programs, tests, self.limits or Limits.from_env(), self.workers or sandbox.default_workers())
