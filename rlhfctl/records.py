"""Record kinds, JSONL reading and writing (docs/design.md §3).

Records stay plain dicts, so fields rlhfctl does not know (a TRL dataset's
extra columns, a user's ``meta``) travel through every command untouched. Each
kind lists its required and optional fields with a checker; a bad value is
reported as ``FILE:LINE: field 'x': problem``.

Outputs are never half-written: whole files go to a temporary name and are
renamed (`write_jsonl`, `write_json`); line-per-record outputs are appended
and flushed record by record (`rlhfctl.resumable.ResumableWriter`), and
reopening one drops a torn last line and reports the ids already done.

This module imports nothing heavy: no torch, no transformers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from rlhfctl import sources
from rlhfctl.errors import DataError, RlhfctlError

Record = dict[str, Any]
Check = Callable[[Any], str | None]  # returns the problem, or None when fine


# --- field checkers ----------------------------------------------------------

def _is_str(v: Any) -> str | None:
    return None if isinstance(v, str) else f"expected a string, got {_type(v)}"


def _is_str_or_null(v: Any) -> str | None:
    return None if v is None else _is_str(v)


def _is_text_or_chat(v: Any) -> str | None:
    """A string, or a list of chat messages ``{"role", "content"}``."""
    if isinstance(v, str):
        return None
    if isinstance(v, list) and v:
        for i, m in enumerate(v):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                return f"message {i} must be an object with string 'role' and 'content'"
        return None
    return f"expected a string or a non-empty list of chat messages, got {_type(v)}"


def _is_id(v: Any) -> str | None:
    return None if isinstance(v, (str, int)) and not isinstance(v, bool) else f"expected a string or integer, got {_type(v)}"


def _is_scalar_answer(v: Any) -> str | None:
    ok = isinstance(v, (str, int, float)) and not isinstance(v, bool)
    return None if ok else f"expected a string or number, got {_type(v)}"


def _is_number(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and _fits_a_float(v)
    return None if ok else f"expected a finite number, got {_type(v)}"


def _fits_a_float(v: int | float) -> bool:
    """Finite once read as a float: JSON integers are unbounded, and consumers do ``float(x)``."""
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer past 1.8e308
        return False


def _is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {_type(v)}"


def _is_dict(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"expected an object, got {_type(v)}"


def _list_of(item: Check, what: str, nonempty: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"expected a list of {what}, got {_type(v)}"
        if nonempty and not v:
            return f"expected a non-empty list of {what}"
        for i, x in enumerate(v):
            if item(x) is not None:
                return f"item {i}: expected {what}, got {_type(x)}"
        return None

    return check


def _is_label(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)) and 0.0 <= v <= 1.0:
        return None
    return "expected true/false or a number in [0, 1]"


def _is_any(v: Any) -> str | None:
    return None


def _type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(v), type(v).__name__)


# --- record kinds --------------------------------------------------------------

@dataclass(frozen=True)
class RecordKind:
    name: str
    required: dict[str, Check]
    optional: dict[str, Check]
    adapt: Callable[[dict, str, int | None], dict] | None = None  # other formats of the same data, rewritten first

    def check(self, record: Any, path: str, line: int | None) -> Record:
        """Validate one parsed JSON value; return it as a record (id filled in)."""
        if not isinstance(record, dict):
            raise DataError(path, line, f"expected a JSON object, got {_type(record)}")
        if self.adapt is not None:
            record = self.adapt(record, path, line)
        for field, check in self.required.items():
            if field not in record:
                raise DataError(path, line, "missing", field)
            _run_check(check, record[field], path, line, field)
        for field, check in self.optional.items():
            if field in record and record[field] is not None:
                _run_check(check, record[field], path, line, field)
        if "prompt" in record and record.get("id") is None:
            record["id"] = prompt_id(record["prompt"])
        elif "id" in record and isinstance(record["id"], int):
            record["id"] = str(record["id"])
        return record


def _run_check(check: Check, value: Any, path: str, line: int | None, field: str) -> None:
    problem = check(value)
    if problem is not None:
        raise DataError(path, line, problem, field)


_PROMPT_OPTIONAL = {"id": _is_id, "answer": _is_scalar_answer, "task": _is_str, "tests": _is_any,
                    "meta": _is_dict, "choices": _is_any}

PROMPTS = RecordKind("prompts", {"prompt": _is_text_or_chat}, _PROMPT_OPTIONAL)
def _sft_from_trl(record: dict, path: str, line: int | None) -> dict:
    """TRL's language-modelling (``text``) and conversational (``messages``) rows as prompt-completion.

    ``text``: an empty prompt and the text as the completion, so the loss
    covers every token. ``messages``: the prompt is every message before the
    last assistant turn, the completion that turn (earlier assistant turns
    are context, not trained on).
    """
    if "prompt" in record or "completion" in record:
        return record
    rest = {k: v for k, v in record.items() if k not in ("text", "messages")}
    if "text" in record:
        _run_check(_is_str, record["text"], path, line, "text")
        return {**rest, "prompt": "", "completion": record["text"]}
    if "messages" not in record:
        return record
    messages = record["messages"]
    if not isinstance(messages, list):
        raise DataError(path, line, f"expected a list of chat messages, got {_type(messages)}", "messages")
    _run_check(_is_text_or_chat, messages, path, line, "messages")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(path, line, "no assistant message: nothing to train on", "messages")
    if last == 0:
        raise DataError(path, line, "no message before the assistant's: nothing to prompt it with", "messages")
    return {**rest, "prompt": messages[:last], "completion": [messages[last]]}


SFT = RecordKind("sft", {"prompt": _is_text_or_chat, "completion": _is_text_or_chat}, {"id": _is_id, "meta": _is_dict},
                 adapt=_sft_from_trl)
ROLLOUTS = RecordKind(
    "rollouts",
    {"id": _is_id, "prompt": _is_text_or_chat, "responses": _list_of(_is_str, "strings")},
    {**_PROMPT_OPTIONAL,
     "rewards": _list_of(_is_number, "numbers"),
     "correct": _list_of(_is_bool, "booleans"),
     "num_tokens": _list_of(_is_number, "integers"),
     "finish_reasons": _list_of(_is_str, "strings"),
     "extracted": _list_of(_is_str_or_null, "strings or nulls"),
     "extract_rule": _list_of(_is_str_or_null, "strings or nulls"),
     "generator": _is_dict},
)
# responses from anywhere (`grade`, `eval --responses`): a prompt may repeat, one row per response
RESPONSES = RecordKind("responses", {"prompt": _is_text_or_chat},
                       {**_PROMPT_OPTIONAL, "responses": _list_of(_is_str, "strings"), "response": _is_str})
PAIRS = RecordKind(
    "pairs",
    {"prompt": _is_text_or_chat, "chosen": _is_text_or_chat, "rejected": _is_text_or_chat},
    {"id": _is_id, "margin": _is_number, "source": _is_str},
)
BINARY = RecordKind(
    "binary",
    {"prompt": _is_text_or_chat, "completion": _is_text_or_chat, "label": _is_bool},
    {"id": _is_id, "task": _is_str, "source": _is_str},
)
STEPS = RecordKind(
    "steps",
    {"prompt": _is_text_or_chat, "completions": _list_of(_is_str, "strings", nonempty=True),
     "labels": _list_of(_is_label, "labels", nonempty=True)},
    {"id": _is_id, "answer": _is_scalar_answer, "method": _is_str, "n_completions": _is_number},
)
KEYED = RecordKind("keyed", {"id": _is_id}, {})  # side files: any object with an id
KINDS = {k.name: k for k in (PROMPTS, SFT, ROLLOUTS, PAIRS, BINARY, STEPS)}


def prompt_id(prompt: Any) -> str:
    """A stable id for a prompt: the first 12 hex digits of its sha1."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# --- reading -------------------------------------------------------------------

def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; ``-`` reads stdin."""
    path = str(path)
    if path == "-":
        # bytes, so stdin is decoded as strictly as a file (a text stdin may turn bad bytes into surrogates)
        yield from parse_lines(getattr(sys.stdin, "buffer", sys.stdin), "<stdin>")
        return
    if not os.path.exists(path):
        raise RlhfctlError(f"{path}: no such file")
    if os.path.isdir(path):
        raise RlhfctlError(f"{path}: is a folder, expected a JSONL file")
    with open(path, "rb") as f:
        yield from parse_lines(f, path)


# a \uD800-\uDFFF escape: half of a surrogate pair, or a lone surrogate that no UTF-8 text can hold
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_lines(f: Iterable[str | bytes], path: str) -> Iterator[tuple[int, Any]]:
    for lineno, raw in enumerate(f, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if lineno == 1:
            raw = raw.removeprefix("\ufeff")  # the byte-order mark some Windows editors put first
        if not raw.strip():
            continue
        yield lineno, _parse_line(raw, path, lineno)


def _parse_line(raw: str, path: str, lineno: int) -> Any:
    def refuse(token: str) -> Any:  # Python's json reads these; no other JSON reader does, and writing them back is not JSON
        raise DataError(path, lineno, f"invalid JSON: {token} is not a JSON number")

    try:
        value = json.loads(raw, parse_constant=refuse)
    except json.JSONDecodeError as e:
        raise DataError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(path, lineno, "invalid JSON: nested too deeply") from None
    except ValueError:  # an integer past Python's int-to-str limit
        raise DataError(path, lineno, "invalid JSON: an integer with too many digits to read") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        # valid JSON, but the string cannot be written out, hashed or tokenised again
        raise DataError(path, lineno, "invalid JSON: a string holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair)")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` holds a lone surrogate; a loop, not recursion, for deep values."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def iter_values(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line or row number, value) of a JSONL file or of any other source `rlhfctl.sources` reads."""
    return sources.iter_rows(path) if sources.is_table(path) else iter_json_lines(path)


def read_records(path: str | os.PathLike, kind: RecordKind | str, allow_empty: bool = False,
                 fields: Mapping[str, str] | None = None) -> list[Record]:
    """All records of one kind from a JSONL file or another source (`rlhfctl.sources`), validated.

    `fields` renames columns to fields (``{"prompt": "question"}``). Raises
    `DataError` at the first bad row, and for an empty source unless
    ``allow_empty``.
    """
    kind = KINDS[kind] if isinstance(kind, str) else kind
    shown = "<stdin>" if str(path) == "-" else str(path)
    numbered = [(n, kind.check(sources.map_fields(value, fields or {}, f"{shown}:{n}"), shown, n)) for n, value in iter_values(path)]
    if not numbered and not allow_empty:
        expected = "rows" if sources.is_table(path) else "JSONL, one object per line"
        raise DataError(shown, None, f"no records (expected {kind.name} {expected})")
    check_unique_ids(numbered, kind, shown)
    return [r for _, r in numbered]


def check_unique_ids(numbered: list[tuple[int, Record]], kind: RecordKind, path: str) -> None:
    if kind not in (PROMPTS, ROLLOUTS):
        return
    seen: dict[str, int] = {}
    for lineno, r in numbered:
        if r["id"] in seen:
            raise DataError(path, lineno, f"id {r['id']!r} appears twice (first on line {seen[r['id']]})", "id")
        seen[r["id"]] = lineno


# --- writing -------------------------------------------------------------------

METRICS = "metrics.jsonl"  # a training run's log: one JSON object per optimiser step


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run folder's metrics.jsonl ([] before it has one); a torn last line (a killed run) is dropped.

    Any other line that is not a JSON object with a numeric ``step`` is an
    error naming its line.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise RlhfctlError(f"{path}: cannot read: {e.strerror}") from None
    numbered = [(i, raw) for i, raw in enumerate(lines, start=1) if raw.strip()]
    rows = []
    for position, (lineno, raw) in enumerate(numbered):
        row = _parse_metrics_line(raw, path, lineno, is_last=position == len(numbered) - 1)
        if row is not None:
            rows.append(row)
    return rows


def _parse_metrics_line(raw: bytes, path: Path, lineno: int, is_last: bool) -> dict[str, Any] | None:
    try:
        row = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if is_last:
            return None  # cut mid-write when the run was killed
        reason = f"invalid JSON: {e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else "not valid UTF-8"
        raise DataError(str(path), lineno, reason) from None
    if not isinstance(row, dict):
        raise DataError(str(path), lineno, "expected a JSON object (one per step)")
    if "step" not in row:
        raise DataError(str(path), lineno, "missing", "step")
    if _is_number(row["step"]) is not None:
        raise DataError(str(path), lineno, "expected a number", "step")
    return row


def dumps(record: Record) -> str:
    """One record as a JSON line; a NaN or infinity in it is a ValueError, never a bare ``NaN`` token."""
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


def check_out_file(path: str | os.PathLike | None, flag: str = "--out") -> None:
    """Refuse, before any work, an output file path that is a folder or lies where nothing can be written."""
    if path is None or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise RlhfctlError(f"{path}: is a folder; {flag} needs a file path")
    parent = nearest_existing(path.parent)
    if not parent.is_dir():
        raise RlhfctlError(f"{path}: cannot write: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RlhfctlError(f"{path}: cannot write: {parent} is not writable")


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its closest existing parent: where creating it would start."""
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it; one line if that cannot be done."""
    try:
        _atomic_write_text(Path(path), text)
    except OSError as e:
        raise RlhfctlError(f"{path}: cannot write: {e.strerror or e}") from None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically; ``-`` writes to stdout."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(path, text)


def write_jsonl(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """All records at once, atomically; ``-`` writes to stdout."""
    text = "".join(dumps(r) + "\n" for r in records)
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text)
