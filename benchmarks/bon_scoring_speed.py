"""Best-of-n RM scoring throughput: ``score_rollouts`` vs the RM's bare batched forward (sequences/s).

What it measures
    Sequences scored per second by a trained ORM folder over the responses of
    a rollouts file (every prompt's n responses), for

    * rlhfctl: ``rlhfctl.rm.scorers.score_rollouts(rollouts, RM, batch_size=64)``,
      the scorer behind ``rlhfctl best-of-n`` -- everything counted: loading
      the RM folder, tokenising prompt+response, length-sorted batching, forward;
    * the baseline: the same RM as ``AutoModelForSequenceClassification``,
      called on the same token ids, pre-tokenised and pre-padded (right
      padding, batches of 64 in file order) before timing, under
      ``torch.inference_mode()``; only ``model(ids, attention_mask).logits``
      is timed -- a lower bound a real scorer cannot reach, hence the target.

How it is timed
    Each side in its own subprocess; a unit of work is one full pass over all
    the sequences, and the two workers alternate pass by pass in lock-step
    (``_lockstep.py``). ``--warmup`` passes are untimed. A round's speed is
    ``passes * sequences / sum(pass times)``; medians over ``--repeats`` rounds.
    Peak RSS is ``ru_maxrss`` of each worker.

Target
    rlhfctl / bare forward >= 0.8x sequences/s.

How to run
    python benchmarks/bon_scoring_speed.py --rm runs/rm --rollouts runs/rollouts.jsonl
    python benchmarks/bon_scoring_speed.py      # makes toy data, a 5-step RM and n=8 rollouts of toy:small first

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

TARGET = 0.8
SIDES = ("rlhfctl", "forward")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Best-of-n RM scoring sequences/s: rlhfctl's score_rollouts vs the RM's bare batched forward "
                    "on pre-tokenised, pre-padded sequences, in lock-step subprocesses.",
        epilog=f"Target: rlhfctl/forward >= {TARGET}x. The last output line is JSON.")
    p.add_argument("--rm", default=None, help="a train-rm output folder (default: train toy:small for 5 steps)")
    p.add_argument("--rollouts", default=None, help="a rollouts JSONL (default: toy:small, test.jsonl, n=8, 40 new tokens)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward, both sides (default 64)")
    p.add_argument("--passes", type=int, default=5, help="timed passes over all sequences per round (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes before them (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="rounds, each with fresh processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each worker (default 1)")
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only (no ratio)")
    p.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--gate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_worker(args) -> None:
    import torch

    from rlhfctl.records import ROLLOUTS, read_records
    from rlhfctl.rm.scorers import _sequences, score_rollouts

    torch.set_num_threads(args.threads)
    gate = Gate.from_arg(args.gate)
    rollouts = read_records(args.rollouts, ROLLOUTS)
    if args.worker == "rlhfctl":
        for _ in range(args.warmup + args.passes):
            scores = score_rollouts(rollouts, args.rm, batch_size=args.batch_size)
            gate.unit_done()
        n = sum(len(s) for s in scores)
    else:
        from transformers import AutoModelForSequenceClassification

        from rlhfctl.models import load_tokenizer
        from rlhfctl.rm.model import right_pad

        model = AutoModelForSequenceClassification.from_pretrained(args.rm).eval()
        tokenizer = load_tokenizer(args.rm)
        seqs, _ = _sequences(rollouts, tokenizer, 512)  # the very ids rlhfctl scores
        batches = [right_pad(seqs[i:i + args.batch_size], tokenizer.pad_token_id) for i in range(0, len(seqs), args.batch_size)]
        n = len(seqs)
        for _ in range(args.warmup + args.passes):
            with torch.inference_mode():
                for ids, mask in batches:
                    model(input_ids=ids, attention_mask=mask).logits
            gate.unit_done()
    timed = gate.durations[args.warmup - 1:]
    Path(args.result).write_text(json.dumps({
        "sequences": n, "seqs_per_s": len(timed) * n / sum(timed), "pass_seconds": timed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def prepare(args) -> tempfile.TemporaryDirectory:
    tmp = tempfile.TemporaryDirectory(prefix="bon_scoring_speed_")
    d = Path(tmp.name)
    cli = [sys.executable, "-m", "rlhfctl"]
    print(f"preparing toy data / RM / rollouts in {d}", flush=True)
    subprocess.run(cli + ["toy-data", str(d), "--sft", "2000", "--train", "200", "--test", "100"], check=True, capture_output=True)
    if args.rm is None:
        args.rm = str(d / "rm")
        subprocess.run(cli + ["train-rm", str(d / "prefs_style.jsonl"), "--model", "toy:small", "--out", args.rm,
                              "--max-steps", "5"], check=True, capture_output=True)
    if args.rollouts is None:
        args.rollouts = str(d / "rollouts.jsonl")
        subprocess.run(cli + ["rollout", str(d / "test.jsonl"), "--model", "toy:small", "--out", args.rollouts,
                              "--n", "8", "--max-new-tokens", "40"], check=True, capture_output=True)
    return tmp


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.warmup < 1 or args.passes < 1 or args.repeats < 1:
        raise SystemExit("--warmup, --passes and --repeats must be at least 1")
    if args.worker:
        return run_worker(args)
    tmp = prepare(args) if args.rm is None or args.rollouts is None else None
    sides = [args.only] if args.only else list(SIDES)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = lambda side: [sys.executable, os.path.abspath(__file__), "--worker", side, "--rm", args.rm, "--rollouts",  # noqa: E731
                        args.rollouts, "--batch-size", str(args.batch_size), "--passes", str(args.passes),
                        "--warmup", str(args.warmup), "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        workers = [Worker(side, cmd(side), env) for side in (sides if r % 2 == 0 else sides[::-1])]
        lockstep(workers, args.warmup + args.passes)
        for w in workers:
            res = w.result()
            runs[w.name].append(res)
            print(f"round {r + 1}/{args.repeats} {w.name:8s} {res['seqs_per_s']:8.1f} seqs/s   "
                  f"peak RSS {res['peak_rss_mb']:7.1f} MB", flush=True)
    summary: dict = {"benchmark": "bon_scoring_speed", "baseline": "bare AutoModelForSequenceClassification forward",
                     "sequences": runs[sides[0]][0]["sequences"], "batch_size": args.batch_size, "passes": args.passes,
                     "repeats": args.repeats, "threads": args.threads, "target_ratio": TARGET}
    for side in sides:
        rs = runs[side]
        summary[side] = {"seqs_per_s": statistics.median(x["seqs_per_s"] for x in rs),
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in rs)}
        print(f"{side:8s} {summary[side]['seqs_per_s']:8.1f} seqs/s   peak RSS {summary[side]['peak_rss_mb']:.1f} MB")
    if len(sides) == 2:
        ratios = [x["seqs_per_s"] / y["seqs_per_s"] for x, y in zip(runs["rlhfctl"], runs["forward"])]
        ratio = statistics.median(ratios)
        summary.update(ratio=ratio, round_ratios=[round(x, 3) for x in ratios], meets_target=ratio >= TARGET)
        print(f"ratio rlhfctl/forward: {ratio:.2f}x; target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}")
    print(json.dumps(summary))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
