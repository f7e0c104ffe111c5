"""`train-policy` runs: checks, models, the loop of steps, evaluation, checkpoints, output."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlhfctl.artifacts import describe_inputs, make_manifest, publish_model_folder
from rlhfctl.console import Progress
from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import SamplingParams, derive_seed
from rlhfctl.grading import grade
from rlhfctl.models import check_model_spec, load_causal_lm, load_tokenizer, model_path, save_model, saved_dtype
from rlhfctl.packing import use_packing
from rlhfctl.records import METRICS, PROMPTS, read_metrics, read_records
from rlhfctl.rm.model import ORM, PRM, TokenValues, build_reward_model, check_reward_folder, head_names
from rlhfctl.training.experience import AdvantageSettings, CollectSettings, collect, load_rm_handle
from rlhfctl.training.loop import (
    MetricsLog, adamw, batch_stream, check_run_dir, claim_run_dir, manifest_options, peak_memory, restore_training_state,
    save_training_state, seed_global_rngs, shard, use_row_sparse,
)
from rlhfctl.training.lora import BaseModelReference
from rlhfctl.training.policy.config import PolicyConfig, check_parallelism, check_prompts, print_settings
from rlhfctl.training.policy.engine import policy_backend, policy_generator
from rlhfctl.training.policy.update import Models, UpdateSettings, update
from rlhfctl.training.scale import (
    RESUME_IDENTITY, final_state_dict, full_weights, make_accelerator, prepare_model, trainable_parameters,
)


def run(config: PolicyConfig) -> dict[str, Any]:
    """Train and save the policy as a Hugging Face folder; return results."""
    config = config.resolved()
    config.check()
    records = config.prompt_format.apply(read_records(config.prompts, PROMPTS, fields=config.fields), config.prompts)
    check_prompts(records, config)
    eval_records = (config.prompt_format.apply(read_records(config.eval_data, PROMPTS, fields=config.fields), config.eval_data)
                    [: config.eval_max_prompts] if config.eval_data else [])
    if eval_records:
        check_prompts(eval_records, replace(config, prompts=config.eval_data, verifier=config.verifier or "auto"))
    check_model_spec(config.model)  # a bad --model or --rm fails before the run folder is touched
    if config.rm:
        check_reward_folder(config.rm, ORM)

    accelerator = make_accelerator(config.scale.bf16)
    check_parallelism(accelerator, config)
    policy_backend(config, accelerator)  # a missing vllm fails here, before the run folder is touched
    if config.prompts_per_step % accelerator.num_processes:
        raise ConfigError(f"--prompts-per-step {config.prompts_per_step} must be a multiple of the {accelerator.num_processes} ranks")
    out, main = Path(config.out), accelerator.is_main_process
    if main:
        check_run_dir(out, "train-policy", manifest_options(config), config.resume, identity=("algo", *RESUME_IDENTITY))
    # Models, reward model and engine load inside the claim: a start that fails there or in the
    # first step (a prompt the chat template cannot render) takes the run folder back.
    with claim_run_dir(out, "train-policy", manifest_options(config), main):
        accelerator.wait_for_everyone()
        return train(config, records, eval_records, accelerator, out, manifest_options(config))


def build_models(config, accelerator) -> tuple[Models, Any, Any, dict[str, Any]]:
    """(trainable models prepared by accelerate, frozen reference, tokenizer, LoRA report).

    With LoRA the policy and the critic train adapters (the critic its value
    head too), and the reference is the policy with its adapters switched
    off: the same weights as a separate frozen copy, without the memory.
    """
    tokenizer = load_tokenizer(config.source_of(config.model))
    seed_global_rngs(config.seed)
    policy = load_causal_lm(config.source_of(config.model), seed=config.seed)
    adapters = prepare_model(accelerator, policy, config.scale)
    policy_opt = adamw(trainable_parameters(policy), lr=config.lr,
                       row_sparse=use_row_sparse(accelerator, policy, config.sparse_embedding))
    if config.algo != "ppo":
        policy, policy_opt = accelerator.prepare(policy, policy_opt)
        return Models(policy, policy_opt), reference_model(config, policy, accelerator), tokenizer, adapters

    if config.critic_init == "rm":  # the RM's backbone and trained head, read at every token
        from transformers import AutoModelForTokenClassification

        critic_model = AutoModelForTokenClassification.from_pretrained(model_path(config.rm), num_labels=1, dtype=torch.float32,
                                                                       trust_remote_code=config.trust_remote_code)
    else:  # the SFT backbone with a zero value head
        critic_model = build_reward_model(config.source_of(config.model), PRM, config.seed)
    prepare_model(accelerator, critic_model, config.scale, heads=head_names(critic_model))
    critic = TokenValues(critic_model)
    critic_opt = adamw(trainable_parameters(critic), lr=config.critic_lr,
                       row_sparse=use_row_sparse(accelerator, critic, config.sparse_embedding))
    policy, policy_opt = accelerator.prepare(policy, policy_opt)
    critic, critic_opt = accelerator.prepare(critic, critic_opt)  # one model per call: FSDP version 2 takes no more
    return Models(policy, policy_opt, critic, critic_opt), reference_model(config, policy, accelerator), tokenizer, adapters


def reference_model(config, policy, accelerator):
    """The frozen π_ref: the LoRA policy with adapters off, or a second copy of --model."""
    if config.scale.lora:
        return BaseModelReference(policy)
    return load_causal_lm(config.source_of(config.model), seed=config.seed).eval().requires_grad_(False).to(accelerator.device)


def train(config, records, eval_records, accelerator, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    main = accelerator.is_main_process
    models, ref, tokenizer, adapters = build_models(config, accelerator)
    print_settings(config, main)  # after the line naming the model loaded
    config = replace(config, packing=use_packing(config.packing, models.policy, "train-policy", main))  # decided once
    rm = load_rm_handle(config.source_of(config.rm), accelerator.device, config.rm_max_length, main) if config.rm and config.rm_weight else None
    settings = AdvantageSettings(algo=config.algo, n=config.n, shaping=config.shaping, kl_coef=config.kl_coef,
                                 kl_estimator=config.kl_estimator, kl_in=config.kl_in, kl_clip=config.kl_clip, gamma=config.gamma,
                                 lam=config.lam, whiten_advantages=config.whiten_advantages)
    collecting, updating = CollectSettings.of(config), UpdateSettings.of(config)
    start = restore_training_state(out, accelerator, models.policy, models.policy_opt, others=models.others()) if config.resume else 0
    metrics = MetricsLog(out / METRICS, start, enabled=main)
    policy = accelerator.unwrap_model(models.policy)
    generator = policy_generator(config, policy, tokenizer, accelerator)
    generator.update_weights(policy)  # a vLLM engine starts from the policy's weights: the SFT model or a resumed checkpoint
    stream = batch_stream([1] * len(records), config.prompts_per_step, config.seed, start)
    history: list[dict[str, Any]] = []
    if start == 0 and eval_records:
        history.append({"step": 0, "eval_pass@1": evaluate(generator, models.policy, eval_records, config, accelerator)})
        metrics.write(history[-1])
    with Progress(f"train-policy ({config.algo})", config.max_steps, start, main) as progress:
        for step in range(start + 1, config.max_steps + 1):
            tic = time.perf_counter()
            epoch, batch = next(stream)
            mine, _ = shard(batch, accelerator.process_index, accelerator.num_processes)
            seed = derive_seed(config.seed, step, accelerator.process_index)
            with full_weights(accelerator, models.policy, models.critic):
                exp, stats = collect(models.policy, ref, models.critic, generator, [records[i] for i in mine], collecting, settings,
                                     rm, accelerator, seed)
            generator.sleep()  # a vLLM engine releases its GPU memory while the policy trains...
            stats.update(update(models, exp, updating, accelerator, step, seed, settings))
            generator.update_weights(policy)  # ...and samples from the updated policy from here on
            row = {"step": step, "epoch": epoch, **stats, "seconds": time.perf_counter() - tic, **peak_memory()}
            if eval_records and (step % config.eval_every == 0 or step == config.max_steps):
                row["eval_pass@1"] = evaluate(generator, models.policy, eval_records, config, accelerator)
            metrics.write(row)
            history.append(row)
            progress.advance(f"reward {stats.get('reward_raw_mean', 0):.3f}")
            if step % config.save_every == 0 or step == config.max_steps:
                save_training_state(out, step, accelerator, models.policy, models.policy_opt, config.keep_checkpoints, others=models.others())
    results = {**_results(out, history, config), **adapters}
    weights = final_state_dict(accelerator, models.policy, config.scale)
    if main:
        unwrapped = accelerator.unwrap_model(models.policy)
        manifest = make_manifest("train-policy", options, describe_inputs({"prompts": config.prompts, "model": config.model,
                                                                           "rm": config.rm, "eval_data": config.eval_data}), results)
        dtype = saved_dtype(config.model, config.scale.save_dtype)
        publish_model_folder(out, lambda tmp: save_model(unwrapped, tokenizer, tmp, weights, dtype), manifest)
    accelerator.wait_for_everyone()
    return {**results, **peak_memory()}  # the summary shows it; the manifest keeps what a rerun reproduces


def evaluate(generator, policy, records, config, accelerator) -> float | None:
    """Greedy pass@1 on the eval prompts (main process; the others wait)."""
    value = None
    with full_weights(accelerator, policy):  # where weights are sharded every rank gathers; rank 0 generates
        if accelerator.is_main_process:
            value = _greedy_pass_at_1(generator, records, config)
    accelerator.wait_for_everyone()
    return value


def _greedy_pass_at_1(generator, records, config) -> float:
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=config.max_new_tokens, batch_size=64, seed=config.seed)
    samples = generator.generate([generator.render(r["prompt"]) for r in records], params, keys=[r["id"] for r in records])
    record = (lambda r: r) if config.verifier in (None, "auto") else (lambda r: {**r, "task": config.verifier})
    return sum(bool(grade(record(r), [g[0].text])[0]) for r, g in zip(records, samples)) / len(records)


def _results(out: Path, history: list[dict[str, Any]], config) -> dict[str, Any]:
    rows = read_metrics(out) if out.exists() else history
    evals = [(r["step"], r["eval_pass@1"]) for r in rows if r.get("eval_pass@1") is not None]
    last = next((r for r in reversed(rows) if "reward_raw_mean" in r), {})
    return {"algo": config.algo, "steps": config.max_steps, "eval_pass@1": dict(evals) or None,
            "initial_eval_pass@1": evals[0][1] if evals else None, "final_eval_pass@1": evals[-1][1] if evals else None,
            "final_reward_raw_mean": last.get("reward_raw_mean"), "final_kl": last.get("kl")}
