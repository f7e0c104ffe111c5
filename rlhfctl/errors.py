"""User-facing errors.

Every mistake a user can make (bad data, a wrong flag, a missing path) is an
`RlhfctlError`. The CLI prints it as one line and exits with status 2;
`RLHFCTL_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations


class RlhfctlError(Exception):
    """A user error: printed as one line, exit status 2."""

    exit_code = 2


class DataError(RlhfctlError):
    """A record in an input file is malformed.

    Formats as ``FILE:LINE: field 'x': problem`` so editors can jump to it.
    """

    def __init__(self, path: str, line: int | None, problem: str, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = problem if field is None else f"field '{field}': {problem}"
        super().__init__(f"{where}: {what}")


class ConfigError(RlhfctlError):
    """An option or option combination is invalid."""


class ModelError(RlhfctlError):
    """A model spec or model folder cannot be used as asked."""


class CheckpointError(RlhfctlError):
    """No checkpoint of a run can be resumed from: every one is damaged."""


class EngineError(RlhfctlError):
    """A generation engine failed or stopped answering mid-run (not the user's mistake): exit status 1."""

    exit_code = 1
