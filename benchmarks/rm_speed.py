"""train-rm throughput: rlhfctl vs TRL's ``RewardTrainer`` (pairs/s, same toy backbone and data).

What it measures
    Optimiser-step throughput (preference pairs per second) of Bradley-Terry
    reward-model training on the toy ``prefs_style.jsonl`` (prompt/chosen/rejected), for

    * rlhfctl: ``rlhfctl.training.rm.run(RMConfig(...))``, the code path of
      ``rlhfctl train-rm`` (backbone ``build_reward_model("toy:small", "orm", 0)``), and
    * the baseline: ``trl.RewardTrainer`` + ``trl.RewardConfig`` on the same
      ``AutoModelForSequenceClassification`` (num_labels=1, same seed, so the
      same initial weights), with the same pairs per step, peak lr, warmup,
      grad clipping, ``max_length`` and steps; ``use_cpu=True``,
      ``report_to=[]``, ``save_strategy="no"``, ``logging_steps=1``,
      ``gradient_checkpointing=False`` (TRL's default True would recompute
      the forward; rlhfctl does not), otherwise TRL's defaults.

How it is timed
    As ``sft_speed.py``: each side in its own subprocess, run in lock-step
    (``_lockstep.py``) one optimiser step at a time, alternating sides; a step
    is timed from its release to its end (rlhfctl: its metrics.jsonl write;
    TRL: ``on_step_end``). ``--warmup`` steps are untimed. Medians over
    ``--repeats`` rounds; peak RSS is ``ru_maxrss`` of each worker.

Target
    rlhfctl / TRL >= 1.5x pairs/s.

    Large vocabulary (``--shape qwen2.5-0.5b --layers 2 --batch-size 8``,
    sequences of ~256 tokens, fp32, no gradient checkpointing on either
    side): peak RSS <= 0.6x TRL's and pairs/s >= 1.2x TRL's. ``--model PATH``
    trains a reward model on any model folder instead of toy:small;
    ``--shape`` builds a randomly initialised model of a public checkpoint's
    architecture and vocabulary with ``--layers`` layers (``_shapes.py``).

How to run
    python benchmarks/rm_speed.py                       # toy data made in a temp dir
    python benchmarks/rm_speed.py --data data/toy --steps 30 --warmup 3 --repeats 2 --threads 1
    python benchmarks/rm_speed.py --only rlhfctl
    python benchmarks/rm_speed.py --shape qwen2.5-0.5b --layers 2 --batch-size 8 --steps 10 --warmup 2

The last line of output is one JSON object with all the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lockstep import Gate, Worker, lockstep  # noqa: E402
from _shapes import add_model_args, shaped_inputs  # noqa: E402

TARGET = 1.5
SHAPE_TARGETS = {"peak_rss_ratio": 0.6, "samples_ratio": 1.2}  # with --shape
MODEL = "toy:small"
SIDES = ("rlhfctl", "trl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="train-rm pairs/s: rlhfctl vs TRL's RewardTrainer on toy:small and the toy prefs_style.jsonl, "
                    "run in lock-step (alternating steps) in two subprocesses.",
        epilog=f"Target: rlhfctl/TRL >= {TARGET}x pairs/s. The last output line is JSON.")
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps per round (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step, both sides (default 32)")
    p.add_argument("--data", default=None, help="a `rlhfctl toy-data` folder (default: make one in a temp dir)")
    p.add_argument("--repeats", type=int, default=2, help="rounds, each with fresh processes (default 2)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, both sides (default 1e-3)")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per sequence, both sides (default 512)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each worker (default 1)")
    add_model_args(p, MODEL)
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only (no ratio)")
    p.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--gate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker_rlhfctl(args, gate: Gate) -> dict:
    import rlhfctl.training.rm as rm
    from rlhfctl.training import loop
    from rlhfctl.records import read_metrics
    from rlhfctl.training.loop import Schedule

    write = loop.MetricsLog.write

    def gated_write(self, metrics):
        write(self, metrics)
        gate.unit_done()

    loop.MetricsLog.write = gated_write
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        schedule = Schedule(max_steps=total, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.05,
                            max_grad_norm=1.0, seed=0, save_every=10**9)
        rm.run(rm.RMConfig((str(Path(args.data) / "prefs_style.jsonl"),), args.model, os.path.join(out, "run"), schedule,
                           eval_fraction=0.1, max_length=args.max_length))
        metrics = read_metrics(os.path.join(out, "run"))
    return {"final_loss": metrics[-1]["loss"]}


def worker_trl(args, gate: Gate) -> dict:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rlhfctl.models import load_tokenizer
    from rlhfctl.rm.model import ORM, build_reward_model

    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k):
            gate.unit_done()

        def on_log(self, _a, _s, _c, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    total = args.warmup + args.steps
    data = load_dataset("json", data_files=str(Path(args.data) / "prefs_style.jsonl"), split="train")
    data = data.select_columns(["prompt", "chosen", "rejected"]).train_test_split(test_size=0.1, seed=0)["train"]
    tokenizer = load_tokenizer(args.model)
    model = build_reward_model(args.model, ORM, 0)  # the same AutoModelForSequenceClassification rlhfctl trains
    with tempfile.TemporaryDirectory() as out:
        config = RewardConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
            max_steps=total, learning_rate=args.lr, warmup_steps=int(0.05 * total), lr_scheduler_type="cosine",
            weight_decay=0.0, max_grad_norm=1.0, max_length=args.max_length, seed=0,
            use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no", logging_steps=1,
            disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=False)
        trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[Timer()])
        trainer.train()
    return {"final_loss": losses[-1] if losses else None}


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    gate = Gate.from_arg(args.gate)
    result = (worker_rlhfctl if args.worker == "rlhfctl" else worker_trl)(args, gate)
    timed = gate.durations[args.warmup - 1:]
    if len(timed) != args.steps:
        raise SystemExit(f"timed {len(timed)} steps, expected {args.steps}")
    result.update(pairs_per_s=args.steps * args.batch_size / sum(timed), step_seconds=timed,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(args.result).write_text(json.dumps(result))


def worker_cmd(side: str, args) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", side, "--model", args.model, "--data", args.data,
            "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--max-length", str(args.max_length), "--threads", str(args.threads)]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("--warmup, --steps and --repeats must be at least 1")
    if args.worker:
        return run_worker(args)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="rm_speed_")
        args.data = tmp.name
        print(f"making toy data in {args.data}", flush=True)
        subprocess.run([sys.executable, "-m", "rlhfctl", "toy-data", args.data, "--sft", "2000", "--train", "200",
                        "--test", "100"], check=True, capture_output=True)
    shape_dir = tempfile.TemporaryDirectory(prefix="rm_speed_shape_") if args.shape else None
    if shape_dir is not None:
        shaped_inputs(args, shape_dir.name)
    sides = [args.only] if args.only else list(SIDES)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        workers = [Worker(side, worker_cmd(side, args), env) for side in order]
        lockstep(workers, args.warmup + args.steps)
        for w in workers:
            res = w.result()
            runs[w.name].append(res)
            print(f"round {r + 1}/{args.repeats} {w.name:8s} {res['pairs_per_s']:8.1f} pairs/s   "
                  f"peak RSS {res['peak_rss_mb']:7.1f} MB   final loss {res['final_loss']}", flush=True)
    summary: dict = {"benchmark": "rm_speed", "baseline": "trl.RewardTrainer", "model": args.model,
                     "shape": args.shape, "layers": args.layers if args.shape else None, "batch_pairs": args.batch_size,
                     "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
                     "target_ratio": TARGET}
    for side in sides:
        rs = runs[side]
        summary[side] = {"pairs_per_s": statistics.median(x["pairs_per_s"] for x in rs),
                         "rounds_pairs_per_s": [round(x["pairs_per_s"], 2) for x in rs],
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in rs), "final_loss": rs[-1]["final_loss"]}
        print(f"{side:8s} {summary[side]['pairs_per_s']:8.1f} pairs/s (median of {args.repeats} rounds)   "
              f"peak RSS {summary[side]['peak_rss_mb']:.1f} MB")
    if len(sides) == 2:
        a, b = runs["rlhfctl"], runs["trl"]
        round_ratios = [x["pairs_per_s"] / y["pairs_per_s"] for x, y in zip(a, b)]
        step_ratios = [ty / tx for x, y in zip(a, b) for tx, ty in zip(x["step_seconds"], y["step_seconds"])]
        ratio = statistics.median(round_ratios)
        summary.update(ratio=ratio, round_ratios=[round(x, 3) for x in round_ratios],
                       step_ratio_median=statistics.median(step_ratios), meets_target=ratio >= TARGET)
        print(f"ratio rlhfctl/TRL: {ratio:.2f}x (median step-by-step {summary['step_ratio_median']:.2f}x); "
              f"target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}")
        rss = summary["rlhfctl"]["peak_rss_mb"] / summary["trl"]["peak_rss_mb"]
        summary["peak_rss_ratio"] = rss
        print(f"peak RSS rlhfctl/TRL: {rss:.2f}x")
        if args.shape:
            met = rss <= SHAPE_TARGETS["peak_rss_ratio"] and ratio >= SHAPE_TARGETS["samples_ratio"]
            summary["shape_targets"] = {**SHAPE_TARGETS, "met": met}
            print(f"--shape targets: peak RSS <= {SHAPE_TARGETS['peak_rss_ratio']}x, pairs/s >= "
                  f"{SHAPE_TARGETS['samples_ratio']}x: {'met' if met else 'NOT met'}")
    print(json.dumps(summary))
    for folder in (tmp, shape_dir):
        if folder is not None:
            folder.cleanup()


if __name__ == "__main__":
    main()
