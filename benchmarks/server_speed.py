"""Server backend throughput: `--backend openai` on `transformers serve` vs the in-process HF backend (new tokens/s).

What it measures
    Sampling speed, in new tokens per second, of one model folder (a briefly
    trained toy:small policy by default, or ``--model``) over prompts from the
    toy ``test.jsonl``, with the same sampling settings on both sides
    (``SamplingParams(n=N, temperature=T, top_p=1.0, max_new_tokens=M)``):

    * server: ``OpenAIGenerator(ServerOptions(base_url, served_model,
      concurrency=C)).generate(...)``, the backend behind ``rlhfctl rollout
      --backend openai``, against a ``transformers serve MODEL`` this script
      starts on loopback (one request per sample, C in flight at once; the
      server applies the chat template to chat prompts), and
    * hf: ``HFGenerator(model, tokenizer).generate(...)`` in this process,
      the backend behind ``rlhfctl rollout --backend hf``, with
      ``batch_size=C``: the same number of sequences in flight at once.

    for each C of ``--concurrency`` (default 1, 4, 16). New tokens are
    ``Sample.num_tokens``: the server's ``usage.completion_tokens`` on the
    server side, the sampled tokens (eos included) on the hf side; each
    side's mean per sample is printed as a check that both did the same work.

Greedy by default
    ``transformers serve`` samples only where the model folder's
    ``generation_config.json`` sets ``do_sample``; otherwise it decodes
    greedily whatever the request's temperature. ``--temperature`` defaults
    to 0 (greedy on both sides, so both produce the same responses and the
    same token counts); ``--temperature 1`` compares like with like only on
    a folder whose generation config samples.

How it is timed
    The server is started once (its start-up and model load excluded) and
    the hf model is loaded once. A unit is one whole pass over the prompts by
    one side at one C, timed with ``perf_counter`` from the call to its
    return (HTTP, JSON, tokenisation and decoding included). Each side first
    runs one untimed pass over the first prompts. Over ``--repeats`` rounds,
    every C runs both sides back to back, alternating which goes first
    (server hf, hf server, ...), so both see the same background load. The
    script prints each side's median tokens/s per C and the median of the
    per-round ratios server / hf.

Threads
    ``--threads N`` pins torch's thread count in this process and sets
    OMP_NUM_THREADS=N for the server; the default is torch's own (one per
    core) on both sides. Report which you ran.

Target
    none: a measurement (how much the HTTP path costs on a CPU; on a GPU
    server such as ``vllm serve`` the server side is where the speed is).

How to run
    pip install -e '.[dev]'                                    # fastapi, uvicorn, openai: what transformers serve needs
    python benchmarks/server_speed.py                          # trains toy:small for 150 steps first (minutes)
    python benchmarks/server_speed.py --model runs/sft         # any train-sft output folder
    python benchmarks/server_speed.py --model runs/sft --num-prompts 64 --n 4 --max-new-tokens 64 --repeats 3 --threads 1

The last line of output is one JSON object with all the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _toy import load_prompts, make_toy_data, train_toy_sft  # noqa: E402

SIDES = ("server", "hf")
STARTUP_S = 300


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="New tokens/s of rlhfctl's server backend on a local `transformers serve` vs the in-process HF "
                    "backend, same model, prompts and sampling, at several concurrencies.",
        epilog="No target: a measurement. The last output line is JSON.",
    )
    p.add_argument("--model", default=None, help="a model folder (default: train toy:small with train-sft into a temp dir)")
    p.add_argument("--train-steps", type=int, default=150, help="train-sft steps for the default model (default 150)")
    p.add_argument("--data", default=None, help="a `rlhfctl toy-data` folder (default: make one in a temp dir)")
    p.add_argument("--num-prompts", type=int, default=64, help="test.jsonl prompts per pass (default 64)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy, on both sides (default 0: see the docstring)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16],
                   help="server requests in flight = hf batch size, one comparison each (default 1 4 16)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's own)")
    return p.parse_args(argv)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, threads: int | None, log: Path) -> tuple[subprocess.Popen, str]:
    """``transformers serve MODEL`` on a free loopback port, once it answers /health; (process, base URL)."""
    script = Path(sys.executable).with_name("transformers")
    command = str(script) if script.exists() else shutil.which("transformers")
    if command is None:
        raise SystemExit("no `transformers` command: pip install -e '.[dev]' (transformers serve needs fastapi, uvicorn)")
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with log.open("w") as sink:
        proc = subprocess.Popen([command, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"transformers serve did not answer within {STARTUP_S} s:\n{log.read_text()[-2000:]}")


def timed_pass(generator, prompts: list, params, tag: str) -> tuple[float, int]:
    """(seconds, new tokens) of one pass over ``prompts``."""
    keys = [f"{tag}:{i}" for i in range(len(prompts))]
    tic = time.perf_counter()
    out = generator.generate(prompts, params, keys=keys)
    seconds = time.perf_counter() - tic
    return seconds, sum(s.num_tokens for group in out for s in group)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.repeats < 1 or args.num_prompts < 1 or min(args.concurrency) < 1:
        raise SystemExit("--repeats, --num-prompts and every --concurrency must be at least 1")
    tmp = tempfile.TemporaryDirectory(prefix="server_speed_")
    if args.data is None:
        args.data = os.path.join(tmp.name, "data")
        make_toy_data(args.data)
    if args.model is None:
        args.model = os.path.join(tmp.name, "sft")
        train_toy_sft(args.data, args.model, args.train_steps)

    import torch

    from rlhfctl.generation.base import SamplingParams
    from rlhfctl.generation.hf import HFGenerator
    from rlhfctl.generation.server import OpenAIGenerator, ServerOptions
    from rlhfctl.models import eos_token_ids, load_causal_lm, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_prompts(args.data, args.num_prompts)
    tokenizer = load_tokenizer(args.model)
    hf = HFGenerator(load_causal_lm(args.model).eval(), tokenizer, eos_token_ids(tokenizer, args.model))
    hf_prompts = [hf.render(p) for p in records]
    params = SamplingParams(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    proc, base_url = start_server(args.model, args.threads, Path(tmp.name) / "serve.log")
    try:
        def sampler(side: str, c: int):
            if side == "hf":
                return hf, hf_prompts, replace(params, batch_size=c)
            server = OpenAIGenerator(ServerOptions(base_url=base_url, served_model=args.model, concurrency=c))
            return server, [server.render(p) for p in records], params

        for side in SIDES:  # untimed warm-up
            generator, prompts, params = sampler(side, max(args.concurrency))
            timed_pass(generator, prompts[: max(1, min(len(prompts), 4))], params, "warmup")
        rates: dict[int, dict[str, list[float]]] = {c: {s: [] for s in SIDES} for c in args.concurrency}
        tokens_per_sample: dict[str, list[float]] = {s: [] for s in SIDES}
        for r in range(args.repeats):
            for c in args.concurrency:
                for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                    generator, prompts, params = sampler(side, c)
                    seconds, tokens = timed_pass(generator, prompts, params, f"{r}")
                    rates[c][side].append(tokens / seconds)
                    tokens_per_sample[side].append(tokens / (len(prompts) * args.n))
                    print(f"round {r + 1} concurrency {c:>3} {side:>6}: {tokens:>7} new tokens in {seconds:8.2f} s "
                          f"= {tokens / seconds:9.1f} tokens/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    result = {"model": args.model, "num_prompts": args.num_prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
              "temperature": args.temperature, "repeats": args.repeats, "threads": args.threads or torch.get_num_threads(),
              "mean_tokens_per_sample": {s: statistics.mean(v) for s, v in tokens_per_sample.items()}, "by_concurrency": {}}
    print("mean new tokens per sample: " + ", ".join(f"{s} {v:.1f}" for s, v in result["mean_tokens_per_sample"].items()))
    print(f"\n{'concurrency':>11} {'server tok/s':>13} {'hf tok/s':>10} {'server/hf':>10}")
    for c in args.concurrency:
        server_rate, hf_rate = statistics.median(rates[c]["server"]), statistics.median(rates[c]["hf"])
        ratio = statistics.median(s / h for s, h in zip(rates[c]["server"], rates[c]["hf"]))
        result["by_concurrency"][str(c)] = {"server_tokens_per_s": server_rate, "hf_tokens_per_s": hf_rate,
                                            "ratio_server_over_hf": ratio, "rounds": rates[c]}
        print(f"{c:>11} {server_rate:>13.1f} {hf_rate:>10.1f} {ratio:>9.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
