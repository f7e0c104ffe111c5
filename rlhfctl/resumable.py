"""Line-per-record outputs that survive kills (rollout, grade, label-prm): docs/design.md §3.

A killed run leaves complete records and perhaps a torn last line; reopening
the output keeps the records, cuts the torn line, and reports the ids already
written, so a rerun does only the rest.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Callable

from rlhfctl.errors import DataError, RlhfctlError
from rlhfctl.records import Record, RecordKind, check_out_file, check_unique_ids, dumps, parse_lines

START_OVER = "pass another --out, or delete the file to start over"


class ResumableWriter:
    """A line-per-record output that survives kills (rollouts, steps).

    Opening it reads what an earlier run left: complete records are kept and
    their keys reported in `done`; a torn last line (no newline, or not JSON)
    is cut off. Each `write` appends one line and flushes it. The file is only
    created by the first write, so a run that fails before producing anything
    leaves nothing behind. ``-`` streams to stdout (no resume).

    A file that is not this output (a user's notes, another command's
    records) or was made with other settings (``check`` returns the
    difference for a record, None when it matches) is refused with a
    `DataError` before anything in it changes.
    """

    def __init__(self, path: str | os.PathLike, kind: RecordKind, key: Callable[[Record], str] = lambda r: r["id"],
                 check: Callable[[Record], str | None] | None = None):
        self.path = str(path)
        self.key = key
        self.done: set[str] = set()
        self._file = None
        if self.path != "-" and os.path.exists(self.path):
            self._recover(kind, check)
            if not os.access(self.path, os.W_OK):
                raise RlhfctlError(f"{self.path}: cannot write: the file is read-only")
        elif self.path != "-":
            check_out_file(self.path)

    def _recover(self, kind: RecordKind, check: Callable[[Record], str | None] | None) -> None:
        if os.path.isdir(self.path):
            raise DataError(self.path, None, f"is a folder, expected a {kind.name} JSONL file")
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1  # everything after the last newline is torn...
        tail = data[keep:].removeprefix(b"\xef\xbb\xbf" if keep == 0 else b"")
        if tail.strip() and not tail.startswith(b"{"):  # ...when it is the start of a record, as a kill leaves it
            raise DataError(self.path, data.count(b"\n") + 1, f"not a {kind.name} record; {START_OVER}")
        numbered, keep = self._complete_records(data[:keep], kind)
        for lineno, record in numbered:
            problem = check(record) if check is not None else None
            if problem is not None:
                raise DataError(self.path, lineno, f"{problem}; {START_OVER}")
        if keep != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        self.done.update(self.key(record) for _, record in numbered)

    def _complete_records(self, data: bytes, kind: RecordKind) -> tuple[list[tuple[int, Record]], int]:
        """The records of the complete lines, and how many bytes to keep: a last line that is not JSON
        after good records was cut by a crash; anything else that is not a record refuses the file."""
        last = data.count(b"\n")
        numbered: list[tuple[int, Record]] = []
        try:
            for lineno, value in parse_lines(io.BytesIO(data), self.path):
                numbered.append((lineno, kind.check(value, self.path, lineno)))
        except DataError as e:
            if e.line == last and numbered and e.problem.startswith(("invalid JSON", "not valid UTF-8")):
                return numbered, data.rfind(b"\n", 0, len(data) - 1) + 1
            raise DataError(self.path, e.line, f"{e.problem}; {START_OVER}", e.field) from None
        try:
            check_unique_ids(numbered, kind, self.path)
        except DataError as e:
            raise DataError(self.path, e.line, f"{e.problem}; {START_OVER}", e.field) from None
        return numbered, len(data)

    def write(self, record: Record) -> None:
        if self._file is None:
            if self.path == "-":
                self._file = sys.stdout
            else:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(dumps(record) + "\n")
        self._file.flush()
        self.done.add(self.key(record))

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            os.fsync(self._file.fileno())
            self._file.close()
        self._file = None

    def __enter__(self) -> "ResumableWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
