"""Property tests of every JSONL reader: any bytes give records or a `FILE:LINE:` error, never a traceback.

A user's file can hold anything: a Windows editor's byte-order mark, a NUL
from a crashed copy, a number with 5000 digits, JSON nested 100000 deep, a
torn last line. Each reader (docs/design.md §3) must turn all of it into either
records that the next command can use, or a `DataError` that names the file
and line (exit status 2, one line), never another exception.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rlhfctl.errors import DataError
from rlhfctl.records import KINDS, ROLLOUTS, STEPS, dumps, read_records, write_jsonl
from rlhfctl.resumable import ResumableWriter
from rlhfctl.rm.data import read_preferences, read_steps
from rlhfctl.rm.prefs import PrefsConfig, import_pairs

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- the readers, each as "path -> records" -----------------------------------------------------


def _read_kind(kind: str):
    return lambda path: read_records(path, kind)


def _read_prefs(path: str) -> list[dict]:
    data = read_preferences([path])
    return data.pairs + data.binary


def _import_pairs(path: str) -> list[dict]:
    """build-prefs --mode import from a JSONL file."""
    records, _ = import_pairs(PrefsConfig(source=path, out="-", mode="import"), Counter())
    return records


def _resume(kind):
    """What a rerun of rollout or label-prm reads back from the output it left."""

    def read(path: str) -> list[dict]:
        ResumableWriter(path, kind).close()
        return read_records(path, kind, allow_empty=True)

    return read


READERS = {
    **{f"read_records({name})": _read_kind(name) for name in KINDS},
    "train-rm prefs": _read_prefs,
    "train-rm --prm steps": lambda path: read_steps([path]),
    "build-prefs --mode import": _import_pairs,
    "rollout resume": _resume(ROLLOUTS),
    "label-prm resume": _resume(STEPS),
}

# --- what goes in a file ------------------------------------------------------------------------

TEXT = st.text(max_size=12)
CHAT = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": TEXT}), min_size=1, max_size=2)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
# field values a record of some kind might plausibly hold, right or wrong
FIELD_VALUES = st.one_of(TEXT, CHAT, st.lists(TEXT, max_size=3), st.lists(st.booleans(), max_size=3),
                         st.lists(st.floats(0, 1), max_size=3), st.booleans(), st.integers(), JSON_VALUES)
FIELDS = sorted({f for kind in KINDS.values() for f in (*kind.required, *kind.optional)})

# raw JSON text that json.dumps would never write, spliced in as a field value or a whole line
HUGE_INT = b"9" * 5000
DEEP = b"[" * 100_000 + b"]" * 100_000
NEARLY_TOO_DEEP = b"[" * 950 + b"]" * 950
RAW_VALUES = [HUGE_INT, b"-" + b"1" * 400, b"1e999", b"-1e400", b"NaN", b"Infinity", DEEP, NEARLY_TOO_DEEP,
              b'"\\ud800"', b'"\\udc00x"', b'"\\ud83d\\ude00"', b'"\x00"', b'"\xff"', b'"caf\xc3"']
RAW_LINES = [b"", b"   ", b"\t\r", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3(", b"{", b"}", b"[]", b"null",
             b'"text"', b"1", HUGE_INT, DEEP, b'{"prompt": "x"', b"{'prompt': 'x'}", b"\x1c", b"\xe2\x80\xa8"]
BOM = b"\xef\xbb\xbf"


@st.composite
def record_lines(draw) -> bytes:
    """One object line: a kind's fields (some dropped, some extra), each a JSON value or raw odd text."""
    kind = draw(st.sampled_from(sorted(KINDS.values(), key=lambda k: k.name)))
    names = [f for f in kind.required if draw(st.integers(0, 9))]  # now and then a required field is missing
    names += draw(st.lists(st.sampled_from(FIELDS), max_size=3))
    parts = []
    for name in dict.fromkeys(names):
        if draw(st.integers(0, 5)):
            value = json.dumps(draw(FIELD_VALUES), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
        else:
            value = draw(st.sampled_from(RAW_VALUES))
        parts.append(json.dumps(name).encode() + b": " + value)
    return b"{" + b", ".join(parts) + b"}"


LINES = st.one_of(record_lines(), st.sampled_from(RAW_LINES), st.binary(max_size=40),
                  JSON_VALUES.map(lambda v: json.dumps(v).encode()))


@st.composite
def jsonl_files(draw) -> bytes:
    """Lines joined by LF or CRLF, maybe a BOM first, maybe cut anywhere (a torn last line)."""
    lines = draw(st.lists(LINES, max_size=6))
    data = draw(st.sampled_from([b"\n", b"\r\n"])).join(lines)
    if draw(st.booleans()):
        data += b"\n"
    if draw(st.booleans()):
        data = BOM + data
    if data and draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


FILES = st.one_of(jsonl_files(), st.binary(max_size=200))

# --- the property -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _assert_usable_or_located(read, path: Path, data: bytes) -> None:
    """Records the next command can write again, or a DataError at this file and a line in it."""
    path.write_bytes(data)
    try:
        records = read(str(path))
    except DataError as e:
        assert str(e).startswith(f"{path}:"), str(e)
        assert "\n" not in str(e), "an error prints as one line"
        if e.line is not None:
            assert 1 <= e.line <= data.count(b"\n") + 1, str(e)
        return
    for record in records:
        assert isinstance(record, dict)
        dumps(record).encode("utf-8")  # no lone surrogate or other unwritable value got through


@pytest.mark.parametrize("reader", list(READERS))
@FUZZ
@given(data=FILES)
@example(data=b"\xff\xfe{}\n")  # invalid UTF-8
@example(data=b'{"prompt": "a"}\n\x00\n')  # a NUL byte
@example(data=b'{"prompt": "a", "id": ' + HUGE_INT + b"}\n")  # past Python's int-to-str limit
@example(data=b'{"prompt": "a", "chosen": "b", "rejected": "c", "margin": 1' + b"0" * 400 + b"}\n")  # past float range
@example(data=b'{"id": "a", "prompt": "a", "responses": ["b"], "rewards": [1' + b"0" * 400 + b"]}\n")
@example(data=DEEP + b"\n")  # nested past the recursion limit
@example(data=b"\n\n  \n\r\n")  # nothing but blank lines
@example(data=b'{"prompt": "a", "completion": "b", "label": true}\n{"prompt": "c", "compl')  # a torn last line
@example(data=BOM + b'{"prompt": "a", "completion": "b", "label": true}\n')  # a byte-order mark
@example(data=b'{"prompt": "\\ud800", "completion": "b", "label": true}\n')  # a lone surrogate
def test_any_bytes_give_records_or_a_located_error(reader, scratch, data):
    _assert_usable_or_located(READERS[reader], scratch / "data.jsonl", data)


# --- where the error points, and what is not an error -------------------------------------------

# lines no reader accepts, whatever kind it expects
BAD_LINES = [b"\xff\xfe", b"\x00", b'{"prompt": "a"', HUGE_INT, DEEP, b'{"prompt": "\\ud800"}', b"[1, 2]"]
GOOD = {
    "prompts": {"prompt": "Compute 1+2.\n", "answer": "3"},
    "sft": {"prompt": "Compute 1+2.\n", "completion": "Answer: 3"},
    "rollouts": {"id": "r", "prompt": "Compute 1+2.\n", "responses": ["Answer: 3"]},
    "pairs": {"prompt": "Compute 1+2.\n", "chosen": "Answer: 3", "rejected": "Answer: 4"},
    "binary": {"prompt": "Compute 1+2.\n", "completion": "Answer: 3", "label": True},
    "steps": {"prompt": "Compute 1+2.\n", "completions": ["1+2=3", "Answer: 3"], "labels": [True, 0.5]},
}


def _good_lines(kind: str, count: int) -> list[bytes]:
    """``count`` valid records of a kind, with distinct ids and prompts."""
    return [dumps(dict(GOOD[kind], id=f"r{i}", prompt=f"Compute {i}+2.\n")).encode() for i in range(count)]


@pytest.mark.parametrize("kind", list(GOOD))
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(before=st.integers(0, 4), bad=st.sampled_from(BAD_LINES), blank=st.booleans())
def test_the_error_names_the_bad_line(kind, scratch, before, bad, blank):
    """Good records, then a bad one: the error points at the bad line, blank lines counted."""
    lines = _good_lines(kind, before) + ([b"   "] if blank else []) + [bad] + _good_lines(kind, 2)
    path = scratch / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as caught:
        read_records(path, kind)
    assert caught.value.line == before + blank + 1
    assert re.match(rf"{re.escape(str(path))}:{before + blank + 1}: ", str(caught.value))


@pytest.mark.parametrize("kind", list(GOOD))
def test_bom_blank_lines_and_crlf_change_nothing(kind, scratch):
    """A byte-order mark, CRLF ends and blank lines read as the same records as a plain file."""
    lines = _good_lines(kind, 3)
    plain, odd = scratch / "plain.jsonl", scratch / "odd.jsonl"
    plain.write_bytes(b"\n".join(lines) + b"\n")
    odd.write_bytes(BOM + b"\r\n\r\n".join(lines))  # and no newline at the end
    assert read_records(odd, kind) == read_records(plain, kind)


FINITE_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
                                  lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                                  max_leaves=8)  # NaN != NaN, so no NaN where records are compared


@FUZZ
@given(records=st.lists(st.fixed_dictionaries({"prompt": st.one_of(st.text(min_size=1), CHAT), "completion": st.text()},
                                              optional={"meta": st.dictionaries(TEXT, FINITE_JSON_VALUES)}),
                        min_size=1, max_size=5))
def test_written_records_read_back_unchanged(scratch, records):
    """What rlhfctl writes (any text, any unicode, any nested meta), its readers read back as it was."""
    path = scratch / "sft.jsonl"
    write_jsonl(path, records)
    got = read_records(path, "sft")
    assert [{k: v for k, v in r.items() if k != "id"} for r in got] == records


def test_bad_bytes_on_stdin_are_a_located_error(run_main, monkeypatch, tmp_path):
    """``-`` reads stdin as strictly as a file: a byte that is not UTF-8 is ``<stdin>:LINE:``, exit status 2
    (a text stdin would have smuggled it in as a lone surrogate that crashed the run later)."""
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"prompt": "a"}\n{"prompt": "b\xff"}\n'), encoding="utf-8"))
    r = run_main("rollout", "-", "--model", "toy:tiny", "--out", tmp_path / "r.jsonl")
    assert r.code == 2, r.err
    assert r.err.strip() == "error: <stdin>:2: not valid UTF-8 (invalid start byte at byte 13)"
    assert not (tmp_path / "r.jsonl").exists()
