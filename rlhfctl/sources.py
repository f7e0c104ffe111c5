"""Where records come from besides JSONL: Parquet, CSV/TSV, Arrow, a `datasets` folder, a Hub dataset.

Every reader yields ``(row number, dict)``, so `rlhfctl.records` validates
them exactly as JSONL lines and a bad value is reported as
``FILE:ROW: field 'x': problem``. Rows are numbered from 1; in CSV/TSV the
number is the file's line (the header is line 1), so editors can jump to it.

Sources (docs/design.md §3):

- ``data.parquet``, ``data.arrow`` (a `datasets` Arrow file): read in batches,
  nested columns (chat messages, lists) arrive as lists and dicts;
- ``data.csv``, ``data.tsv``: every cell is a string;
- a folder written by `datasets`' ``save_to_disk`` (``FOLDER`` or
  ``FOLDER@split`` when it holds several splits);
- ``hf:org/name[:config][@split]``: a Hub dataset through `datasets` (its
  cache; ``HF_HUB_OFFLINE=1`` reads only the cache). The split defaults to
  ``train``.

Column mapping (``--field prompt=question``) renames columns to the fields a
command reads; the other columns travel along untouched.
"""

from __future__ import annotations

import csv
import os
from contextlib import contextmanager
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlhfctl.console import Progress
from rlhfctl.errors import RlhfctlError

HUB_PREFIX = "hf:"
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv", ".arrow")
_BATCH_ROWS = 1024
LARGE = 100_000  # rows from which reading shows a progress bar


def is_table(spec: str | os.PathLike) -> bool:
    """Whether `spec` names a source this module reads (anything else is JSONL)."""
    spec = str(spec)
    if spec.startswith(HUB_PREFIX):
        return True
    if Path(spec).suffix.lower() in TABLE_SUFFIXES:
        return True
    return _saved_dataset(spec) is not None


def iter_rows(spec: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(row number, row) for every row of the source `spec` (see the module docstring).

    A source of `LARGE` rows or more shows a progress bar on stderr.
    """
    total, rows = _open(str(spec))
    with Progress(f"reading {Path(str(spec)).name}", total or 0, 0, enabled=(total or 0) >= LARGE) as bar:
        for numbered in rows:
            yield numbered
            bar.advance()


def _open(spec: str) -> tuple[int | None, Iterator[tuple[int, Any]]]:
    """(the row count, None when it is unknown without reading; the numbered rows) of `spec`."""
    saved = _saved_dataset(spec)
    if spec.startswith(HUB_PREFIX) or saved is not None:
        dataset = _hub_dataset(spec) if saved is None else _load_saved(*saved, spec)
        return len(dataset), _dataset_rows(dataset)
    if not os.path.isfile(spec):
        raise RlhfctlError(f"{spec}: no such file")
    suffix = Path(spec).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return None, _csv_rows(spec, "\t" if suffix == ".tsv" else ",")
    return _arrow_rows(spec, suffix)


def map_fields(row: Any, fields: Mapping[str, str], where: str) -> Any:
    """`row` with column ``fields[name]`` renamed to ``name``; RlhfctlError naming a column that is absent."""
    if not fields or not isinstance(row, dict):
        return row
    missing = [column for column in fields.values() if column not in row]
    if missing:
        have = ", ".join(sorted(map(str, row))) or "none"
        raise RlhfctlError(f"{where}: --field maps from column '{missing[0]}', which the data lacks (columns: {have})")
    renamed = {column: row[column] for column in fields.values()}
    rest = {k: v for k, v in row.items() if k not in fields.values()}
    rest.update({name: renamed[column] for name, column in fields.items()})
    return rest


def parse_field_map(items: list[str] | None) -> dict[str, str]:
    """``["prompt=question", ...]`` as ``{"prompt": "question"}``; RlhfctlError for a malformed item."""
    fields: dict[str, str] = {}
    for item in items or []:
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise RlhfctlError(f"--field {item!r}: expected FIELD=COLUMN, e.g. --field prompt=question")
        if name.strip() in fields:
            raise RlhfctlError(f"--field {item!r}: field '{name.strip()}' is mapped twice")
        fields[name.strip()] = column.strip()
    return fields


def _csv_rows(path: str, delimiter: str) -> Iterator[tuple[int, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        except (csv.Error, UnicodeDecodeError) as e:
            raise RlhfctlError(f"{path}:{reader.line_num}: not readable as {'TSV' if delimiter == chr(9) else 'CSV'}: {e}") from None


def _arrow_rows(path: str, suffix: str) -> tuple[int | None, Iterator[tuple[int, Any]]]:
    import pyarrow.parquet as pq

    with _readable(path, suffix):
        if suffix == ".parquet":
            table = pq.ParquetFile(path)
            return table.metadata.num_rows, _numbered(table.iter_batches(batch_size=_BATCH_ROWS), path, suffix)
        return None, _numbered(_arrow_batches(path), path, suffix)


def _numbered(batches: Iterator[Any], path: str, suffix: str) -> Iterator[tuple[int, Any]]:
    with _readable(path, suffix):
        row = 0
        for batch in batches:
            for values in batch.to_pylist():
                row += 1
                yield row, values


@contextmanager
def _readable(path: str, suffix: str) -> Iterator[None]:
    """Arrow's and the file system's errors as one line naming the file."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise RlhfctlError(f"{path}: not readable as {suffix[1:].capitalize()}: {e}") from None


def _arrow_batches(path: str):
    import pyarrow as pa

    try:  # `datasets` writes the streaming format; other tools the file format
        return iter(pa.ipc.open_stream(path))
    except pa.ArrowInvalid:
        return iter(pa.ipc.open_file(path))


def _saved_dataset(spec: str) -> tuple[Path, str | None] | None:
    """(folder, split) when `spec` is a `save_to_disk` folder, optionally with ``@split``; else None."""
    folder, split = spec, None
    if not os.path.isdir(folder) and "@" in spec:
        folder, split = spec.rsplit("@", 1)
    path = Path(folder)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return path, split
    return None


def _load_saved(folder: Path, split: str | None, spec: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as e:  # noqa: BLE001 - any failure inside datasets is a bad folder to the user
        raise RlhfctlError(f"{spec}: not readable as a datasets folder: {e}") from None
    return _one_split(loaded, split, spec, f"{folder}@SPLIT")


def _hub_dataset(spec: str):
    import datasets

    name, split = spec[len(HUB_PREFIX):], None
    if "@" in name:
        name, split = name.rsplit("@", 1)
    name, _, config = name.partition(":")
    if not name or name.count("/") > 1:
        raise RlhfctlError(f"{spec}: expected hf:ORG/NAME[:CONFIG][@SPLIT]")
    try:
        loaded = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # noqa: BLE001 - network, offline cache miss, unknown split: one line each
        offline = " (offline: only the local datasets cache is read)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise RlhfctlError(f"{spec}: cannot load the dataset{offline}: {_first_line(e)}") from None
    return loaded


def _one_split(loaded, split: str | None, spec: str, hint: str):
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    if split is None or split not in loaded:
        have = ", ".join(loaded)
        what = "holds several splits" if split is None else f"has no split '{split}'"
        raise RlhfctlError(f"{spec}: {what} ({have}); name one as {hint}")
    return loaded[split]


def _dataset_rows(dataset) -> Iterator[tuple[int, Any]]:
    for start in range(0, len(dataset), _BATCH_ROWS):
        batch = dataset[start:start + _BATCH_ROWS]  # columns -> lists
        columns = list(batch)
        for offset in range(len(batch[columns[0]]) if columns else 0):
            yield start + offset + 1, {c: batch[c][offset] for c in columns}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
