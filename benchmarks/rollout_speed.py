"""Rollout throughput: rlhfctl's HF backend vs a plain ``model.generate`` loop (new tokens/s).

What it measures
    Sampling speed, in new tokens per second, on a briefly trained toy:small
    policy (so responses stop at eos with realistic lengths) over prompts from
    the toy ``test.jsonl``, for

    * rlhfctl: ``HFGenerator(model, tokenizer).generate(prompts,
      SamplingParams(n=N, temperature=1.0, max_new_tokens=M, batch_size=B))``,
      the backend behind ``rlhfctl rollout``, and
    * the baseline: ``model.generate`` on the same rows (each prompt repeated
      N times, B rows per batch, the same prompts per batch), left-padded by
      the tokenizer, ``do_sample=True, temperature=1.0, top_k=0, top_p=1.0``
      (the same pure sampling distribution), the same ``max_new_tokens``,
      stopping at eos, outputs decoded to text as rlhfctl does.

    New tokens count every sampled token up to and including eos, per row,
    never padding (rlhfctl: ``len(Sample.token_ids)``; baseline: up to the
    first eos in the row, or all of them when it has none).

How it is timed
    Each side runs in its own subprocess (model load and start-up excluded;
    peak RSS is ``ru_maxrss`` of that process). The two run in lock-step
    (``_lockstep.py``): one batch at a time, alternating sides batch by batch,
    so both see the same background load; a batch is timed from its release
    to its end, tokenisation and decoding included. ``--warmup-batches``
    batches are untimed. A round's tokens/s is ``sum(new tokens) / sum(batch
    times)``; over ``--repeats`` rounds (fresh processes) the script reports
    each side's median and the median of the per-round ratios, plus the
    median batch-by-batch ratio as a check.

Threads
    Both workers use the same torch thread count (``--threads``, default
    torch's own: one per core). On a shared CPU whose cores other jobs also
    use, the default can be many times slower than one thread, because every
    parallel op waits for a descheduled thread: on a 2-core box running one
    other training job, a toy:small step took ~8x longer with 2 threads than
    with 1. The result is then bound by op count rather than arithmetic;
    ``--threads 1`` gives the compute-bound comparison. Report which you ran.

Target
    rlhfctl / model.generate >= 1.0x new tokens/s.

How to run
    python benchmarks/rollout_speed.py --model runs/sft        # any train-sft output folder
    python benchmarks/rollout_speed.py                         # trains toy:small for 150 steps first (minutes)
    python benchmarks/rollout_speed.py --model runs/sft --n 4 --batch-size 64 --max-new-tokens 128 --repeats 3
    python benchmarks/rollout_speed.py --model runs/sft --threads 1

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
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lockstep import Gate, Worker, lockstep  # noqa: E402
from _toy import load_prompts, make_toy_data, train_toy_sft  # noqa: E402

TARGET = 1.0
SIDES = ("rlhfctl", "generate")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Rollout new tokens/s: rlhfctl's HFGenerator vs a plain model.generate loop at the same batch size, "
                    "run in lock-step (alternating batches) in two subprocesses.",
        epilog=f"Target: rlhfctl/generate >= {TARGET}x new tokens/s. The last output line is JSON.",
    )
    p.add_argument("--model", default=None, help="a model folder (default: train toy:small with train-sft into a temp dir)")
    p.add_argument("--train-steps", type=int, default=150, help="train-sft steps for the default model (default 150)")
    p.add_argument("--data", default=None, help="a `rlhfctl toy-data` folder (default: make one in a temp dir)")
    p.add_argument("--num-prompts", type=int, default=256, help="test.jsonl prompts per round (default 256)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="rows (sequences) per batch, both sides (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default 128")
    p.add_argument("--warmup-batches", type=int, default=1, help="untimed batches first (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="rounds, each with fresh processes (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads in each worker (default: torch's own)")
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only (no ratio)")
    p.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--gate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)



def chunks(num_prompts: int, per_batch: int, warmup: int) -> list[list[int]]:
    """Prompt indices per unit: ``warmup`` untimed batches (the first prompts), then every batch once."""
    batches = [list(range(s, min(s + per_batch, num_prompts))) for s in range(0, num_prompts, per_batch)]
    return [batches[i % len(batches)] for i in range(warmup)] + batches


# --- workers -----------------------------------------------------------------------

def worker(args: argparse.Namespace, gate: Gate) -> dict:
    import torch

    from rlhfctl.data import render_prompt
    from rlhfctl.generation.base import SamplingParams, derive_seed
    from rlhfctl.generation.hf import HFGenerator
    from rlhfctl.models import load_causal_lm, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model).eval()
    prompts = [render_prompt(p, tokenizer) for p in load_prompts(args.data, args.num_prompts)]
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, seed=args.seed)
    per_batch = max(1, args.batch_size // args.n)  # whole prompts per batch, as HFGenerator groups them
    generator = HFGenerator(model, tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    counts: list[int] = []  # new tokens per unit
    rows_per_unit: list[int] = []
    stopped = 0

    for unit, idx in enumerate(chunks(len(prompts), per_batch, args.warmup_batches)):
        if args.worker == "rlhfctl":
            out = generator.generate([prompts[i] for i in idx], params, keys=[f"{unit}:{i}" for i in idx])
            lengths = [s.num_tokens for group in out for s in group]
            n_stop = sum(s.finish_reason == "stop" for group in out for s in group)
        else:
            rows = [prompts[i] for i in idx for _ in range(args.n)]
            torch.manual_seed(derive_seed(args.seed, unit))
            enc = tokenizer(rows, padding=True, return_tensors="pt", add_special_tokens=True)  # left padding
            with torch.inference_mode():
                seqs = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                      max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
            new = seqs[:, enc["input_ids"].shape[1]:]
            lengths, n_stop = [], 0
            for row in new.tolist():
                if eos in row:
                    lengths.append(row.index(eos) + 1)
                    n_stop += 1
                else:
                    lengths.append(len(row))
            texts = [tokenizer.decode(row[: n - 1 if row[n - 1] == eos else n], skip_special_tokens=True)
                     for row, n in zip(new.tolist(), lengths)]
            assert len(texts) == len(rows)
        if unit >= args.warmup_batches:
            counts.append(sum(lengths))
            rows_per_unit.append(len(lengths))
            stopped += n_stop
        gate.unit_done()

    timed = gate.durations[args.warmup_batches - 1:]  # durations start at unit 2
    if len(timed) != len(counts):
        raise SystemExit(f"timed {len(timed)} batches, counted {len(counts)}")
    return {
        "tokens_per_s": sum(counts) / sum(timed),
        "new_tokens": sum(counts),
        "rows": sum(rows_per_unit),
        "mean_new_tokens_per_row": sum(counts) / sum(rows_per_unit),
        "eos_fraction": stopped / sum(rows_per_unit),
        "batch_seconds": timed,
        "batch_tokens": counts,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }


# --- driver ------------------------------------------------------------------------

def worker_cmd(side: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", side, "--model", args.model, "--data", args.data,
            "--num-prompts", str(args.num_prompts), "--n", str(args.n), "--batch-size", str(args.batch_size),
            "--max-new-tokens", str(args.max_new_tokens), "--warmup-batches", str(args.warmup_batches),
            "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.warmup_batches < 1 or args.repeats < 1 or args.num_prompts < 1:
        raise SystemExit("--warmup-batches, --repeats and --num-prompts must be at least 1")
    if args.worker:
        result = worker(args, Gate.from_arg(args.gate))
        Path(args.result).write_text(json.dumps(result))
        return
    tmp = tempfile.TemporaryDirectory(prefix="rollout_speed_")
    if args.data is None:
        args.data = os.path.join(tmp.name, "data")
        make_toy_data(args.data)
    if args.model is None:
        args.model = os.path.join(tmp.name, "sft")
        train_toy_sft(args.data, args.model, args.train_steps)
    sides = [args.only] if args.only else list(SIDES)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    units = len(chunks(args.num_prompts, max(1, args.batch_size // args.n), args.warmup_batches))
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        workers = [Worker(side, worker_cmd(side, args), env) for side in order]
        lockstep(workers, units)
        for w in workers:
            res = w.result()
            runs[w.name].append(res)
            print(f"round {r + 1}/{args.repeats} {w.name:8s} {res['tokens_per_s']:9.1f} new tokens/s   "
                  f"({res['new_tokens']} tokens, {res['mean_new_tokens_per_row']:.1f}/row, eos {res['eos_fraction']:.0%})   "
                  f"peak RSS {res['peak_rss_mb']:7.1f} MB", flush=True)
    summary: dict = {"benchmark": "rollout_speed", "baseline": "model.generate", "model": args.model, "n": args.n,
                     "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                     "num_prompts": args.num_prompts, "repeats": args.repeats, "target_ratio": TARGET}
    for side in sides:
        rs = runs[side]
        summary[side] = {
            "tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
            "rounds_tokens_per_s": [round(x["tokens_per_s"], 1) for x in rs],
            "mean_new_tokens_per_row": statistics.median(x["mean_new_tokens_per_row"] for x in rs),
            "eos_fraction": statistics.median(x["eos_fraction"] for x in rs),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "threads": rs[0]["threads"],
        }
    print()
    for side in sides:
        s = summary[side]
        print(f"{side:8s} {s['tokens_per_s']:9.1f} new tokens/s (median of {args.repeats} rounds)   "
              f"peak RSS {s['peak_rss_mb']:.1f} MB")
    if len(sides) == 2:
        a, b = runs["rlhfctl"], runs["generate"]
        round_ratios = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(a, b)]
        batch_ratios = [(ta / sa) / (tb / sb) for x, y in zip(a, b)
                        for ta, sa, tb, sb in zip(x["batch_tokens"], x["batch_seconds"], y["batch_tokens"], y["batch_seconds"])]
        ratio = statistics.median(round_ratios)
        summary.update(ratio=ratio, round_ratios=[round(x, 3) for x in round_ratios],
                       batch_ratio_median=statistics.median(batch_ratios), meets_target=ratio >= TARGET)
        print(f"ratio rlhfctl/generate: {ratio:.2f}x (median of rounds {', '.join(f'{x:.2f}' for x in round_ratios)}; "
              f"median batch-by-batch {summary['batch_ratio_median']:.2f}x); "
              f"target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}")
    print(json.dumps(summary))
    tmp.cleanup()


if __name__ == "__main__":
    main()
