"""train-sft throughput: rlhfctl vs TRL's ``SFTTrainer`` (samples/s, same toy model and data).

What it measures
    Optimiser-step throughput (records per second) of supervised fine-tuning
    on the toy task's ``sft.jsonl`` (prompt/completion records, completion-only
    loss), for

    * rlhfctl: ``rlhfctl.training.sft.run(SFTConfig(...))``, the code path of
      ``rlhfctl train-sft``, with its defaults (length-bucketed batches, the
      batch's shared start run once, fused AdamW, per-step metrics and
      progress bar);
    * ``trl``, the baseline of the target: ``trl.SFTTrainer`` with
      ``trl.SFTConfig`` at its defaults, as a user who changes nothing gets
      them: fused AdamW, random batches padded to their longest record, its
      fused LM-head loss, completion-only loss (its default for
      prompt-completion data; checked), and gradient checkpointing on;
    * ``trl-no-ckpt``: the same with gradient checkpointing off, which
      recomputes nothing, like rlhfctl: the like-for-like comparison.

    All three train a fresh ``toy:small`` (``load_causal_lm("toy:small",
    seed=0)``, tokenizer ``load_tokenizer("toy:small")``) with the same batch
    size, peak learning rate, linear-warmup + cosine schedule (same warmup
    steps), grad clipping (1.0), no weight decay, ``max_length`` and number
    of steps, at the same precision: fp32, or bf16 autocast with ``--bf16``
    (``train-sft --bf16``, which on a CPU trains with eager attention; TRL's
    own default on a CPU is bf16, which the default run turns off to match
    rlhfctl's fp32). TRL runs on the CPU
    (``use_cpu=True``) with ``report_to=[]``, no checkpoint saving,
    ``logging_steps=1`` (rlhfctl also logs every step, to metrics.jsonl) and
    ``dataloader_num_workers=0``. With ``--compile`` rlhfctl compiles its
    model (``train-sft --compile``; the one-off compilation falls in the
    untimed warm-up steps); with ``--trl-compile`` both TRL sides do
    (``torch_compile=True``): compare compiled with compiled. TRL's random
    batches change shape every step, so it may recompile after the warm-up;
    those steps count.

How it is timed
    Each side runs in its own subprocess, so imports, model load, dataset
    tokenisation and start-up are outside the timing, and the peak RSS
    (``ru_maxrss`` at exit) is that side's alone. The subprocesses run in
    lock-step (``_lockstep.py``): after each optimiser step a side blocks until
    the driver releases it, and the driver takes the sides in turn step by step,
    so adjacent steps of the sides see the same background load on a noisy
    machine. A step is timed from its release to the end of the step (rlhfctl:
    its metrics.jsonl write, by wrapping ``MetricsLog.write``; TRL: the
    ``on_step_end`` callback), so everything the loop does between steps (data
    loading, collation, logging, progress bar) counts and waiting does not.
    The first ``--warmup`` steps are not timed. A round's throughput is
    ``steps * batch_size / sum(step times)``; the script runs ``--repeats``
    rounds (fresh processes) and reports, per side, the median over rounds,
    each ratio as the median of the per-round ratios, and, as a check, the
    median of the step-by-step ratios (adjacent steps).

Where the ratio comes from
    Each side also counts the token columns its training forward passes
    compute per step (rows x sequence length, padding included), by wrapping
    ``LlamaModel.forward`` (recomputation by gradient checkpointing is not
    counted). Each ratio splits into TRL's columns / rlhfctl's (how much less
    work rlhfctl's batches hold) times the time per column (how fast each
    side computes one; gradient checkpointing makes TRL's slower): both are
    printed.

Threads
    All workers use the same torch thread count (``--threads``, default
    torch's own: one per core). On a shared CPU whose cores other jobs also
    use, the default can be many times slower than one thread, because every
    parallel op waits for a descheduled thread: on a 2-core box running one
    other training job, a toy:small step took ~8x longer with 2 threads than
    with 1. The result is then bound by op count rather than arithmetic;
    ``--threads 1`` gives the compute-bound comparison. Report which you ran.

Target
    rlhfctl / TRL (as shipped, same precision) >= 1.5x samples/s. The
    like-for-like ratio is printed with it.

    Large vocabulary (``--shape qwen2.5-0.5b --layers 2 --batch-size 8``,
    records of ~256 tokens, fp32, no gradient checkpointing on either side:
    rlhfctl against ``trl-no-ckpt``): peak RSS <= 0.6x TRL's and samples/s
    >= 1.2x TRL's. ``--model PATH`` runs any model folder instead of
    toy:small; ``--shape`` builds a randomly initialised model of a public
    checkpoint's architecture and vocabulary with ``--layers`` layers
    (``_shapes.py``).

How to run
    pip install -e '.[bench]'          # TRL
    python benchmarks/sft_speed.py                     # toy data made in a temp dir
    python benchmarks/sft_speed.py --data data/toy --steps 40 --warmup 5 --repeats 3
    python benchmarks/sft_speed.py --threads 1         # compute-bound comparison on a busy machine
    python benchmarks/sft_speed.py --compile           # rlhfctl with train-sft --compile
    python benchmarks/sft_speed.py --compile --trl-compile  # both sides compiled
    python benchmarks/sft_speed.py --bf16              # every side in bf16 autocast (TRL's CPU default)
    python benchmarks/sft_speed.py --only rlhfctl      # one side, e.g. under a profiler
    python benchmarks/sft_speed.py --shape qwen2.5-0.5b --layers 2 --batch-size 8 --steps 10 --warmup 2 --threads 1

The last line of output is one JSON object with all the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lockstep import Gate, Worker, lockstep  # noqa: E402
from _shapes import add_model_args, shaped_inputs  # noqa: E402

TARGET = 1.5
SHAPE_TARGETS = {"peak_rss_ratio": 0.6, "samples_ratio": 1.2}  # with --shape, rlhfctl against trl-no-ckpt (like for like)
MODEL = "toy:small"
SIDES = ("rlhfctl", "trl", "trl-no-ckpt")  # the target is rlhfctl / trl; trl-no-ckpt is like for like


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="train-sft samples/s: rlhfctl vs TRL's SFTTrainer on toy:small and the toy sft.jsonl, "
                    "run in lock-step (alternating steps) in three subprocesses: rlhfctl, TRL as shipped (its "
                    "gradient checkpointing on) and TRL without gradient checkpointing (like for like).",
        epilog=f"Target: rlhfctl/TRL >= {TARGET}x samples/s. The last output line is JSON.",
    )
    p.add_argument("--steps", type=int, default=40, help="timed optimiser steps per round (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="records per step, both sides (default 64)")
    p.add_argument("--data", default=None, help="a `rlhfctl toy-data` folder (default: make one in a temp dir)")
    p.add_argument("--repeats", type=int, default=3, help="rounds, each with fresh processes (default 3)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, both sides (default 1e-3, train-sft's)")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per record, both sides (default 512)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each worker (default: torch's own)")
    p.add_argument("--compile", action="store_true", help="run rlhfctl with train-sft --compile (compilation falls in the warm-up)")
    p.add_argument("--trl-compile", action="store_true",
                   help="run TRL with torch_compile=True (its model compiled by the Trainer; compare with --compile)")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast on every side (rlhfctl train-sft --bf16; TRL's own CPU default); default fp32")
    add_model_args(p, MODEL)
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only (no ratio)")
    p.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--gate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- workers (one subprocess per side and round) ----------------------------------

def worker_rlhfctl(args: argparse.Namespace, gate: Gate) -> dict:
    import torch

    import rlhfctl.training.sft as sft
    from rlhfctl.training import loop
    from rlhfctl.records import read_metrics
    from rlhfctl.training.loop import Schedule
    from rlhfctl.training.scale import ScaleOptions

    write = loop.MetricsLog.write  # metrics.jsonl gets one line per step, right after the step

    def gated_write(self, metrics):
        write(self, metrics)
        gate.unit_done()

    loop.MetricsLog.write = gated_write  # patched on the class: wherever the loop lives, it calls this
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        schedule = Schedule(max_steps=total, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.05,
                            weight_decay=0.0, max_grad_norm=1.0, seed=0, save_every=10**9, compile=args.compile)
        with count_token_columns(gate) as columns:
            sft.run(sft.SFTConfig(str(Path(args.data) / "sft.jsonl"), args.model, os.path.join(out, "run"), schedule,
                                  args.max_length, scale=ScaleOptions(bf16=args.bf16)))
        metrics = read_metrics(os.path.join(out, "run"))
    return {
        "in_step_samples_per_s": statistics.median(m["samples_per_s"] for m in metrics[args.warmup:]),
        "final_loss": metrics[-1]["loss"],
        "threads": torch.get_num_threads(),
        "token_columns_per_step": columns.per_step(args.warmup),
    }


def worker_trl(args: argparse.Namespace, gate: Gate) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rlhfctl.models import load_causal_lm, load_tokenizer

    begins: list[float] = []
    ends: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            begins.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())
            gate.unit_done()

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    total = args.warmup + args.steps
    dataset = load_dataset("json", data_files=str(Path(args.data) / "sft.jsonl"), split="train").select_columns(["prompt", "completion"])
    model = load_causal_lm(args.model, seed=0)
    tokenizer = load_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
            max_steps=total, learning_rate=args.lr, lr_scheduler_type="cosine",
            warmup_steps=int(0.05 * total),  # rlhfctl's warmup: int(warmup_ratio * total) steps
            weight_decay=0.0, max_grad_norm=1.0, max_length=args.max_length, seed=0,
            use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
            disable_tqdm=True, dataloader_num_workers=0, torch_compile=args.trl_compile,
            bf16=args.bf16,  # TRL's default on a CPU is True; the precision follows rlhfctl's (fp32 unless --bf16)
            # TRL's default (True) as shipped; off for the like-for-like side (rlhfctl recomputes nothing)
            **({"gradient_checkpointing": False} if args.worker == "trl-no-ckpt" else {}),
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
        if not trainer.completion_only_loss:
            raise SystemExit("expected TRL to default to completion-only loss for prompt-completion data")
        with count_token_columns(gate) as columns:
            trainer.train()
        optim = str(getattr(config.optim, "value", config.optim))
    in_step = [args.batch_size / (e - b) for b, e in zip(begins[args.warmup:], ends[args.warmup:])]
    return {
        "in_step_samples_per_s": statistics.median(in_step),
        "final_loss": losses[-1] if losses else None,
        "threads": torch.get_num_threads(),
        "optim": optim,
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "bf16": bool(config.bf16),
        "token_columns_per_step": columns.per_step(args.warmup),
    }


class count_token_columns:
    """Counts the token columns (rows x sequence length, padding included) that each step's
    training forward passes compute, by wrapping ``LlamaModel.forward`` and ``Qwen2Model.forward``:
    both sides train the same causal LM, whose own ``forward`` the Trainer may wrap per instance. A step's
    columns add up until the gate's next unit. Forward passes without grad, and gradient
    checkpointing's recomputation inside the layers, are not counted: this is the work of one
    forward and one backward pass over the step's batch."""

    def __init__(self, gate: Gate):
        self.gate, self.counts, self.current = gate, [], 0

    def __enter__(self) -> "count_token_columns":
        import functools

        import torch
        from transformers import LlamaModel, Qwen2Model

        self.originals, self.unit_done = {cls: cls.forward for cls in (LlamaModel, Qwen2Model)}, self.gate.unit_done

        def counting(original):
            @functools.wraps(original)
            def forward(model, *args, **kwargs):
                ids = kwargs.get("input_ids", args[0] if args else None)
                if torch.is_tensor(ids) and torch.is_grad_enabled():
                    self.current += ids.numel()
                return original(model, *args, **kwargs)
            return forward

        def unit_done():
            self.counts.append(self.current)
            self.current = 0
            self.unit_done()

        for cls, original in self.originals.items():
            cls.forward = counting(original)
        self.gate.unit_done = unit_done
        return self

    def __exit__(self, *exc) -> None:
        for cls, original in self.originals.items():
            cls.forward = original
        del self.gate.unit_done  # the instance attribute set above; the class's method shows again

    def per_step(self, warmup: int) -> float:
        timed = self.counts[warmup:]
        return statistics.mean(timed) if timed else 0.0


def run_worker(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    gate = Gate.from_arg(args.gate)
    result = (worker_rlhfctl if args.worker == "rlhfctl" else worker_trl)(args, gate)
    timed = gate.durations[args.warmup - 1:]  # durations start at step 2
    if len(timed) != args.steps:
        raise SystemExit(f"timed {len(timed)} steps, expected {args.steps}")
    result.update(
        samples_per_s=args.steps * args.batch_size / sum(timed),
        step_seconds=timed,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    )
    Path(args.result).write_text(json.dumps(result))


# --- driver ------------------------------------------------------------------------

def worker_cmd(side: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", side, "--model", args.model, "--data", args.data,
            "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--max-length", str(args.max_length)] + (["--threads", str(args.threads)] if args.threads else []) + (
               ["--compile"] if args.compile else []) + (["--trl-compile"] if args.trl_compile else []) + (
               ["--bf16"] if args.bf16 else [])


def compare(ours: list[dict], theirs: list[dict], summary: dict, baseline: str) -> dict:
    """rlhfctl / ``baseline`` samples/s over the rounds, printed, and split into token columns x time per column."""
    round_ratios = [x["samples_per_s"] / y["samples_per_s"] for x, y in zip(ours, theirs)]
    step_ratios = [ty / tx for x, y in zip(ours, theirs) for tx, ty in zip(x["step_seconds"], y["step_seconds"])]
    ratio = statistics.median(round_ratios)
    columns = summary[baseline]["token_columns_per_step"] / summary["rlhfctl"]["token_columns_per_step"]
    what = ("TRL as shipped (target >= {:.1f}x: {})".format(TARGET, "met" if ratio >= TARGET else "NOT met")
            if baseline == "trl" else "TRL without gradient checkpointing (like for like)")
    print(f"rlhfctl/{baseline}: {ratio:.2f}x (median of rounds {', '.join(f'{x:.2f}' for x in round_ratios)}; median "
          f"step-by-step {statistics.median(step_ratios):.2f}x) against {what}\n"
          f"    = token columns a step {columns:.2f}x  x  time per column {ratio / columns:.2f}x")
    rss = summary["rlhfctl"]["peak_rss_mb"] / summary[baseline]["peak_rss_mb"]
    print(f"    peak RSS rlhfctl/{baseline}: {rss:.2f}x")
    return {"ratio": ratio, "peak_rss_ratio": rss, "round_ratios": [round(x, 3) for x in round_ratios],
            "step_ratio_median": statistics.median(step_ratios), "column_ratio": columns,
            "time_per_column_ratio": ratio / columns}


def make_data(folder: str) -> None:
    import subprocess

    subprocess.run([sys.executable, "-m", "rlhfctl", "toy-data", folder], check=True, capture_output=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("--warmup, --steps and --repeats must be at least 1")
    if args.worker:
        return run_worker(args)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="sft_speed_")
        args.data = tmp.name
        print(f"making toy data in {args.data}", flush=True)
        make_data(args.data)
    shape_dir = tempfile.TemporaryDirectory(prefix="sft_speed_shape_") if args.shape else None
    if shape_dir is not None:
        shaped_inputs(args, shape_dir.name)
    sides = [args.only] if args.only else list(SIDES)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        order = sides if r % 2 == 0 else sides[::-1]  # who goes first flips every round too
        workers = [Worker(side, worker_cmd(side, args), env) for side in order]
        lockstep(workers, args.warmup + args.steps)
        for w in workers:
            res = w.result()
            runs[w.name].append(res)
            print(f"round {r + 1}/{args.repeats} {w.name:11s} {res['samples_per_s']:8.1f} samples/s   "
                  f"(in-step median {res['in_step_samples_per_s']:7.1f})   peak RSS {res['peak_rss_mb']:7.1f} MB   "
                  f"final loss {res['final_loss']:.4f}", flush=True)
    summary: dict = {"benchmark": "sft_speed", "baseline": "trl.SFTTrainer", "model": args.model, "shape": args.shape,
                     "layers": args.layers if args.shape else None, "batch_size": args.batch_size,
                     "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "target_ratio": TARGET,
                     "rlhfctl_compile": args.compile, "trl_compile": args.trl_compile,
                     "bf16": args.bf16}
    for side in sides:
        rs = runs[side]
        summary[side] = {
            "samples_per_s": statistics.median(x["samples_per_s"] for x in rs),
            "in_step_samples_per_s": statistics.median(x["in_step_samples_per_s"] for x in rs),
            "rounds_samples_per_s": [round(x["samples_per_s"], 2) for x in rs],
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "final_loss": statistics.median(x["final_loss"] for x in rs if x["final_loss"] is not None),
            "threads": rs[0]["threads"],
            "token_columns_per_step": statistics.median(x["token_columns_per_step"] for x in rs),
            **{k: rs[0][k] for k in ("optim", "gradient_checkpointing", "bf16") if k in rs[0]},
        }
    print()
    for side in sides:
        s = summary[side]
        print(f"{side:11s} {s['samples_per_s']:8.1f} samples/s (median of {args.repeats} rounds)   "
              f"peak RSS {s['peak_rss_mb']:.1f} MB   {s['token_columns_per_step']:.0f} token columns a step")
    if "rlhfctl" in sides:
        for baseline in [side for side in sides if side != "rlhfctl"]:
            summary[f"vs_{baseline}"] = compare(runs["rlhfctl"], runs[baseline], summary, baseline)
        if "trl" in sides:
            summary.update(ratio=summary["vs_trl"]["ratio"], meets_target=summary["vs_trl"]["ratio"] >= TARGET)
        if args.shape and "trl-no-ckpt" in sides:
            summary["shape_targets"] = shape_verdict(summary["vs_trl-no-ckpt"], "trl-no-ckpt")
    for side in sides:
        for x in runs[side]:
            x.pop("step_seconds")
    print(json.dumps(summary))
    for folder in (tmp, shape_dir):
        if folder is not None:
            folder.cleanup()


def shape_verdict(vs: dict, baseline: str) -> dict:
    """The --shape targets against the like-for-like side, printed."""
    met = vs["peak_rss_ratio"] <= SHAPE_TARGETS["peak_rss_ratio"] and vs["ratio"] >= SHAPE_TARGETS["samples_ratio"]
    print(f"--shape targets against {baseline}: peak RSS {vs['peak_rss_ratio']:.2f}x (<= {SHAPE_TARGETS['peak_rss_ratio']}x), "
          f"samples/s {vs['ratio']:.2f}x (>= {SHAPE_TARGETS['samples_ratio']}x): {'met' if met else 'NOT met'}")
    return {**SHAPE_TARGETS, "met": met}


if __name__ == "__main__":
    main()
