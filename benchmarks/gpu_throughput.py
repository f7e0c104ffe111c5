"""GPU throughput of a 0.5B-shaped model: generation new tokens/s, training tokens/s and MFU.

What it measures
    No model can be downloaded on the machines rlhfctl is tested on, so this
    builds a model with the shape of Qwen2.5-0.5B (24 layers, hidden 896,
    14 query / 2 key-value heads, MLP 4864; about 360M parameters without the
    embedding tables) from a config, randomly initialised, with the toy
    character tokenizer, and saves it as a Hugging Face folder. Then:

    * generation: rlhfctl's HF backend (``HFGenerator``, what ``rollout``
      runs) against a plain ``model.generate`` loop, same bf16 model, same
      rows (``--gen-batch`` rows of random prompts), pure sampling at
      temperature 1, ``--gen-tokens`` new tokens; new tokens/s of each and
      their ratio. Both sides run alternately in one process, batch by batch.
    * training: ``rlhfctl train-sft --bf16`` (and with
      ``--gradient-checkpointing``) on synthetic records of ``--seq-len``
      tokens, ``--train-batch`` records per step; tokens/s over the steps
      after the first ``--warmup-steps`` (from the run's metrics.jsonl), and
      model FLOPs utilisation ``MFU = 6 · N · tokens/s / peak``, with N the
      parameter count and peak the card's dense bf16 rate (H100/H200 SXM:
      989 TFLOP/s). Attention FLOPs are left out of the numerator, so MFU
      is slightly understated.

How to run (on a GPU machine; `tests/gpu/run.sh` runs it)
    python benchmarks/gpu_throughput.py
    python benchmarks/gpu_throughput.py --train-steps 20 --seq-len 1024

The last line of output is one JSON object with all the numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN25_05B_BODY = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, max_position_embeddings=4096, rope_theta=1_000_000.0)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPU generation and training throughput of a 0.5B-shaped model.")
    p.add_argument("--gen-batch", type=int, default=64, help="rows generated together (default 64)")
    p.add_argument("--gen-tokens", type=int, default=256, help="new tokens per row (default 256)")
    p.add_argument("--gen-rounds", type=int, default=3, help="timed batches per side (default 3)")
    p.add_argument("--train-steps", type=int, default=12, help="train-sft steps per run (default 12)")
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the rate (default 2)")
    p.add_argument("--train-batch", type=int, default=16, help="records per step (default 16)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per record (default 1024)")
    p.add_argument("--workdir", default=None, help="where the model and data go (default: a temp dir)")
    return p.parse_args(argv)


def build_model_folder(folder: Path) -> int:
    """Save the 0.5B-shaped model (bf16 weights) with the toy tokenizer; returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlhfctl.toy.tokenizer import SPECIALS, VOCAB_SIZE, build_toy_tokenizer

    config = Qwen2Config(vocab_size=VOCAB_SIZE, pad_token_id=SPECIALS.index("<pad>"), bos_token_id=SPECIALS.index("<bos>"),
                         eos_token_id=SPECIALS.index("<eos>"), tie_word_embeddings=False, **QWEN25_05B_BODY)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    build_toy_tokenizer().save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def random_text(rng: random.Random, chars: int) -> str:
    return "".join(rng.choice("0123456789+-= \n") for _ in range(chars))


def generation_rates(folder: Path, args) -> dict:
    import torch

    from rlhfctl.generation.base import SamplingParams
    from rlhfctl.generation.hf import HFGenerator
    from rlhfctl.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), dtype="bfloat16").to("cuda").eval()
    generator = HFGenerator(model, tokenizer)
    rng = random.Random(0)
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=args.gen_tokens, batch_size=args.gen_batch)
    totals = {"rlhfctl": [0, 0.0], "generate": [0, 0.0]}
    for round_ in range(args.gen_rounds + 1):  # round 0 warms both up
        prompts = [random_text(rng, rng.randint(20, 60)) for _ in range(args.gen_batch)]
        for side in ("rlhfctl", "generate") if round_ % 2 == 0 else ("generate", "rlhfctl"):
            torch.cuda.synchronize()
            tic = time.perf_counter()
            if side == "rlhfctl":
                new = sum(s.num_tokens for g in generator.generate(prompts, params) for s in g)
            else:
                new = _plain_generate(model, tokenizer, prompts, args.gen_tokens)
            torch.cuda.synchronize()
            if round_:
                totals[side][0] += new
                totals[side][1] += time.perf_counter() - tic
    rates = {side: n / t for side, (n, t) in totals.items()}
    return {"gen_tokens_per_s_rlhfctl": rates["rlhfctl"], "gen_tokens_per_s_generate": rates["generate"],
            "gen_ratio": rates["rlhfctl"] / rates["generate"]}


def _plain_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> int:
    import torch

    enc = tokenizer(prompts, return_tensors="pt", padding=True).to("cuda")
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    count = 0
    for row in new.tolist():
        count += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return count


def write_sft_data(path: Path, records: int, seq_len: int) -> None:
    rng = random.Random(1)
    with path.open("w") as f:
        for _ in range(records):
            prompt = random_text(rng, seq_len // 4)
            f.write(json.dumps({"prompt": prompt, "completion": random_text(rng, seq_len - seq_len // 4 - 2)}) + "\n")


def training_rate(folder: Path, data: Path, out: Path, args, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "rlhfctl", "train-sft", str(data), "--model", str(folder), "--out", str(out),
           "--max-steps", str(args.train_steps), "--batch-size", str(args.train_batch), "--max-length", str(args.seq_len),
           "--save-every", str(10 ** 6), "--bf16", *extra]
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - tic
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in rows if "samples_per_s" in r][args.warmup_steps:]
    seconds = sum(args.train_batch / r["samples_per_s"] for r in timed)
    return {"tokens_per_s": len(timed) * args.train_batch * args.seq_len / seconds, "wall_s": wall}


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA GPU")
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rlhfctl-gpu-"))
    folder = work / "model-0.5b"
    params = build_model_folder(folder)
    print(f"device {name}; model {params / 1e6:.0f}M parameters (Qwen2.5-0.5B body, toy vocabulary)", flush=True)
    result = {"device": name, "parameters": params, **generation_rates(folder, args)}
    print(f"generation: rlhfctl {result['gen_tokens_per_s_rlhfctl']:.0f} new tokens/s, model.generate "
          f"{result['gen_tokens_per_s_generate']:.0f}, ratio {result['gen_ratio']:.2f}x "
          f"({args.gen_batch} rows, {args.gen_tokens} new tokens, bf16)", flush=True)
    data = work / "sft.jsonl"
    write_sft_data(data, args.train_batch * (args.train_steps + 1), args.seq_len)
    for label, extra in (("bf16", []), ("bf16+gc", ["--gradient-checkpointing"])):
        rate = training_rate(folder, data, work / f"sft-{label}", args, extra)
        mfu = 6 * params * rate["tokens_per_s"] / peak if peak else None
        result[f"train_tokens_per_s_{label}"] = rate["tokens_per_s"]
        result[f"train_mfu_{label}"] = mfu
        print(f"train-sft {label}: {rate['tokens_per_s']:.0f} tokens/s"
              + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "") + f" ({args.train_batch} x {args.seq_len} tokens/step, "
              f"wall {rate['wall_s']:.0f} s incl. start-up)", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
