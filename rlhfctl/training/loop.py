"""Machinery every training command shares: schedule, batches, checkpoints, logs.

Exact resume rests on three things: batches are a pure function of (seed,
epoch), so the data position is just the step number; the toy models have no
dropout; and a checkpoint holds weights, optimizer, scheduler and RNG state.
A resumed run therefore logs the same metrics as an unbroken one.

Under accelerate every rank builds the same global batch and takes its own
slice (``batch[rank::world]``); losses are normalised by the global count, so
two ranks compute the same gradient as one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator

from rlhfctl.artifacts import load_newest_intact_checkpoint, save_checkpoint
from rlhfctl.console import Progress, log
from rlhfctl.errors import ConfigError
from rlhfctl.locks import locked
from rlhfctl.records import METRICS, atomic_write_text, nearest_existing, read_metrics, write_json
from rlhfctl.training.row_sparse import RowSparseAdamW, clip_grad_norm, has_sparse_gradients, sparse_input_embedding
from rlhfctl.training.scale import (
    check_resumable, checkpoint_weights, is_sharded, optimizer_state, restore_optimizer, restore_weights,
    trainable_parameters,
)

RUN_FILE = "run.json"


@dataclass(frozen=True)
class Schedule:
    """The flags every training command shares (docs/design.md §3b)."""

    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 64  # global, in records
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 100
    keep_checkpoints: int = 2
    compile: bool = False  # torch.compile the model (inductor, dynamic shapes)
    sparse_embedding: bool = True  # an untied input embedding: row-sparse gradients and AdamW state (row_sparse.py)

    def total_steps(self, num_records: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * math.ceil(num_records / self.batch_size)))

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be at least 1, got {self.max_steps}")
        check_positive("--epochs", self.epochs)
        check_positive("--lr", self.lr)
        check_in_range("--warmup-ratio", self.warmup_ratio, 0.0, 1.0)
        check_in_range("--weight-decay", self.weight_decay, 0.0, math.inf)
        check_positive("--max-grad-norm", self.max_grad_norm)
        if self.save_every < 1:
            raise ConfigError(f"--save-every must be at least 1, got {self.save_every}")


def check_positive(flag: str, value: float) -> None:
    """A float flag that must be a positive number (``not value > 0`` also catches NaN, which compares false)."""
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{flag} must be a positive number, got {value}")


def check_in_range(flag: str, value: float, low: float, high: float) -> None:
    """A float flag that must lie in [low, high] (NaN never does)."""
    if not low <= value <= high or math.isinf(value):
        where = f"a number >= {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{flag} must be {where}, got {value}")


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def bucketed_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, pool: int = 32) -> list[list[int]]:
    """One epoch of batches (lists of record indices), grouped by length.

    Records are shuffled, cut into pools of ``pool`` batches, sorted by length
    inside each pool and cut into batches; the batch order is shuffled again.
    Padding stays within a bucket of similar lengths, and the order is a pure
    function of (seed, epoch).
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        group = sorted(order[start:start + batch_size * pool], key=lambda i: lengths[i])
        batches.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def batch_stream(lengths: list[int], batch_size: int, seed: int, start_step: int) -> Iterator[tuple[int, list[int]]]:
    """(epoch, batch) for steps ``start_step, start_step + 1, ...``, endlessly."""
    per_epoch = math.ceil(len(lengths) / batch_size)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        for batch in bucketed_batches(lengths, batch_size, seed, epoch)[skip:]:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def shard(batch: list, rank: int, world: int) -> tuple[list, float]:
    """This rank's slice of a global batch, and the weight of its loss.

    A batch smaller than the world leaves some ranks nothing; they still run
    a forward and backward pass (DDP needs every rank) on a borrowed record
    with weight 0, so the gradient is exactly the other ranks'.
    """
    mine = batch[rank::world]
    return (mine, 1.0) if mine else (batch[:1], 0.0)


def manifest_options(config) -> dict[str, Any]:
    """A command's config as its manifest and ``run.json`` keep the options: one key per flag
    (underscores), plain values. Nested configs (the schedule, the scale options, reward shaping)
    are flattened after the other fields, through their ``as_options()`` where they have one."""
    options = asdict(config)
    nested = [f.name for f in fields(config) if is_dataclass(getattr(config, f.name))]
    for name in nested:
        options.pop(name)
    for name in nested:
        value = getattr(config, name)
        options.update(value.as_options() if hasattr(value, "as_options") else asdict(value))
    return options


# --- run folder ------------------------------------------------------------------

def check_run_dir(out: Path, command: str, options: dict[str, Any], resume: bool, identity: tuple[str, ...] = ()) -> None:
    """Check that ``out`` may be (re)used; writes nothing (`claim_run_dir` does, once the run starts).

    A folder that already holds a run is only reused with ``--resume``; then
    the options named in ``identity`` must match the first run's (resuming a
    GRPO run as PPO is an error, not a silent mix).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; --out needs a folder for the run")
    place = nearest_existing(out)
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        raise ConfigError(f"{out}: cannot write the run there ({place} is not a writable folder)")
    run_file = out / RUN_FILE
    if not run_file.is_file():
        return
    if not resume:
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    earlier = json.loads(run_file.read_text())
    if earlier.get("command") != command:
        raise ConfigError(f"{out} holds a {earlier.get('command')} run, not {command}: choose another --out")
    for key in identity:  # a key the first run did not record is not checked
        if earlier["options"].get(key, options.get(key)) != options.get(key):
            raise ConfigError(
                f"{out} was started with --{key.replace('_', '-')} {earlier['options'].get(key)}, "
                f"cannot resume it with {options.get(key)}"
            )


@contextmanager
def claim_run_dir(out: Path, command: str, options: dict[str, Any], main: bool = True) -> Iterator[None]:
    """Record the run in ``out/run.json`` for the block that trains it; if the block fails before
    a training step is logged, take back everything the claim and the block added to ``out``.

    A start that fails (a model that does not load, a prompt that does not
    render, a bad option found late) thus leaves ``out`` as it was, and the
    corrected command needs no ``--resume``. Only new entries go: a folder
    that existed keeps its files, and a resumed run (its ``run.json`` already
    there) is never touched. Rank 0 writes and undoes, and holds the folder's
    lock (`locks.locked`) meanwhile; the caller syncs ranks.
    """
    with locked(out, folder=True) if main else nullcontext():  # a second run on this folder is refused meanwhile
        undo = _write_run_file(out, command, options) if main and not (out / RUN_FILE).is_file() else None
        try:
            yield
        except BaseException:
            if undo is not None and not _logged_a_step(out):
                undo()
            raise


def _write_run_file(out: Path, command: str, options: dict[str, Any]):
    """Write ``out/run.json``, making ``out`` if need be; returns a function that removes what
    was added to ``out`` from here on (all of ``out`` and its new parents if it did not exist)."""
    before = {p.name for p in out.iterdir()} if out.is_dir() else None
    top = out  # the outermost folder made here: --out, or a missing parent of it
    while not top.parent.exists():
        top = top.parent
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_FILE, {"command": command, "options": options})

    def undo() -> None:
        if before is None:
            shutil.rmtree(top, ignore_errors=True)
            return
        for p in out.iterdir():
            if p.name in before:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    return undo


def _logged_a_step(out: Path) -> bool:
    path = out / METRICS
    return path.is_file() and any(line.strip() and _step_of(line) >= 1 for line in path.read_text().splitlines())


MEMORY_KEYS = ("peak_rss_mb", "cuda_allocated_mb", "cuda_reserved_mb")  # in every metrics row; they vary run to run


def peak_memory() -> dict[str, float]:
    """This process's peak memory so far, in MiB: ``peak_rss_mb``, the resident set (``getrusage``);
    on CUDA also ``cuda_allocated_mb`` and ``cuda_reserved_mb``, the caching allocator's peaks on this device."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peaks = {"peak_rss_mb": round(rss / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
        peaks["cuda_reserved_mb"] = round(torch.cuda.max_memory_reserved() / (1 << 20), 1)
    return peaks


class MetricsLog:
    """``metrics.jsonl``: one object per step. On resume, steps after the
    checkpoint are cut, because the resumed run logs them again."""

    def __init__(self, path: Path, resume_step: int, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if line.strip() and _step_of(line) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))  # a kill here keeps the old file whole

    def write(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # a torn line: drop it


# --- checkpoints -----------------------------------------------------------------

def seed_global_rngs(seed: int) -> None:
    """Seed torch's and Python's global generators from ``--seed``, before the model is built.

    Model init, data order and sampling have their own seeded generators, but
    LoRA's adapter init and any dropout draw from the global ones, which a
    process may start in any state: unseeded, two runs with one seed differ.
    """
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(run_dir: Path, step: int, accelerator, model, optimizer, keep: int, scheduler=None, others=()) -> None:
    """All ranks call this (sharded weights are gathered); rank 0 writes. Frozen weights are left out.

    ``others``: (name, model, optimizer) that train beside ``model`` (PPO's
    critic), kept in the same checkpoint: weights under ``name::``, optimizer
    state as ``name_optimizer``.
    """
    weights = dict(checkpoint_weights(accelerator, model))
    state = {"step": step, "optimizer": optimizer_state(accelerator, model, optimizer)}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["rng"] = rng_state()
    for name, other, other_optimizer in others:
        weights.update({f"{name}::{k}": v for k, v in checkpoint_weights(accelerator, other).items()})
        state[f"{name}_optimizer"] = optimizer_state(accelerator, other, other_optimizer)
    if accelerator.is_main_process:
        save_checkpoint(run_dir, step, weights, state, keep=keep)
    accelerator.wait_for_everyone()


def restore_training_state(run_dir: Path, accelerator, model, optimizer, scheduler=None, others=()) -> int:
    """Load the newest intact checkpoint into the models, optimizers and scheduler (``others`` as
    `save_training_state` has them); the step it was saved at, 0 without one."""
    found = load_newest_intact_checkpoint(run_dir, lambda line: log(line, accelerator.is_main_process))
    if found is None:
        return 0

    _, path, weights, state = found
    where = str(path)
    prefixes = tuple(f"{name}::" for name, _, _ in others)
    restore_weights(accelerator, model, {k: v for k, v in weights.items() if not k.startswith(prefixes)}, where)
    restore_optimizer(accelerator, model, optimizer, state["optimizer"], where)
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    for name, other, other_optimizer in others:
        prefix = f"{name}::"
        restore_weights(accelerator, other, {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, where)
        restore_optimizer(accelerator, other, other_optimizer, state[f"{name}_optimizer"], where)
    set_rng_state(state["rng"])
    log(f"resuming from step {state['step']}", accelerator.is_main_process)
    return int(state["step"])


# --- the loop --------------------------------------------------------------------

@dataclass
class Training:
    """What one training run holds while it runs."""

    out: Path
    accelerator: Any
    model: Any  # wrapped by accelerate
    optimizer: Any
    scheduler: Any
    total: int  # optimiser steps in the whole run
    start: int  # steps already done (from --resume)


def start_training(accelerator, model, schedule: Schedule, total: int, out: Path, resume: bool) -> Training:
    """AdamW + warmup-cosine, prepared by accelerate, restored from a checkpoint on resume.

    The optimizer holds only the parameters that train (with LoRA: adapters
    and heads), so frozen weights cost no optimizer memory.
    """
    import torch

    check_resumable(accelerator, resume)
    row_sparse = use_row_sparse(accelerator, model, schedule.sparse_embedding, schedule.compile)
    optimizer = adamw(trainable_parameters(model), lr=schedule.lr, weight_decay=schedule.weight_decay, row_sparse=row_sparse)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, int(schedule.warmup_ratio * total)))
    if schedule.compile:
        compile_model(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = restore_training_state(out, accelerator, model, optimizer, scheduler) if resume else 0
    return Training(out, accelerator, model, optimizer, scheduler, total, start)


def adamw(params, lr: float, weight_decay: float = 0.0, row_sparse: bool = False):
    """AdamW with torch's fused kernel (one kernel per step for all parameters) where the
    device has one; the plain loop otherwise. Same update rule either way. ``row_sparse``:
    `RowSparseAdamW`, which also steps a sparse-gradient embedding by row."""
    import torch

    optimizer = RowSparseAdamW if row_sparse else torch.optim.AdamW
    params = list(params)
    try:
        return optimizer(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return optimizer(params, lr=lr, weight_decay=weight_decay)


def use_row_sparse(accelerator, model, enabled: bool, compiled: bool = False) -> bool:
    """Switch ``model``'s input embedding to row-sparse gradients where it can (`row_sparse.py`): when
    ``enabled`` (not --dense-embedding), in one process (DDP, FSDP and DeepSpeed reduce and shard dense
    gradients), not compiled; True if it did."""
    if not enabled or compiled or accelerator.num_processes > 1 or is_sharded(accelerator):
        return False
    return sparse_input_embedding(model)


def compile_model(model) -> None:
    """Compile the model's forward and backward in place with TorchInductor (`--compile`).

    ``dynamic=True`` compiles once for all batch shapes (length buckets would
    otherwise each trigger a recompile). In place, so parameter names, the
    state dict and `save_pretrained` are unchanged. The first steps pay the
    compilation (tens of seconds); on a CPU inductor needs a C++ compiler.
    """
    import shutil

    import torch

    if not torch.cuda.is_available() and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ConfigError("--compile needs a C++ compiler on a CPU (TorchInductor builds C++ kernels); install g++ or drop --compile")
    model.compile(dynamic=True)


def fit(run: Training, lengths: list[int], schedule: Schedule, step_fn, name: str) -> dict[str, Any]:
    """Run the optimiser steps ``run.start + 1 .. run.total``; return the last metrics.

    ``step_fn(batch_indices) -> dict`` does forward, backward and
    `optimizer_step` for one global batch and returns its metrics
    (with a ``loss``). This loop adds step/epoch/lr/timing, writes
    ``metrics.jsonl``, checkpoints every ``save_every`` steps and at the end.
    """
    import time

    main = run.accelerator.is_main_process
    metrics = MetricsLog(run.out / METRICS, run.start, enabled=main)
    stream = batch_stream(lengths, schedule.batch_size, schedule.seed, run.start)
    last: dict[str, Any] = {}
    run.model.train()
    with Progress(name, run.total, run.start, main) as progress:
        for step in range(run.start + 1, run.total + 1):
            epoch, batch = next(stream)
            tic = time.perf_counter()
            values = step_fn(batch)
            last = {"step": step, "epoch": epoch, **values, "lr": run.scheduler.get_last_lr()[0],
                    "samples_per_s": len(batch) / (time.perf_counter() - tic), **peak_memory()}
            metrics.write(last)
            progress.advance(progress_info(values))
            if step % schedule.save_every == 0 and step < run.total:
                save_training_state(run.out, step, run.accelerator, run.model, run.optimizer, schedule.keep_checkpoints, run.scheduler)
    if not last and main:  # resumed from the final checkpoint: its metrics are on disk
        last = (read_metrics(run.out) or [{}])[-1]
    save_training_state(run.out, run.total, run.accelerator, run.model, run.optimizer, schedule.keep_checkpoints, run.scheduler)
    return last


PROGRESS_ACCURACIES = ("accuracy", "pair_acc", "binary_acc", "step_acc")  # per-batch accuracies a step may report


def progress_info(values: dict[str, Any]) -> str:
    """What the progress display shows after a step: its loss and any accuracy it measured."""
    shown = [f"loss {values['loss']:.4f}"]
    shown += [f"{key} {values[key]:.3f}" for key in PROGRESS_ACCURACIES if isinstance(values.get(key), (int, float))]
    return "  ".join(shown)


def optimizer_step(accelerator, model, optimizer, max_grad_norm: float, scheduler=None) -> float | None:
    """Clip, step, schedule (where there is a scheduler), zero; returns the pre-clip gradient norm."""
    grad_norm = None
    if max_grad_norm > 0:
        grad_norm = clip_gradients(accelerator, model, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def clip_gradients(accelerator, model, max_grad_norm: float) -> float | None:
    """Clip to ``max_grad_norm``; the pre-clip norm. DeepSpeed clips inside its own step
    (its config's ``gradient_clipping``) and may report no norm: then None."""
    params = list(model.parameters())
    if has_sparse_gradients(params):  # a row-sparse embedding: one process, so nothing to reduce or unscale first
        return float(clip_grad_norm(params, max_grad_norm))
    norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    return None if norm is None else float(norm)
