"""The grader protocol and the task -> grader registry.

A grader turns a sampled response into two things evaluation needs: a vote
key (`extract`, for majority voting) and a verdict against the prompt record
(`is_correct`, for pass@k). Graders are looked up by task name so new task
types (mcq, code, ...) plug in with one `register` call and no CLI changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rlhfctl.errors import ConfigError


@dataclass(frozen=True)
class Extracted:
    """An answer as a response states it, and the name of the extraction rule that found it."""

    answer: str
    rule: str


@runtime_checkable
class Grader(Protocol):
    """What every grader provides.

    `name` is the task name it is registered under. `extract` returns the
    canonical final answer of a response (equal answers give equal strings, so
    it doubles as the majority-vote key), or None when the response states no
    answer. `is_correct` grades a response against its prompt record and must
    return False, not raise, for malformed responses.

    `find` returns the answer as stated with the name of the rule that found
    it (for records and summaries), and `with_extract(mode)` the grader with
    extraction mode ``strict`` or ``flexible`` (graders with one mode return
    themselves).
    """

    name: str

    def with_extract(self, mode: str) -> "Grader": ...

    def find(self, response: str) -> Extracted | None: ...

    def extract(self, response: str) -> str | None: ...

    def is_correct(self, response: str, record: Mapping[str, Any]) -> bool: ...


_GRADERS: dict[str, Grader] = {}


def register(grader: Grader) -> Grader:
    """Make `grader` available as `get_grader(grader.name)`; returns it.

    Registering a different grader under a taken name is a programming error
    (two plug-ins fighting over one task), so it raises ValueError.
    """
    if not isinstance(grader, Grader):
        raise TypeError(f"{grader!r} does not implement the Grader protocol")
    existing = _GRADERS.get(grader.name)
    if existing is not None and existing is not grader:
        raise ValueError(f"a grader named '{grader.name}' is already registered")
    _GRADERS[grader.name] = grader
    return grader


def known_tasks() -> list[str]:
    """Names of all registered graders, sorted."""
    return sorted(_GRADERS)


EXTRACT_MODES = ("strict", "flexible")


def get_grader(task: str, extract: str = "strict") -> Grader:
    """The grader registered for `task`, extracting in mode `extract`; ConfigError naming the known ones if none."""
    if extract not in EXTRACT_MODES:
        raise ConfigError(f"unknown extraction mode '{extract}'; known: {', '.join(EXTRACT_MODES)}")
    try:
        grader = _GRADERS[task]
    except KeyError:
        known = ", ".join(known_tasks()) or "(none)"
        raise ConfigError(f"unknown task '{task}'; known graders: {known}") from None
    return grader.with_extract(extract)
