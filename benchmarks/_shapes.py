"""Real-shaped models for the speed benchmarks: ``--model PATH`` or ``--shape NAME --layers N``.

``--shape`` builds, in a temp folder, a randomly initialised model with the
architecture, widths and vocabulary of a public checkpoint (values from its
``config.json``) but only ``--layers`` layers, and a byte-level BPE trained
here on the benchmark's data and padded with unused entries to the model's
vocabulary size, so that the logits have the real vocabulary dimension. The
toy records are lengthened to about ``--seq-tokens`` tokens (completions, or
chosen and rejected responses, joined from several records), the same data
for every side. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# hidden, intermediate, heads, kv heads, vocab, tied embeddings, rope theta: from each model's config.json
SHAPES = {
    "qwen2.5-0.5b": dict(architecture="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, max_position_embeddings=32768),
    "llama-3.2-1b": dict(architecture="llama", hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=131072, head_dim=64,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "smollm2-135m": dict(architecture="llama", hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=8192),
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def add_model_args(p: argparse.ArgumentParser, default_model: str | None) -> None:
    what = f"(default {default_model})" if default_model else "(default: see --shape)"
    p.add_argument("--model", default=default_model, help=f"any model folder or toy:SIZE, every side {what}")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="a randomly initialised model of this architecture and vocabulary instead of --model")
    p.add_argument("--layers", type=int, default=2, help="layers of the --shape model (default 2)")
    p.add_argument("--seq-tokens", type=int, default=256, help="with --shape, records lengthened to about this many tokens")


def shaped_inputs(args: argparse.Namespace, workdir: str) -> None:
    """With ``--shape``: build the model and the lengthened data under ``workdir``; point ``args.model`` and ``args.data`` at them."""
    if not args.shape:
        return
    folder, data = Path(workdir) / f"{args.shape}-{args.layers}l", Path(workdir) / "data"
    texts = [json.loads(line) for line in (Path(args.data) / "sft.jsonl").read_text().splitlines()[:2000]]
    tokenizer = build_tokenizer([r["prompt"] + r["completion"] for r in texts], SHAPES[args.shape]["vocab_size"])
    build_model(args.shape, args.layers, tokenizer, folder)
    lengthen(Path(args.data), data, tokenizer, args.seq_tokens)
    args.model, args.data = str(folder), str(data)
    print(f"--shape {args.shape}: {args.layers} layers, vocabulary {SHAPES[args.shape]['vocab_size']:,}, in {folder}", flush=True)


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE trained on ``corpus``, its vocabulary padded with unused entries to ``vocab_size`` ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer=trainer)
    spec = json.loads(core.to_str())
    vocab = spec["model"]["vocab"]
    vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), vocab_size)})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=4096)


def build_model(shape: str, layers: int, tokenizer, folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    values = dict(SHAPES[shape])
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        values.pop("architecture")]
    ids = tokenizer.convert_tokens_to_ids
    config = config_class(**values, num_hidden_layers=layers, bos_token_id=ids("<|endoftext|>"),
                          eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), torch_dtype="float32")
    torch.manual_seed(0)
    model = model_class(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lengthen(src: Path, dst: Path, tokenizer, tokens: int) -> None:
    """The toy files with each record about ``tokens`` tokens long: completions (and chosen and rejected
    responses) made of several records' completions, so every side trains on the same longer records."""
    dst.mkdir(parents=True, exist_ok=True)
    sft = [json.loads(line) for line in (src / "sft.jsonl").read_text().splitlines()[:4000]]
    pool = [r["completion"] for r in sft]

    def long_text(start: int, head: str) -> str:
        parts, size, i = [head], len(tokenizer(head)["input_ids"]), start
        while size < tokens:
            parts.append(pool[i % len(pool)])
            size += len(tokenizer(parts[-1])["input_ids"]) + 1
            i += 1
        return "\n".join(parts)

    rows = [{"prompt": r["prompt"], "completion": long_text(i + 1, r["completion"])} for i, r in enumerate(sft[:2000])]
    (dst / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefs = [json.loads(line) for line in (src / "prefs_style.jsonl").read_text().splitlines()]
    for i, r in enumerate(prefs):
        filler = long_text(i, "")
        r["chosen"], r["rejected"] = f"{filler}\n{r['chosen']}", f"{filler}\n{r['rejected']}"
    (dst / "prefs_style.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    for name in ("train.jsonl", "test.jsonl", "toy.json"):
        if (src / name).exists():
            (dst / name).write_text((src / name).read_text())
