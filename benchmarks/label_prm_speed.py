"""label-prm generation throughput vs rollout's (new tokens/s, same completer and batch size).

What it measures
    New tokens sampled per second by the completer, for

    * rlhfctl label-prm: ``rlhfctl.rm.prm_label.run(LabelConfig(...))`` on a
      rollouts file of the completer's own solutions, N completions per step
      prefix (its returned ``tokens_per_s``: all new tokens / wall time of the
      labelling loop, prefix building, grading and writing included), and
    * the baseline, rlhfctl rollout: ``rlhfctl.generation.rollout.run`` on
      the toy test prompts (its returned ``tokens_per_s``),

    with the same completer model (a briefly SFT-trained toy:small, so
    solutions have steps), ``n``, ``batch_size`` (rows per generate call),
    ``max_new_tokens``, temperature 1.0 and backend. Label-prm's prompts are
    longer (prompt + solution prefix) and its continuations shorter, which is
    part of what it has to cope with.

    It also prints the number of prefixes generated against the number of
    (solution, step) pairs that need completion (every step but the last),
    and the number of distinct prefixes: each distinct prefix should be
    generated exactly once.

How it is timed
    Each side in its own subprocess; a unit of work is one whole run (fresh
    output file), and the two workers alternate run by run in lock-step
    (``_lockstep.py``). ``--warmup`` runs are untimed. A side's speed is
    ``sum(new tokens) / sum(run seconds)`` over the timed runs, run seconds
    being each run's own ``new_tokens / tokens_per_s`` (model load excluded,
    as both runs exclude it); medians over ``--repeats`` rounds.

Target
    label-prm / rollout >= 0.8x new tokens/s.

How to run
    python benchmarks/label_prm_speed.py --model runs/sft           # any train-sft output folder
    python benchmarks/label_prm_speed.py                            # trains toy:small for 150 steps first

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
from _toy import make_toy_data, train_toy_sft  # noqa: E402

TARGET = 0.8
SIDES = ("label-prm", "rollout")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="New tokens/s of label-prm's Monte-Carlo completions vs rlhfctl rollout, same completer and "
                    "batch size, in lock-step subprocesses.",
        epilog=f"Target: label-prm/rollout >= {TARGET}x. The last output line is JSON.")
    p.add_argument("--model", default=None, help="completer: a train-sft output folder (default: train toy:small 150 steps)")
    p.add_argument("--data", default=None, help="a `rlhfctl toy-data` folder (default: make one in a temp dir)")
    p.add_argument("--label-prompts", type=int, default=6, help="prompts whose solutions label-prm labels (default 6)")
    p.add_argument("--solutions", type=int, default=4, help="solutions per prompt to label (default 4)")
    p.add_argument("--rollout-prompts", type=int, default=24, help="prompts per rollout run (default 24)")
    p.add_argument("--n", type=int, default=8, help="completions per prefix / responses per prompt (default 8)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per generate call, both sides (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="(default 64)")
    p.add_argument("--runs", type=int, default=2, help="timed runs per side and round (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before them (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="rounds, each with fresh processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each worker (default 1)")
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only (no ratio)")
    p.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--gate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_worker(args) -> None:
    import torch

    from rlhfctl.generation.base import SamplingParams
    from rlhfctl.generation.rollout import RolloutConfig
    from rlhfctl.generation.rollout import run as rollout
    from rlhfctl.rm.prm_label import LabelConfig
    from rlhfctl.rm.prm_label import run as label

    torch.set_num_threads(args.threads)
    gate = Gate.from_arg(args.gate)
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0)
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for k in range(args.warmup + args.runs):
            path = os.path.join(out, f"run{k}.jsonl")
            if args.worker == "label-prm":
                s = label(LabelConfig(str(Path(args.inputs) / "solutions.jsonl"), args.model, path, params))
            else:
                s = rollout(RolloutConfig(str(Path(args.inputs) / "prompts.jsonl"), args.model, path, params))
            runs.append(s)
            gate.unit_done()
    timed = runs[args.warmup:]
    tokens = sum(s["new_tokens"] for s in timed)
    seconds = sum(s["new_tokens"] / s["tokens_per_s"] for s in timed)
    extra = {k: timed[0][k] for k in ("solutions", "steps", "prefixes_generated") if k in timed[0]}
    Path(args.result).write_text(json.dumps({
        "tokens_per_s": tokens / seconds, "new_tokens_per_run": tokens / len(timed), **extra,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def prepare(args) -> tempfile.TemporaryDirectory:
    """Toy data, the completer, and the two inputs: prompts for rollout, the completer's solutions for label-prm."""
    tmp = tempfile.TemporaryDirectory(prefix="label_prm_speed_")
    cli = [sys.executable, "-m", "rlhfctl"]
    if args.data is None:
        args.data = os.path.join(tmp.name, "data")
        make_toy_data(args.data, "--sft", "2000", "--train", "200", "--test", "100")
    if args.model is None:
        args.model = os.path.join(tmp.name, "sft")
        train_toy_sft(args.data, args.model, 150, "the completer")
    args.inputs = tmp.name
    lines = (Path(args.data) / "test.jsonl").read_text().splitlines()
    (Path(tmp.name) / "prompts.jsonl").write_text("\n".join(lines[:args.rollout_prompts]) + "\n")
    (Path(tmp.name) / "label_prompts.jsonl").write_text("\n".join(lines[-args.label_prompts:]) + "\n")
    subprocess.run(cli + ["rollout", str(Path(tmp.name) / "label_prompts.jsonl"), "--model", args.model, "--out",
                          str(Path(tmp.name) / "solutions.jsonl"), "--n", str(args.solutions), "--max-new-tokens",
                          str(args.max_new_tokens)], check=True, capture_output=True)
    return tmp


def count_prefixes(path: str) -> dict:
    """(solution, step) pairs that need a completion, and the distinct prefixes among them."""
    from rlhfctl.records import ROLLOUTS, read_records
    from rlhfctl.rm.prm_label import _solutions, split_steps

    pairs, distinct = 0, set()
    for r in read_records(path, ROLLOUTS):
        for sol in _solutions(r, None):
            steps = split_steps(sol)
            pairs += len(steps) - 1
            distinct.update((r["id"], "\n".join(steps[:i])) for i in range(1, len(steps)))
    return {"step_pairs_needing_completion": pairs, "distinct_prefixes": len(distinct)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.warmup < 1 or args.runs < 1 or args.repeats < 1:
        raise SystemExit("--warmup, --runs and --repeats must be at least 1")
    if args.worker:
        return run_worker(args)
    tmp = prepare(args)
    sides = [args.only] if args.only else list(SIDES)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = lambda side: [sys.executable, os.path.abspath(__file__), "--worker", side, "--model", args.model, "--inputs",  # noqa: E731
                        args.inputs, "--n", str(args.n), "--batch-size", str(args.batch_size), "--max-new-tokens",
                        str(args.max_new_tokens), "--runs", str(args.runs), "--warmup", str(args.warmup),
                        "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        workers = [Worker(side, cmd(side), env) for side in (sides if r % 2 == 0 else sides[::-1])]
        lockstep(workers, args.warmup + args.runs)
        for w in workers:
            res = w.result()
            runs[w.name].append(res)
            print(f"round {r + 1}/{args.repeats} {w.name:9s} {res['tokens_per_s']:8.1f} new tokens/s   "
                  f"({res['new_tokens_per_run']:.0f} per run)   peak RSS {res['peak_rss_mb']:7.1f} MB", flush=True)
    summary: dict = {"benchmark": "label_prm_speed", "baseline": "rlhfctl rollout", "model": args.model, "n": args.n,
                     "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "runs": args.runs,
                     "repeats": args.repeats, "threads": args.threads, "target_ratio": TARGET,
                     **count_prefixes(str(Path(args.inputs) / "solutions.jsonl"))}
    for side in sides:
        rs = runs[side]
        summary[side] = {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
                         **{k: rs[0][k] for k in ("solutions", "steps", "prefixes_generated") if k in rs[0]}}
        print(f"{side:9s} {summary[side]['tokens_per_s']:8.1f} new tokens/s   peak RSS {summary[side]['peak_rss_mb']:.1f} MB")
    if "label-prm" in sides:
        gen = summary["label-prm"]["prefixes_generated"]
        summary["no_prefix_twice"] = gen == summary["distinct_prefixes"]
        print(f"label-prm: {gen} prefixes generated for {summary['step_pairs_needing_completion']} (solution, step) pairs "
              f"needing completion ({summary['label-prm']['steps']} steps in all, {summary['distinct_prefixes']} distinct "
              f"prefixes): {'no prefix generated twice' if summary['no_prefix_twice'] else 'MISMATCH'}")
    if len(sides) == 2:
        ratios = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs["label-prm"], runs["rollout"])]
        ratio = statistics.median(ratios)
        summary.update(ratio=ratio, round_ratios=[round(x, 3) for x in ratios], meets_target=ratio >= TARGET)
        print(f"ratio label-prm/rollout: {ratio:.2f}x; target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}")
    print(json.dumps(summary))
    tmp.cleanup()


if __name__ == "__main__":
    main()
