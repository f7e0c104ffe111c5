"""train-sft throughput: rlhfctl vs TRL's ``SFTTrainer`` (samples/s, same toy model and data).

What it measures
    Optimiser-step throughput (records per second) of supervised fine-tuning
    on the toy task's ``sft.jsonl`` (prompt/completion records, completion-only
    loss), for

    * rlhfctl: ``rlhfctl.training.sft.run(SFTConfig(...))``, the code path of
      ``rlhfctl train-sft``, and
    * the baseline: ``trl.SFTTrainer`` with ``trl.SFTConfig``,

    both on a fresh ``toy:small`` (``load_causal_lm("toy:small", seed=0)``,
    tokenizer ``load_tokenizer("toy:small")``), with the same batch size,
    peak learning rate, linear-warmup + cosine schedule (same warmup steps),
    grad clipping (1.0), no weight decay, ``max_length`` and number of steps.
    TRL runs on the CPU (``use_cpu=True``, no bf16/fp16) with ``report_to=[]``,
    no checkpoint saving, ``logging_steps=1`` (rlhfctl also logs every step, to
    metrics.jsonl), ``dataloader_num_workers=0``, and no gradient
    checkpointing (TRL turns it on by default; rlhfctl has none, and
    recomputing the forward would handicap the baseline); otherwise TRL keeps
    its defaults: its optimiser (fused AdamW), random batches padded to their
    longest record, its fused LM-head loss, completion-only loss (its default
    for prompt-completion data; checked). With ``--trl-checkpointing`` TRL
    keeps its shipped gradient checkpointing on (``SFTConfig``'s default), as a
    user who changes nothing gets it: that measures rlhfctl against TRL as
    shipped, at equal precision, not like for like. rlhfctl runs with its defaults
    (length-bucketed batches, fused AdamW, per-step metrics and progress bar),
    and with ``--compile`` also compiles its model (``train-sft --compile``;
    the one-off compilation falls in the untimed warm-up steps). With
    ``--trl-compile`` TRL compiles its model too (``torch_compile=True``):
    compare compiled with compiled. TRL's random batches change shape every
    step, so it may recompile after the warm-up; those steps count.

How it is timed
    Each side runs in its own subprocess, so imports, model load, dataset
    tokenisation and start-up are outside the timing, and the peak RSS
    (``ru_maxrss`` at exit) is that side's alone. The two subprocesses run in
    lock-step (``_lockstep.py``): after each optimiser step a side blocks until
    the driver releases it, and the driver alternates the sides step by step,
    so adjacent steps of the two see the same background load on a noisy
    machine. A step is timed from its release to the end of the step (rlhfctl:
    its metrics.jsonl write, by wrapping ``MetricsLog.write``; TRL: the
    ``on_step_end`` callback), so everything the loop does between steps (data
    loading, collation, logging, progress bar) counts and waiting does not.
    The first ``--warmup`` steps are not timed. A round's throughput is
    ``steps * batch_size / sum(step times)``; the script runs ``--repeats``
    rounds (fresh processes) and reports, per side, the median over rounds,
    the ratio as the median of the per-round ratios, and, as a check, the
    median of the step-by-step ratios (adjacent steps).

Threads
    Both workers use the same torch thread count (``--threads``, default
    torch's own: one per core). On a shared CPU whose cores other jobs also
    use, the default can be many times slower than one thread, because every
    parallel op waits for a descheduled thread: on a 2-core box running one
    other training job, a toy:small step took ~8x longer with 2 threads than
    with 1. The result is then bound by op count rather than arithmetic;
    ``--threads 1`` gives the compute-bound comparison. Report which you ran.

Target
    rlhfctl / TRL >= 1.5x samples/s.

How to run
    pip install -e '.[bench]'          # TRL
    python benchmarks/sft_speed.py                     # toy data made in a temp dir
    python benchmarks/sft_speed.py --data data/toy --steps 40 --warmup 5 --repeats 3
    python benchmarks/sft_speed.py --threads 1         # compute-bound comparison on a busy machine
    python benchmarks/sft_speed.py --compile           # rlhfctl with train-sft --compile
    python benchmarks/sft_speed.py --compile --trl-compile  # both sides compiled
    python benchmarks/sft_speed.py --trl-checkpointing  # TRL as shipped: its gradient checkpointing on
    python benchmarks/sft_speed.py --only rlhfctl      # one side, e.g. under a profiler

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

TARGET = 1.5
MODEL = "toy:small"
SIDES = ("rlhfctl", "trl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="train-sft samples/s: rlhfctl vs TRL's SFTTrainer on toy:small and the toy sft.jsonl, "
                    "run in lock-step (alternating steps) in two subprocesses.",
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
    p.add_argument("--trl-checkpointing", action="store_true",
                   help="keep TRL's default gradient checkpointing on (TRL as shipped; not like for like)")
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
    from rlhfctl.training.loop import Schedule, read_metrics

    write = loop.MetricsLog.write  # metrics.jsonl gets one line per step, right after the step

    def gated_write(self, metrics):
        write(self, metrics)
        gate.unit_done()

    loop.MetricsLog.write = gated_write  # patched on the class: wherever the loop lives, it calls this
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        schedule = Schedule(max_steps=total, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.05,
                            weight_decay=0.0, max_grad_norm=1.0, seed=0, save_every=10**9, compile=args.compile)
        sft.run(sft.SFTConfig(str(Path(args.data) / "sft.jsonl"), MODEL, os.path.join(out, "run"), schedule, args.max_length))
        metrics = read_metrics(os.path.join(out, "run"))
    return {
        "in_step_samples_per_s": statistics.median(m["samples_per_s"] for m in metrics[args.warmup:]),
        "final_loss": metrics[-1]["loss"],
        "threads": torch.get_num_threads(),
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
    model = load_causal_lm(MODEL, seed=0)
    tokenizer = load_tokenizer(MODEL)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
            max_steps=total, learning_rate=args.lr, lr_scheduler_type="cosine",
            warmup_steps=int(0.05 * total),  # rlhfctl's warmup: int(warmup_ratio * total) steps
            weight_decay=0.0, max_grad_norm=1.0, max_length=args.max_length, seed=0,
            use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no", logging_steps=1,
            disable_tqdm=True, dataloader_num_workers=0,
            # TRL's default is True; rlhfctl does not recompute activations, so off unless --trl-checkpointing
            gradient_checkpointing=args.trl_checkpointing,
            torch_compile=args.trl_compile,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
        if not trainer.completion_only_loss:
            raise SystemExit("expected TRL to default to completion-only loss for prompt-completion data")
        trainer.train()
        optim = str(getattr(config.optim, "value", config.optim))
    in_step = [args.batch_size / (e - b) for b, e in zip(begins[args.warmup:], ends[args.warmup:])]
    return {
        "in_step_samples_per_s": statistics.median(in_step),
        "final_loss": losses[-1] if losses else None,
        "threads": torch.get_num_threads(),
        "optim": optim,
        "gradient_checkpointing": bool(config.gradient_checkpointing),
    }


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
    return [sys.executable, os.path.abspath(__file__), "--worker", side, "--data", args.data, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--max-length", str(args.max_length)] + (["--threads", str(args.threads)] if args.threads else []) + (
               ["--compile"] if args.compile else []) + (["--trl-compile"] if args.trl_compile else []) + (
               ["--trl-checkpointing"] if args.trl_checkpointing else [])


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
            print(f"round {r + 1}/{args.repeats} {w.name:8s} {res['samples_per_s']:8.1f} samples/s   "
                  f"(in-step median {res['in_step_samples_per_s']:7.1f})   peak RSS {res['peak_rss_mb']:7.1f} MB   "
                  f"final loss {res['final_loss']:.4f}", flush=True)
    summary: dict = {"benchmark": "sft_speed", "baseline": "trl.SFTTrainer", "model": MODEL, "batch_size": args.batch_size,
                     "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "target_ratio": TARGET,
                     "rlhfctl_compile": args.compile, "trl_compile": args.trl_compile,
                     "trl_gradient_checkpointing": args.trl_checkpointing}
    for side in sides:
        rs = runs[side]
        summary[side] = {
            "samples_per_s": statistics.median(x["samples_per_s"] for x in rs),
            "in_step_samples_per_s": statistics.median(x["in_step_samples_per_s"] for x in rs),
            "rounds_samples_per_s": [round(x["samples_per_s"], 2) for x in rs],
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "final_loss": statistics.median(x["final_loss"] for x in rs if x["final_loss"] is not None),
            "threads": rs[0]["threads"],
            **{k: rs[0][k] for k in ("optim", "gradient_checkpointing") if k in rs[0]},
        }
    print()
    for side in sides:
        s = summary[side]
        print(f"{side:8s} {s['samples_per_s']:8.1f} samples/s (median of {args.repeats} rounds)   peak RSS {s['peak_rss_mb']:.1f} MB")
    if len(sides) == 2:
        a, b = runs["rlhfctl"], runs["trl"]
        round_ratios = [x["samples_per_s"] / y["samples_per_s"] for x, y in zip(a, b)]
        step_ratios = [ty / tx for x, y in zip(a, b) for tx, ty in zip(x["step_seconds"], y["step_seconds"])]
        ratio = statistics.median(round_ratios)
        summary.update(ratio=ratio, round_ratios=[round(x, 3) for x in round_ratios],
                       step_ratio_median=statistics.median(step_ratios), meets_target=ratio >= TARGET)
        print(f"ratio rlhfctl/TRL: {ratio:.2f}x (median of rounds {', '.join(f'{x:.2f}' for x in round_ratios)}; "
              f"median step-by-step {summary['step_ratio_median']:.2f}x); "
              f"target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}")
    for side in sides:
        for x in runs[side]:
            x.pop("step_seconds")
    print(json.dumps(summary))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
