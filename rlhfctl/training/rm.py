"""Training the unified outcome reward model (docs/design.md §1).

Pairs and binary items are mixed in one stream; a batch's loss is
``½(L_BT + L_cls)`` when it holds both kinds (`rm.losses.unified_loss`).
All sequences of a batch, chosen, rejected and binary alike, go through one
forward pass; batches are length-bucketed so padding stays small. After
training, held-out accuracy and the reward's mean and std are written into
the manifest, for every consumer to standardise scores with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfctl.artifacts import describe_inputs, make_manifest, publish_model_folder
from rlhfctl.console import log, plural
from rlhfctl.errors import ConfigError
from rlhfctl.models import ModelSource, load_tokenizer, save_model, saved_dtype
from rlhfctl.packing import attention_implementation, pack, use_packing
from rlhfctl.rm.data import BINARY_ITEM, PAIR, Item, encode_items, read_preferences, split_by_prompt
from rlhfctl.rm.evaluate import evaluate_items
from rlhfctl.rm.losses import unified_loss
from rlhfctl.rm.model import ORM, TokenValues, build_reward_model, gather_last, head_names, right_pad
from rlhfctl.training.loop import (
    Schedule, check_run_dir, claim_run_dir, fit, manifest_options, optimizer_step, peak_memory, seed_global_rngs, shard,
    start_training,
)
from rlhfctl.training.scale import RESUME_IDENTITY, ScaleOptions, final_state_dict, make_accelerator, model_for_inference, prepare_model


@dataclass(frozen=True)
class RMConfig:
    data: tuple[str, ...]
    model: str
    out: str
    schedule: Schedule
    eval_data: tuple[str, ...] = ()
    eval_fraction: float = 0.1
    max_length: int = 512
    resume: bool = False
    trust_remote_code: bool = False
    prm: bool = False  # a process reward model on stepwise data (training/prm.py)
    step_sep: str = "\n"
    scale: ScaleOptions = ScaleOptions()
    packing: bool = True  # a pair's chosen and rejected in one row, their shared prompt computed once (rlhfctl.packing)

    def check(self) -> None:
        self.schedule.check()
        self.scale.check()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")


def load_splits(config: RMConfig, read, split):
    """(train, held-out): DATA and --eval-data, or DATA split by prompt."""
    config.check()
    data = read(config.data)
    train, held = (data, read(config.eval_data)) if config.eval_data else split(data, config.eval_fraction, config.schedule.seed)
    if not len(train):
        raise ConfigError("no training records left after the held-out split: lower --eval-fraction")
    return train, held


def open_run(config: RMConfig):
    """(accelerator, run folder, options): the folder checked by rank 0 (`claim_run_dir` writes it)."""
    accelerator = make_accelerator(config.scale.bf16)
    out, options = Path(config.out), manifest_options(config)
    if accelerator.is_main_process:
        check_run_dir(out, "train-rm", options, config.resume, identity=("prm", *RESUME_IDENTITY))
    return accelerator, out, options


def run(config: RMConfig) -> dict[str, Any]:
    train, held = load_splits(config, read_preferences, split_by_prompt)
    accelerator, out, options = open_run(config)

    tokenizer = load_tokenizer(ModelSource(config.model, config.trust_remote_code))
    items, overlong = encode_items(train, tokenizer, config.max_length)
    seed_global_rngs(config.schedule.seed)
    model = build_reward_model(ModelSource(config.model, config.trust_remote_code), ORM, config.schedule.seed)
    adapters = prepare_model(accelerator, model, config.scale, heads=head_names(model))
    values = TokenValues(model)
    packing = not values.pooled and use_packing(config.packing, model, "train-rm", accelerator.is_main_process)
    total = config.schedule.total_steps(len(items))
    with claim_run_dir(out, "train-rm", options, accelerator.is_main_process):
        accelerator.wait_for_everyone()
        run_ = start_training(accelerator, values, config.schedule, total, out, config.resume)
        log(f"train-rm: {plural(len(train.pairs), 'pair')}, {plural(len(train.binary), 'binary item')}, {plural(total, 'step')} of "
            f"{config.schedule.batch_size}; held out: {plural(len(held.pairs), 'pair')}, {len(held.binary)} binary", accelerator.is_main_process)

        def step(batch: list[int]) -> dict[str, Any]:
            return _train_step(run_, [items[i] for i in batch], tokenizer.pad_token_id, config.schedule.max_grad_norm, packing)

        last = fit(run_, [it.length for it in items], config.schedule, step, "train-rm")
    held_items, held_overlong = encode_items(held, tokenizer, config.max_length)
    held_scores = evaluate_items(model_for_inference(accelerator, run_.model), held_items, tokenizer.pad_token_id)
    results = {"kind": ORM, "steps": total, "final_loss": last.get("loss"),
               "train": {"pairs": len(train.pairs), "binary": len(train.binary), "dropped": train.dropped,
                         "overlong": overlong}, **held_scores, "overlong": held_overlong, **adapters}
    weights = final_state_dict(accelerator, run_.model, config.scale, prefix="model.")
    if accelerator.is_main_process:
        manifest = make_manifest("train-rm", options, describe_inputs(_inputs(config)), results)
        dtype = saved_dtype(config.model, config.scale.save_dtype)
        publish_model_folder(out, lambda tmp: save_model(model, tokenizer, tmp, weights, dtype), manifest)
    accelerator.wait_for_everyone()
    return {**results, **peak_memory()}  # the summary shows it; the manifest keeps what a rerun reproduces


def _train_step(run, batch: list[Item], pad_id: int, max_grad_norm: float, packing: bool = False) -> dict[str, Any]:
    """Forward every sequence of this rank's share at once, then the unified loss.

    Packed, each pair is one row: the prompt (the tokens chosen and rejected
    share) once, then each response's own tokens, which see only the prompt
    and themselves (`rlhfctl.packing`); about a third fewer tokens than
    padding both responses to the longer on the toy task.

    Each loss is a mean over the *global* batch (sum here / global count), and
    scaled by the world size because DDP averages the ranks' gradients.
    """
    import torch

    acc = run.accelerator
    n_pairs = sum(it.kind == PAIR for it in batch)
    n_bin = len(batch) - n_pairs
    local, weight = shard(batch, acc.process_index, acc.num_processes)
    pairs = [it for it in local if it.kind == PAIR]
    binary = [it for it in local if it.kind == BINARY_ITEM]
    seqs = [s for it in pairs for s in it.seqs] + [it.seqs[0] for it in binary]  # (chosen, rejected)*P + binary
    if packing:
        packed = pack(seqs, [i // 2 for i in range(2 * len(pairs))] + [-1 - i for i in range(len(binary))], pad_id).to(acc.device)
        values = run.model(packed.input_ids, packed.attention_mask(attention_implementation(run.model)), packed.position_ids)
        scores = values[packed.row, packed.last_columns()].float()  # (2P + B,)
    else:
        ids, mask = right_pad(seqs, pad_id)
        ids, mask = ids.to(acc.device), mask.to(acc.device)
        # No attention mask in a causal forward: right padding under causal attention hides every pad from
        # the real tokens, and only the last real token is read (as train-sft; SDPA's causal path is faster).
        # A pooled (encoder) head sees every position, so it gets the mask.
        scores = gather_last(run.model(ids, mask if getattr(_unwrap(run.model), "pooled", False) else None), mask).float()  # (2P + B,)
    chosen, rejected, bin_scores = scores[0:2 * len(pairs):2], scores[1:2 * len(pairs):2], scores[2 * len(pairs):]
    margin = torch.tensor([it.margin for it in pairs], device=acc.device)
    labels = torch.tensor([it.label for it in binary], device=acc.device)
    loss, _ = unified_loss(chosen, rejected, margin, bin_scores, labels, pair_count=n_pairs, binary_count=n_bin)
    loss = weight * loss
    stats = {}
    if n_pairs:
        stats["pair_acc"] = (weight * (chosen > rejected).float().sum(), n_pairs)
    if n_bin:
        stats["binary_acc"] = (weight * ((bin_scores > 0) == labels).float().sum(), n_bin)
    acc.backward(loss * acc.num_processes)
    grad_norm = optimizer_step(run.accelerator, run.model, run.optimizer, max_grad_norm, run.scheduler)
    out = {"loss": float(acc.reduce(loss.detach(), reduction="sum")), "grad_norm": grad_norm,
           "pairs": n_pairs, "binary": n_bin}
    for name, (hits, count) in stats.items():
        out[name] = float(acc.reduce(hits.detach(), reduction="sum")) / count
    return out


def _unwrap(model):
    """The `TokenValues` inside accelerate's wrappers (DDP, FSDP)."""
    while not isinstance(model, TokenValues) and hasattr(model, "module"):
        model = model.module
    return model


def _inputs(config: RMConfig) -> dict[str, Any]:
    paths = {f"data{i}": p for i, p in enumerate(config.data)}
    paths.update({f"eval_data{i}": p for i, p in enumerate(config.eval_data)})
    paths["model"] = config.model
    return paths
