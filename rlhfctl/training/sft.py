"""Supervised fine-tuning: next-token loss on completion tokens only.

``L = -(1/T) Σ_t log π(y_t | x, y_<t)`` over the T completion tokens of the
global batch (prompt and padding tokens carry no loss), AdamW with linear
warmup and cosine decay.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhfctl.artifacts import describe_inputs, make_manifest, publish_model_folder
from rlhfctl.data import Example, encode_example
from rlhfctl.console import Progress, log
from rlhfctl.records import SFT, read_records
from rlhfctl.training.loop import (
    METRICS, MetricsLog, Schedule, batch_stream, prepare_run_dir, read_metrics,
    restore_training_state, save_training_state, shard, warmup_cosine,
)


@dataclass(frozen=True)
class SFTConfig:
    data: str
    model: str
    out: str
    schedule: Schedule
    max_length: int = 512
    resume: bool = False
    trust_remote_code: bool = False


def run(config: SFTConfig) -> dict[str, Any]:
    """Train, save the final model as a Hugging Face folder, return results."""
    import torch
    from accelerate import Accelerator

    from rlhfctl.models import check_model_spec, count_parameters, load_causal_lm, load_tokenizer, save_model

    config.schedule.check()
    check_model_spec(config.model)
    records = read_records(config.data, SFT)
    accelerator = Accelerator()
    main = accelerator.is_main_process
    out = Path(config.out)
    options = _options(config)
    if main:
        prepare_run_dir(out, "train-sft", options, config.resume)
    accelerator.wait_for_everyone()

    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    examples = [encode_example(tokenizer, r["prompt"], r["completion"], config.max_length) for r in records]
    model = load_causal_lm(config.model, seed=config.schedule.seed, trust_remote_code=config.trust_remote_code)
    total = config.schedule.total_steps(len(examples))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.schedule.lr, weight_decay=config.schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, int(config.schedule.warmup_ratio * total)))
    model, optimizer = accelerator.prepare(model, optimizer)
    start = restore_training_state(out, accelerator, model, optimizer, scheduler)[0] if config.resume else 0
    if start:
        log(f"resuming from step {start}", main)
    metrics = MetricsLog(out / METRICS, start, enabled=main)
    log(f"train-sft: {len(examples)} records, {count_parameters(model):,} parameters, {total} steps of {config.schedule.batch_size}", main)

    pad_id = tokenizer.pad_token_id
    lengths = [len(e.input_ids) for e in examples]
    stream = batch_stream(lengths, config.schedule.batch_size, config.schedule.seed, start)
    last: dict[str, Any] = {}
    model.train()
    with Progress("train-sft", total, start, main) as progress:
        for step in range(start + 1, total + 1):
            epoch, batch = next(stream)
            tic = time.perf_counter()
            loss, tokens = _train_step(model, optimizer, scheduler, accelerator, [examples[i] for i in batch], pad_id, config.schedule.max_grad_norm)
            last = {"step": step, "epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0],
                    "tokens": tokens, "samples_per_s": len(batch) / (time.perf_counter() - tic)}
            metrics.write(last)
            progress.advance(f"loss {loss:.4f}")
            if step % config.schedule.save_every == 0 and step < total:
                save_training_state(out, step, accelerator, model, optimizer, scheduler, {}, config.schedule.keep_checkpoints)

    if not last and start and main:  # resumed from the final checkpoint: the last step's metrics are on disk
        last = (read_metrics(out) or [{}])[-1]
    results = {"final_loss": last.get("loss"), "steps": total, "parameters": count_parameters(model)}
    save_training_state(out, total, accelerator, model, optimizer, scheduler, {}, config.schedule.keep_checkpoints)
    if main:
        unwrapped = accelerator.unwrap_model(model)
        manifest = make_manifest("train-sft", options, describe_inputs({"data": config.data, "model": config.model}), results)
        publish_model_folder(out, lambda tmp: save_model(unwrapped, tokenizer, tmp), manifest)
    accelerator.wait_for_everyone()
    return results


def _train_step(model, optimizer, scheduler, accelerator, batch: list[Example], pad_id: int, max_grad_norm: float) -> tuple[float, int]:
    """One optimiser step on the global batch; returns (mean token loss, tokens)."""
    import torch

    local = shard(batch, accelerator.process_index, accelerator.num_processes)
    global_tokens = sum(len(e.input_ids) - e.prompt_len for e in batch) or 1  # = labels != -100 after the shift
    input_ids, attention_mask, labels = collate(local, pad_id)
    logits = model(input_ids=input_ids.to(accelerator.device), attention_mask=attention_mask.to(accelerator.device)).logits
    # Sum over this rank's tokens / the global count, times world: DDP averages
    # the ranks' gradients, so the result is the token mean of the global batch.
    loss_sum = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(accelerator.device), ignore_index=-100, reduction="sum"
    )
    accelerator.backward(loss_sum * accelerator.num_processes / global_tokens)
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    total = accelerator.reduce(loss_sum.detach(), reduction="sum")
    return float(total) / global_tokens, global_tokens


def collate(examples: list[Example], pad_id: int):
    """Right-padded (B, T) input ids, attention mask, and labels (-100 off-loss)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        attention_mask[i, :n] = 1
        labels[i, e.prompt_len:n] = input_ids[i, e.prompt_len:n]
    return input_ids, attention_mask, labels


def _options(config: SFTConfig) -> dict[str, Any]:
    options = asdict(config)
    options.update(options.pop("schedule"))
    return options
