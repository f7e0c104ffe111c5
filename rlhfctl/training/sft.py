"""Supervised fine-tuning: next-token loss on completion tokens only.

``L = -(1/T) Σ_t log π(y_t | x, y_<t)`` over the T completion tokens of the
global batch (prompt and padding tokens carry no loss), AdamW with linear
warmup and cosine decay.

Shared prefix. The records of a batch often begin alike (a system prompt, a
chat template's header, the toy task's ``<bos>Compute ``). With ``packing``
on, a step runs that common prefix once, as a batch of one, and the rest of
every record with the prefix's keys and values as its past: the same
logits, loss and gradients as the full forward (up to float rounding) for
fewer token passes. The prefix stops before the shortest prompt ends, so no
loss term reads a prefix logit.

Large vocabularies. The LM head runs on the completion tokens' hidden
states only, a chunk of rows at a time, and the backward pass recomputes
each chunk's logits (`rlhfctl.logprobs`): the batch's full-vocabulary
logits never exist at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfctl.artifacts import describe_inputs, make_manifest, publish_model_folder
from rlhfctl.data import Example, PromptFormat, encode_examples
from rlhfctl.console import log, plural
from rlhfctl.generation.hf import cache_keyword
from rlhfctl.logprobs import final_hidden, token_logprobs
from rlhfctl.models import ModelSource, check_model_spec, count_parameters, load_causal_lm, load_tokenizer, save_model, saved_dtype
from rlhfctl.packing import common_prefix
from rlhfctl.records import SFT, read_records
from rlhfctl.training.loop import (
    Schedule, check_run_dir, claim_run_dir, fit, manifest_options, optimizer_step, peak_memory, seed_global_rngs, shard,
    start_training,
)
from rlhfctl.training.scale import (
    RESUME_IDENTITY, ScaleOptions, check_frozen_outer_weights, final_state_dict, make_accelerator, prepare_model,
)


@dataclass(frozen=True)
class SFTConfig:
    data: str
    model: str
    out: str
    schedule: Schedule
    max_length: int = 512
    resume: bool = False
    packing: bool = True  # run the batch's common prefix once (`--no-packing`: every record whole)
    trust_remote_code: bool = False
    fields: dict[str, str] = field(default_factory=dict)  # --field renames of the data's columns
    prompt_format: PromptFormat = PromptFormat()  # --system / --prompt-template
    scale: ScaleOptions = ScaleOptions()  # last: the manifest lists its options last


def run(config: SFTConfig) -> dict[str, Any]:
    """Train, save the final model as a Hugging Face folder, return results."""
    config.schedule.check()
    config.scale.check()
    # bad data fails before the heavy imports
    records = config.prompt_format.apply(read_records(config.data, SFT, fields=config.fields), config.data)

    check_model_spec(config.model)
    accelerator = make_accelerator(config.scale.bf16)
    check_frozen_outer_weights(accelerator, config.scale, "train-sft")
    out, options = Path(config.out), manifest_options(config)
    if accelerator.is_main_process:
        check_run_dir(out, "train-sft", options, config.resume, identity=RESUME_IDENTITY)

    tokenizer = load_tokenizer(ModelSource(config.model, config.trust_remote_code))
    examples = encode_examples(tokenizer, [(r["prompt"], r["completion"]) for r in records], config.max_length)
    seed_global_rngs(config.schedule.seed)
    model = load_causal_lm(ModelSource(config.model, config.trust_remote_code), seed=config.schedule.seed)
    parameters = count_parameters(model)
    adapters = prepare_model(accelerator, model, config.scale)
    total = config.schedule.total_steps(len(examples))
    with claim_run_dir(out, "train-sft", options, accelerator.is_main_process):
        accelerator.wait_for_everyone()
        run_ = start_training(accelerator, model, config.schedule, total, out, config.resume)
        log(f"train-sft: {plural(len(examples), 'record')}, {parameters:,} parameters, {plural(total, 'step')} of {config.schedule.batch_size}",
            accelerator.is_main_process)
        share_prefix = config.packing and prefix_sharing_applies(accelerator, config.scale, accelerator.is_main_process)

        def step(batch: list[int]) -> dict[str, Any]:
            return _train_step(run_, [examples[i] for i in batch], tokenizer.pad_token_id, config.schedule.max_grad_norm,
                               share_prefix)

        last = fit(run_, [len(e.input_ids) for e in examples], config.schedule, step, "train-sft")
    results = {"final_loss": last.get("loss"), "steps": total, "parameters": parameters, **adapters}
    weights = final_state_dict(accelerator, run_.model, config.scale)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run_.model)
        manifest = make_manifest("train-sft", options, describe_inputs({"data": config.data, "model": config.model}), results)
        dtype = saved_dtype(config.model, config.scale.save_dtype)
        publish_model_folder(out, lambda tmp: save_model(unwrapped, tokenizer, tmp, weights, dtype), manifest)
    accelerator.wait_for_everyone()
    return {**results, **peak_memory()}  # the summary shows it; the manifest keeps what a rerun reproduces


def _train_step(run, batch: list[Example], pad_id: int, max_grad_norm: float, share_prefix: bool) -> dict[str, Any]:
    """One optimiser step on the global batch: the token-mean loss over its completions."""
    acc = run.accelerator
    local, weight = shard(batch, acc.process_index, acc.num_processes)
    global_tokens = sum(len(e.input_ids) - e.prompt_len for e in batch) or 1  # = labels != -100 after the shift
    input_ids, _, labels = collate(local, pad_id)
    shared = shared_prefix_length(local) if share_prefix else 0
    with final_hidden(run.model) as found:
        states = forward_after_prefix(run.model, acc.unwrap_model(run.model), input_ids.to(acc.device), shared, found.states)
    # states[:, j] is at position shared + j and predicts the token at shared + j + 1; only the completion
    # tokens' rows reach the LM head. Sum over this rank's tokens / the global count, times world: DDP
    # averages the ranks' gradients, so the result is the token mean of the global batch.
    targets = labels[:, shared + 1:].to(acc.device)
    loss_rows = targets != -100
    logp, _ = token_logprobs(states[:, :-1][loss_rows], targets[loss_rows], found.head, compute_dtype=found.compute_dtype,
                             grads_ahead=True)
    loss_sum = -weight * logp.sum()
    acc.backward(loss_sum * acc.num_processes / global_tokens)
    grad_norm = optimizer_step(run.accelerator, run.model, run.optimizer, max_grad_norm, run.scheduler)
    total = acc.reduce(loss_sum.detach(), reduction="sum")
    return {"loss": float(total) / global_tokens, "tokens": global_tokens, "grad_norm": grad_norm}


def prefix_sharing_applies(accelerator, scale: ScaleOptions, main: bool = True) -> bool:
    """Whether train-sft can run a batch's common prefix once; says why not when it cannot.

    The prefix runs outside the wrapper that DDP puts round the model, which
    is sound there (every weight still gets one summed gradient per step) but
    not under FSDP or DeepSpeed, whose wrappers gather or partition weights
    and gradients. Gradient checkpointing drops the key/value cache that
    carries the prefix over.
    """
    from accelerate.utils import DistributedType

    reason = None
    if scale.gradient_checkpointing:
        reason = "--gradient-checkpointing keeps no key/value cache"
    elif accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        reason = f"{accelerator.distributed_type.value} wraps every forward pass"
    if reason:
        log(f"train-sft: every record runs whole, no shared prefix ({reason})", main)
    return reason is None


def shared_prefix_length(examples: list[Example]) -> int:
    """Tokens that every record of ``examples`` begins with, stopping before the shortest prompt's last token.

    Past that point a token may carry a loss, and the logit that predicts it
    would sit inside the prefix; short of it, none does. 0 for a single record.
    """
    if len(examples) < 2:
        return 0
    limit = min(e.prompt_len for e in examples) - 1
    return min(common_prefix([e.input_ids for e in examples]), max(limit, 0))


def forward_after_prefix(model, module, input_ids, shared: int, read=lambda output: output.logits):
    """Logits of ``input_ids`` (B, T) at positions ``shared``.. T-1, running its first ``shared`` columns once.

    Those columns must be the same in every row. ``module`` is the bare model
    (it runs the prefix, a batch of one); ``model`` the one to train, maybe
    wrapped (it runs the rest, with the prefix's keys and values repeated
    for each row as its past, and each token at its own position). No
    attention mask: the batch is right-padded and attention is causal, so no
    real token can see a pad, and the pads' outputs carry no loss. Without a
    mask, a plain forward takes SDPA's causal path. ``read`` takes what to
    return from the model's output (`rlhfctl.logprobs.FinalHidden.states`:
    the final hidden states instead of the logits).
    """
    import torch

    if shared == 0:
        return read(model(input_ids=input_ids))
    rows, width = input_ids.shape
    keyword = cache_keyword(module)
    past = getattr(module(input_ids=input_ids[:1, :shared], use_cache=True), keyword, None)
    if not hasattr(past, "batch_repeat_interleave"):  # a model that returns no transformers cache: run it whole
        return read(model(input_ids=input_ids))[:, shared:]
    past.batch_repeat_interleave(rows)
    positions = torch.arange(shared, width, device=input_ids.device).expand(rows, -1)
    return read(model(input_ids=input_ids[:, shared:], position_ids=positions, **{keyword: past}))


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
