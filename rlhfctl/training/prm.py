"""Training the process reward model (`train-rm --prm`).

A token-classification head read at the last token of each step, trained
with per-step binary cross-entropy on hard or soft labels; prompt tokens and
tokens inside a step carry no loss. Same machinery as the ORM: length
buckets, accelerate, checkpoints and resume, a held-out split, a manifest
with held-out step accuracy and the mean/std of step scores.
"""

from __future__ import annotations

from typing import Any

from rlhfctl.artifacts import describe_inputs, make_manifest, publish_model_folder
from rlhfctl.console import log, plural
from rlhfctl.models import ModelSource, load_tokenizer, save_model, saved_dtype
from rlhfctl.rm.data import StepItem, encode_step_items, read_steps, split_steps_by_prompt
from rlhfctl.rm.evaluate import evaluate_steps
from rlhfctl.rm.losses import step_bce_loss
from rlhfctl.rm.model import PRM, TokenValues, build_reward_model, head_names, right_pad
from rlhfctl.training.loop import claim_run_dir, fit, optimizer_step, peak_memory, seed_global_rngs, shard, start_training
from rlhfctl.training.rm import RMConfig, _inputs, load_splits, open_run
from rlhfctl.training.scale import final_state_dict, model_for_inference, prepare_model


def run(config: RMConfig) -> dict[str, Any]:
    train, held = load_splits(config, read_steps, split_steps_by_prompt)
    accelerator, out, options = open_run(config)

    tokenizer = load_tokenizer(ModelSource(config.model, config.trust_remote_code))
    items = encode_step_items(train, tokenizer, config.max_length, config.step_sep)
    seed_global_rngs(config.schedule.seed)
    model = build_reward_model(ModelSource(config.model, config.trust_remote_code), PRM, config.schedule.seed)
    adapters = prepare_model(accelerator, model, config.scale, heads=head_names(model))
    values = TokenValues(model)
    total = config.schedule.total_steps(len(items))
    with claim_run_dir(out, "train-rm", options, accelerator.is_main_process):
        accelerator.wait_for_everyone()
        run_ = start_training(accelerator, values, config.schedule, total, out, config.resume)
        log(f"train-rm --prm: {plural(len(items), 'solution')}, {plural(sum(len(i.labels) for i in items), 'step')}, "
            f"{plural(total, 'optimiser step')}; held out: {plural(len(held), 'solution')}", accelerator.is_main_process)

        def step(batch: list[int]) -> dict[str, Any]:
            return _train_step(run_, [items[i] for i in batch], tokenizer.pad_token_id, config.schedule.max_grad_norm)

        last = fit(run_, [it.length for it in items], config.schedule, step, "train-rm --prm")
    held_items = encode_step_items(held, tokenizer, config.max_length, config.step_sep)
    held_scores = evaluate_steps(model_for_inference(accelerator, run_.model), held_items, tokenizer.pad_token_id)
    results = {"kind": PRM, "steps": total, "final_loss": last.get("loss"), "step_sep": config.step_sep,
               "train": {"solutions": len(items)}, **held_scores, **adapters}
    weights = final_state_dict(accelerator, run_.model, config.scale, prefix="model.")
    if accelerator.is_main_process:
        manifest = make_manifest("train-rm", options, describe_inputs(_inputs(config)), results)
        dtype = saved_dtype(config.model, config.scale.save_dtype)
        publish_model_folder(out, lambda tmp: save_model(model, tokenizer, tmp, weights, dtype), manifest)
    accelerator.wait_for_everyone()
    return {**results, **peak_memory()}  # the summary shows it; the manifest keeps what a rerun reproduces


def _train_step(run, batch: list[StepItem], pad_id: int, max_grad_norm: float) -> dict[str, Any]:
    """Per-step BCE, a mean over the global batch's steps (sum here / global count)."""
    import torch

    acc = run.accelerator
    global_steps = sum(len(it.labels) for it in batch)
    local, weight = shard(batch, acc.process_index, acc.num_processes)
    ids, mask = right_pad([it.ids for it in local], pad_id)
    values = run.model(ids.to(acc.device), mask.to(acc.device)).float()  # (B, T)
    rows = torch.tensor([b for b, it in enumerate(local) for _ in it.positions], device=acc.device)
    cols = torch.tensor([p for it in local for p in it.positions], device=acc.device)
    labels = torch.tensor([y for it in local for y in it.labels], device=acc.device)
    step_scores = values[rows, cols]  # (S,)
    loss = weight * step_bce_loss(step_scores, labels) * len(labels) / global_steps
    acc.backward(loss * acc.num_processes)
    grad_norm = optimizer_step(run.accelerator, run.model, run.optimizer, max_grad_norm, run.scheduler)
    hits = weight * ((step_scores > 0) == (labels >= 0.5)).float().sum()
    return {"loss": float(acc.reduce(loss.detach(), reduction="sum")), "grad_norm": grad_norm,
            "step_acc": float(acc.reduce(hits.detach(), reduction="sum")) / global_steps, "solutions": len(batch)}
