"""Console output: progress bars with ETA and log lines, both on stderr.

Results go to stdout; everything a human watches goes to stderr, and only the
main process prints under accelerate.
"""

from __future__ import annotations

import sys
import time

class Progress:
    """A progress bar with ETA on stderr, on the main process only."""

    def __init__(self, description: str, total: int, done: int, enabled: bool):
        self.enabled = enabled and total > 0
        self._start = time.perf_counter()
        if not self.enabled:
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
        if self.enabled:
            self._bar.update(self._task, advance=1, info=info)

    def close(self) -> None:
        if self.enabled:
            self._bar.stop()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
