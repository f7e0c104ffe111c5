"""train-policy step time: rlhfctl GRPO vs TRL's ``GRPOTrainer``, and rlhfctl PPO vs its GRPO (seconds/step).

What it measures
    Wall seconds per RL step (sample, score, update) on the toy ``train.jsonl``
    prompts with a briefly SFT-trained toy:small policy, verifier reward only
    (rlhfctl's math grader), for

    * rlhfctl GRPO: ``rlhfctl.training.policy.run.run(PolicyConfig(algo="grpo",
      verifier="math", n=8, prompts_per_step=8, max_new_tokens=64, ...))``,
      the code path of ``rlhfctl train-policy`` (beta 0.04, its default);
    * the baseline, TRL GRPO: ``trl.GRPOTrainer`` + ``GRPOConfig`` on the same
      SFT folder, 64 completions per step (``per_device_train_batch_size=64``,
      ``num_generations=8``: 8 prompts x 8), ``max_completion_length=64``,
      ``beta=0.04``, same lr, temperature 1.0, ``use_cpu=True``,
      ``report_to=[]``, ``save_strategy="no"``, ``gradient_checkpointing=False``,
      one reward function returning 1.0 when
      ``get_grader("math").is_correct(text, {"answer": ans})``;
    * rlhfctl PPO at the same settings (critic from the SFT policy), compared
      with rlhfctl GRPO (PPO also trains a critic and runs GAE).

How it is timed
    The three sides run in their own subprocesses, in lock-step
    (``_lockstep.py``): one RL step at a time, the order flipping every step.
    A step is timed from its release to its end (rlhfctl: its metrics.jsonl
    row; TRL: ``on_step_end``). The first ``--warmup`` steps are untimed. The
    reported seconds/step is the median of the timed steps (median over
    rounds when ``--repeats`` > 1); rlhfctl's own per-step ``seconds`` from
    metrics.jsonl is printed as a check. Peak RSS is ``ru_maxrss`` per worker.
    Sampling is stochastic, so steps differ in response lengths; medians
    over several steps smooth that.

Targets
    rlhfctl GRPO / TRL GRPO <= 0.7x seconds per step;
    rlhfctl PPO / rlhfctl GRPO <= 1.6x seconds per step.

    Large vocabulary (``--shape qwen2.5-0.5b --layers 2 --n 8
    --prompts-per-step 1 --max-new-tokens 240``: 8 completions a step,
    sequences of ~256 tokens, fp32, no gradient checkpointing on either
    side): rlhfctl GRPO's peak RSS <= 0.6x TRL's and its steps/s >= 1.2x
    TRL's. ``--shape`` builds a randomly initialised model of a public
    checkpoint's architecture and vocabulary with ``--layers`` layers
    (``_shapes.py``), used as the policy as it is (no SFT first).

How to run
    python benchmarks/policy_speed.py --model runs/sft          # any train-sft output folder
    python benchmarks/policy_speed.py                           # trains toy:small for 150 steps first
    python benchmarks/policy_speed.py --model runs/sft --steps 8 --warmup 1 --only rlhfctl-grpo
    python benchmarks/policy_speed.py --shape qwen2.5-0.5b --layers 2 --n 8 --prompts-per-step 1 --max-new-tokens 240 \
        --only rlhfctl-grpo --only trl-grpo

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
from _shapes import add_model_args, shaped_inputs  # noqa: E402
from _toy import make_toy_data, train_toy_sft  # noqa: E402

TARGET_TRL = 0.7
SHAPE_TARGETS = {"peak_rss_ratio": 0.6, "steps_ratio": 1.2}  # with --shape: rlhfctl GRPO against TRL GRPO
TARGET_PPO = 1.6
SIDES = ("rlhfctl-grpo", "trl-grpo", "rlhfctl-ppo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="RL step seconds: rlhfctl GRPO vs TRL GRPOTrainer, and rlhfctl PPO vs GRPO, "
                    "on a briefly trained toy:small, in lock-step subprocesses.",
        epilog=f"Targets: rlhfctl/TRL GRPO <= {TARGET_TRL}x, PPO/GRPO <= {TARGET_PPO}x s/step. The last output line is JSON.")
    add_model_args(p, None)  # no --model and no --shape: train toy:small for 150 steps first
    p.add_argument("--data", default=None, help="a `rlhfctl toy-data` folder (default: make one in a temp dir)")
    p.add_argument("--steps", type=int, default=5, help="timed RL steps per round (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default 1)")
    p.add_argument("--n", type=int, default=8, help="responses per prompt (default 8)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="prompts per step (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="max response tokens (default 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="policy lr, all sides (default 1e-4, train-policy's)")
    p.add_argument("--repeats", type=int, default=1, help="rounds, each with fresh processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each worker (default 1)")
    p.add_argument("--only", choices=SIDES, action="append", default=None, help="run only these sides (repeatable)")
    p.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--gate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker_rlhfctl(args, gate: Gate, algo: str) -> dict:
    from rlhfctl.records import read_metrics
    from rlhfctl.training import loop
    from rlhfctl.training.policy import run as policy_run
    from rlhfctl.training.policy.config import PolicyConfig

    write = policy_run.MetricsLog.write

    def gated_write(self, row):
        write(self, row)
        gate.unit_done()

    policy_run.MetricsLog.write = loop.MetricsLog.write = gated_write
    with tempfile.TemporaryDirectory() as out:
        policy_run.run(PolicyConfig(str(Path(args.data) / "train.jsonl"), args.model, os.path.join(out, "run"), algo=algo,
                         verifier="math", n=args.n, prompts_per_step=args.prompts_per_step, lr=args.lr,
                         max_new_tokens=args.max_new_tokens, max_steps=args.warmup + args.steps, save_every=10**9))
        metrics = read_metrics(os.path.join(out, "run"))
    return {"metrics_seconds": [m["seconds"] for m in metrics if "seconds" in m][args.warmup:]}


def worker_trl(args, gate: Gate) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhfctl.grading import get_grader
    from rlhfctl.models import load_tokenizer

    grader = get_grader("math")

    def math_reward(completions, answer, **kwargs):
        return [1.0 if grader.is_correct(c, {"answer": a}) else 0.0 for c, a in zip(completions, answer)]

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k):
            gate.unit_done()

    data = load_dataset("json", data_files=str(Path(args.data) / "train.jsonl"), split="train").select_columns(["prompt", "answer"])
    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=args.n * args.prompts_per_step, num_generations=args.n,
            gradient_accumulation_steps=1, max_completion_length=args.max_new_tokens, beta=0.04,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            temperature=1.0, top_p=1.0, max_steps=args.warmup + args.steps, seed=0,
            use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no", logging_steps=1,
            disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=False)
        trainer = GRPOTrainer(model=model, reward_funcs=math_reward, args=config, train_dataset=data,
                              processing_class=tokenizer, callbacks=[Timer()])
        trainer.train()
    return {}


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    gate = Gate.from_arg(args.gate)
    if args.worker == "trl-grpo":
        result = worker_trl(args, gate)
    else:
        result = worker_rlhfctl(args, gate, args.worker.split("-")[1])
    timed = gate.durations[args.warmup - 1:]
    if len(timed) != args.steps:
        raise SystemExit(f"timed {len(timed)} steps, expected {args.steps}")
    result.update(seconds_per_step=statistics.median(timed), step_seconds=timed,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(args.result).write_text(json.dumps(result))


def prepare(args):
    tmp = tempfile.TemporaryDirectory(prefix="policy_speed_")
    if args.data is None:
        args.data = tmp.name
        make_toy_data(args.data, "--sft", "2000", "--train", "200", "--test", "100")
    if args.shape:
        shaped_inputs(args, os.path.join(tmp.name, "shape"))
    elif args.model is None:
        args.model = os.path.join(tmp.name, "sft")
        train_toy_sft(args.data, args.model, 150, "the policy")
    return tmp


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("--warmup, --steps and --repeats must be at least 1")
    if args.worker:
        return run_worker(args)
    tmp = prepare(args) if args.data is None or args.model is None or args.shape else None
    sides = args.only or list(SIDES)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = lambda side: [sys.executable, os.path.abspath(__file__), "--worker", side, "--model", args.model, "--data",  # noqa: E731
                        args.data, "--steps", str(args.steps), "--warmup", str(args.warmup), "--n", str(args.n),
                        "--prompts-per-step", str(args.prompts_per_step), "--max-new-tokens", str(args.max_new_tokens),
                        "--lr", str(args.lr), "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        workers = [Worker(side, cmd(side), env) for side in (sides if r % 2 == 0 else sides[::-1])]
        lockstep(workers, args.warmup + args.steps)
        for w in workers:
            res = w.result()
            runs[w.name].append(res)
            check = f"   (metrics.jsonl median {statistics.median(res['metrics_seconds']):.2f} s)" if "metrics_seconds" in res else ""
            print(f"round {r + 1}/{args.repeats} {w.name:13s} {res['seconds_per_step']:7.2f} s/step{check}   "
                  f"peak RSS {res['peak_rss_mb']:7.1f} MB", flush=True)
    summary: dict = {"benchmark": "policy_speed", "baseline": "trl.GRPOTrainer", "model": args.model, "shape": args.shape,
                     "layers": args.layers if args.shape else None, "n": args.n,
                     "prompts_per_step": args.prompts_per_step, "max_new_tokens": args.max_new_tokens, "steps": args.steps,
                     "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
                     "target_grpo_vs_trl": TARGET_TRL, "target_ppo_vs_grpo": TARGET_PPO}
    for side in sides:
        rs = runs[side]
        summary[side] = {"seconds_per_step": statistics.median(x["seconds_per_step"] for x in rs),
                         "steps_per_s": 1 / statistics.median(x["seconds_per_step"] for x in rs),
                         "step_seconds": [round(t, 3) for x in rs for t in x["step_seconds"]],
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in rs)}
        print(f"{side:13s} {summary[side]['seconds_per_step']:7.2f} s/step ({summary[side]['steps_per_s']:.3f} steps/s)   "
              f"peak RSS {summary[side]['peak_rss_mb']:.1f} MB")
    s = lambda k: summary[k]["seconds_per_step"]  # noqa: E731
    if {"rlhfctl-grpo", "trl-grpo"} <= set(sides):
        ratio = s("rlhfctl-grpo") / s("trl-grpo")
        summary.update(ratio_grpo_vs_trl=ratio, meets_target_grpo_vs_trl=ratio <= TARGET_TRL)
        print(f"rlhfctl GRPO / TRL GRPO: {ratio:.2f}x s/step; target <= {TARGET_TRL}x: {'met' if ratio <= TARGET_TRL else 'NOT met'}")
        rss = summary["rlhfctl-grpo"]["peak_rss_mb"] / summary["trl-grpo"]["peak_rss_mb"]
        summary.update(peak_rss_ratio_grpo_vs_trl=rss, steps_ratio_grpo_vs_trl=1 / ratio)
        print(f"rlhfctl GRPO / TRL GRPO: {1 / ratio:.2f}x steps/s, peak RSS {rss:.2f}x")
        if args.shape:
            met = rss <= SHAPE_TARGETS["peak_rss_ratio"] and 1 / ratio >= SHAPE_TARGETS["steps_ratio"]
            summary["shape_targets"] = {**SHAPE_TARGETS, "met": met}
            print(f"--shape targets: peak RSS <= {SHAPE_TARGETS['peak_rss_ratio']}x, steps/s >= "
                  f"{SHAPE_TARGETS['steps_ratio']}x: {'met' if met else 'NOT met'}")
    if {"rlhfctl-grpo", "rlhfctl-ppo"} <= set(sides):
        ratio = s("rlhfctl-ppo") / s("rlhfctl-grpo")
        summary.update(ratio_ppo_vs_grpo=ratio, meets_target_ppo_vs_grpo=ratio <= TARGET_PPO)
        print(f"rlhfctl PPO / rlhfctl GRPO: {ratio:.2f}x s/step; target <= {TARGET_PPO}x: {'met' if ratio <= TARGET_PPO else 'NOT met'}")
    print(json.dumps(summary))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
