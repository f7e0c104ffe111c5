"""Console output: progress with ETA and log lines, both on stderr.

Results go to stdout; everything a human watches goes to stderr, and only the
main process prints under accelerate. On a terminal, progress is a rich bar;
when stderr is a file or a pipe (nohup, Slurm, ``2> log``) it is a plain line
every ``RLHFCTL_PROGRESS_INTERVAL`` seconds (default 30) and one at the end.
"""

from __future__ import annotations

import os
import sys
import time

INTERVAL_ENV = "RLHFCTL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0

_said: set[str] = set()  # `log_once` messages already printed by this command


class Progress:
    """Progress with ETA on stderr, on the main process only: a bar on a terminal, else plain lines."""

    def __init__(self, description: str, total: int, done: int, enabled: bool):
        self.enabled = enabled and total > 0
        self._start = time.perf_counter()
        self._description, self._total, self._done, self._first = description, total, done, done
        self._info, self._bar = "", None
        if not self.enabled:
            return
        if not sys.stderr.isatty():
            self._interval, self._last_line = _interval(), self._start
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=Console(stderr=True), transient=False,
        )
        self._task = self._bar.add_task(description, total=total, completed=done, info="")
        self._bar.start()

    def advance(self, info: str = "") -> None:
        if not self.enabled:
            return
        self._done, self._info = self._done + 1, info or self._info
        if self._bar is not None:
            self._bar.update(self._task, advance=1, info=info)
        elif time.perf_counter() - self._last_line >= self._interval:
            self._print_line()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
        elif self._done > self._first:
            self._print_line()
        self.enabled = False

    def line(self) -> str:
        """The plain progress line: step/total, rate, elapsed, ETA and the latest info."""
        elapsed = time.perf_counter() - self._start
        done_here = self._done - self._first
        rate = done_here / elapsed if elapsed > 0 else 0.0
        eta = (self._total - self._done) / rate if rate > 0 else None
        parts = [f"{self._description} {self._done}/{self._total}", _rate(rate),
                 f"elapsed {_clock(elapsed)}", f"eta {_clock(eta) if eta is not None else '?'}"]
        return "  ".join(parts + ([self._info] if self._info else []))

    def _print_line(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)
        self._last_line = time.perf_counter()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV)
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def _rate(per_second: float) -> str:
    if per_second >= 1:
        return f"{per_second:.1f}/s"
    return f"{1 / per_second:.1f}s each" if per_second > 0 else "-"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def plural(count: int, noun: str) -> str:
    """``1 step``, ``2 steps``: a count and its noun, in the number it takes."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def log_once(message: str) -> None:
    """`log` a message once per command, on the main process only (``RANK`` 0 under accelerate)."""
    if message in _said or os.environ.get("RANK", "0") != "0":
        return
    _said.add(message)
    log(message)


def forget_logged() -> None:
    """A new command starts: `log_once` messages may print again."""
    _said.clear()
