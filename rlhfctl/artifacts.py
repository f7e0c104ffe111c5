"""Model folders, manifests and checkpoints (docs/design.md §3).

A model folder is a plain Hugging Face folder plus ``rlhfctl.json``, the
manifest: which command made it, with which options and inputs (sha256), and
its results. Checkpoints live in ``RUN/checkpoints/step-N/``; each is written
to a temporary folder, flushed to disk and renamed, so a folder named
``step-N`` is complete even after a power cut, and ``checksums.json`` inside
it lets a resume tell a damaged one from an intact one. Nothing is ever
unpickled: weights are safetensors, the rest is loaded with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from rlhfctl import __version__
from rlhfctl.errors import CheckpointError, ModelError
from rlhfctl.records import write_json

MANIFEST = "rlhfctl.json"
CHECKPOINTS = "checkpoints"
CHECKSUMS = "checksums.json"  # in each checkpoint: every file's size and CRC-32
CHECKPOINT_FILES = ("model.safetensors", "state.pt")
_STEP_RE = re.compile(r"^step-(\d+)$")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_inputs(paths: dict[str, str | os.PathLike | None]) -> dict[str, Any]:
    """``{name: {"path", "sha256"}}`` for input files; folders and specs by name only."""
    out: dict[str, Any] = {}
    for name, path in paths.items():
        if path is None:
            continue
        if os.path.isfile(path):
            out[name] = {"path": str(path), "sha256": sha256_file(path)}
        else:
            out[name] = {"path": str(path)}
    return out


def make_manifest(command: str, options: dict[str, Any], inputs: dict[str, Any], results: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "command": command,
        "version": __version__,
        "options": _jsonable(options),
        "inputs": inputs,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "results": results or {},
    }


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    write_json(Path(folder) / MANIFEST, manifest)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, or None if it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON: {e.msg}") from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# --- checkpoints ---------------------------------------------------------------

def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, weights: dict[str, Any], state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``step-N/`` (``model.safetensors`` + ``state.pt`` + ``checksums.json``) atomically and durably.

    ``weights`` is a state dict of tensors; ``state`` holds the optimizer,
    scheduler, RNG and data position, all tensors and plain Python values so
    that `load_checkpoint` can read it with ``weights_only=True``. The files
    reach the disk before the folder is renamed to ``step-N``, and the rename
    before this returns. With ``keep``, only the newest ``keep`` checkpoints
    up to this one are kept (`prune_checkpoints`).
    """
    import torch
    from safetensors.torch import save_file

    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, aliases = untie(weights)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
              metadata={"aliases": json.dumps(aliases)})
    torch.save(state, tmp / "state.pt")
    seal_folder(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
    fsync_path(final.parent.parent)  # holds checkpoints/ itself, new with the first checkpoint
    if keep is not None:
        prune_checkpoints(run_dir, step, keep)
    return final


def prune_checkpoints(run_dir: str | os.PathLike, newest: int, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints up to step ``newest``, the one just written.

    Checkpoints after it are left alone and not counted: they are what a run
    that got further left before it was resumed from an older one, which
    happens when they are damaged. Counting them could delete every intact
    checkpoint and keep only broken ones.
    """
    upto = [path for step, path in list_checkpoints(run_dir) if step <= newest]
    for old in upto[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def seal_folder(folder: Path) -> None:
    """Record the size and CRC-32 of every file in ``folder`` in ``checksums.json``, and flush all to disk.

    CRC-32 rather than sha256: it catches truncation, a flipped byte or a
    block of zeros as surely (damage, not tampering, is the threat) at a third
    of the cost, about 20 ms per 100 MB read back against sha256's 60 ms,
    beside ~300 ms to write those 100 MB.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    record = {p.name: {"size": p.stat().st_size, "crc32": crc32_file(p)} for p in files}
    (folder / CHECKSUMS).write_text(json.dumps({"files": record}, indent=1) + "\n", encoding="utf-8")
    for path in [*files, folder / CHECKSUMS, folder]:
        fsync_path(path)


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename, a new file), to disk; folders are skipped on
    Windows, where they cannot be opened."""
    if os.name == "nt" and path.is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def crc32_file(path: str | os.PathLike) -> str:
    import zlib

    value = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def checkpoint_damage(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder ``path`` is damaged, or None if its files match ``checksums.json``.

    A checkpoint without the record (written by an older rlhfctl) is only
    checked for its files here; loading it is the rest of the check.
    """
    path = Path(path)
    if not (path / CHECKSUMS).is_file():
        missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
        return f"{missing[0]} is missing" if missing else None
    try:
        files = json.loads((path / CHECKSUMS).read_text(encoding="utf-8"))["files"]
        expected = {name: (int(f["size"]), str(f["crc32"])) for name, f in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{CHECKSUMS} is unreadable"
    for name, (size, crc) in expected.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, expected {size}"
        if crc32_file(file) != crc:
            return f"{name} does not match its checksum"
    return None


def load_newest_intact_checkpoint(
    run_dir: str | os.PathLike, report: Callable[[str], None],
) -> tuple[int, Path, dict[str, Any], dict[str, Any]] | None:
    """(step, path, weights, state) of the run's newest intact checkpoint; None if the run has none.

    What a power cut or a full disk leaves (a truncated file, an empty
    ``step-N``) is skipped for the next older checkpoint, with one
    ``report`` line per skipped one. If every checkpoint is damaged,
    `CheckpointError` names each and why.
    """
    skipped: list[tuple[Path, str]] = []
    for step, path in reversed(list_checkpoints(run_dir)):
        why = checkpoint_damage(path)
        if why is None:
            try:
                weights, state = load_checkpoint(path)
            except Exception as e:  # whatever safetensors or torch.load raise on a broken file
                why = f"does not load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'})"
        if why is None:
            for where, reason in skipped:
                report(f"{where}: {reason}: skipped")
            return step, path, weights, state
        skipped.append((path, why))
    if skipped:
        reasons = "; ".join(f"{where.name}: {reason}" for where, reason in skipped)
        raise CheckpointError(f"{Path(run_dir) / CHECKPOINTS}: no intact checkpoint to resume from ({reasons}); "
                              "start again in a new --out")
    return None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, state) of one checkpoint folder."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        weights = {name: f.get_tensor(name) for name in f.keys()}
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))  # tied names `untie` wrote once
    weights.update({alias: weights[name] for alias, name in aliases.items()})
    state = torch.load(path / "state.pt", weights_only=True)
    return weights, state


def untie(weights: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, aliases): each shared tensor kept once; ``aliases`` maps a dropped name to the kept one.

    Tied embeddings (``lm_head.weight`` is ``model.embed_tokens.weight``) are
    one tensor under two names, which safetensors refuses to write twice.
    """
    kept: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name, value in weights.items():
        key = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), tuple(value.stride()))
        if value.numel() and key in kept:
            aliases[name] = kept[key]
        else:
            kept.setdefault(key, name)
            tensors[name] = value
    return tensors, aliases


def publish_folder(out: Path, fill: Callable[[Path], Any]) -> Any:
    """Fill a temporary folder beside ``out``, then rename it to ``out``; what ``fill(folder)`` returns.

    Readers see the old folder or the new one, never a half-written one: an
    old ``out`` is first moved aside, then removed once the new one is in
    place. For a folder written whole (a report); a run folder, which holds
    checkpoints and logs beside the model, gets `publish_model_folder`.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the mode mkdir would
        result = fill(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _swap_in(new: Path, out: Path) -> None:
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def publish_model_folder(out: str | os.PathLike, write_files, manifest: dict[str, Any]) -> None:
    """Write a model into ``out`` (a run folder, whose other files stay) so that a reader never sees a half model.

    ``write_files(tmp)`` saves weights, config and tokenizer into a temporary
    folder; the files are then renamed into ``out`` one by one and the
    manifest goes last, so a folder with ``rlhfctl.json`` is complete.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (out / MANIFEST).unlink(missing_ok=True)
    write_files(tmp)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    write_manifest(out, manifest)
