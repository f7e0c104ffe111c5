from __future__ import annotations

from typing import Annotated, Optional

import typer

from rlhfctl.commands._options import (
    BackendOpt, Bf16Opt, ConfigOpt, DenseEmbeddingOpt, FieldOpt, GpuMemoryOpt, GradCheckpointOpt, JsonOpt, LoraAlphaOpt,
    LoraDropoutOpt, LoraROpt, LoraTargetsOpt, MaxNewTokensOpt, ModelOpt, NoPackingOpt, PromptTemplateOpt, RMMaxLengthOpt,
    ResumeOpt, SaveDtypeOpt, SaveEveryOpt, SeedOpt, SystemOpt, TemperatureOpt, TopPOpt, TrustOpt, field_map, print_summary,
    prompt_format,
)
from rlhfctl.errors import ConfigError

_F = typer.Option


def train_policy(
    prompts: Annotated[str, typer.Argument(metavar="PROMPTS", help="Prompts JSONL ({prompt, answer?, task?}).")],
    out: Annotated[str, _F("--out", "-o", help="Run folder: the policy, checkpoints/, metrics.jsonl.")],
    model: ModelOpt,
    algo: Annotated[str, _F("--algo", help="ppo (with a critic, GAE) or grpo (critic-free, group-normalised).")] = "grpo",
    rm: Annotated[Optional[str], _F("--rm", help="Outcome reward model folder (train-rm); its score is standardised with the μ/σ in its manifest.", show_default=False)] = None,
    rm_weight: Annotated[float, _F("--rm-weight", help="Weight of the RM score in the reward.")] = 1.0,
    rm_max_length: RMMaxLengthOpt = None,
    verifier: Annotated[Optional[str], _F("--verifier", help="Rule reward: 1 if the grader (math, mcq, code, or auto: each prompt's task) accepts the answer, else 0.", show_default=False)] = None,
    verifier_weight: Annotated[float, _F("--verifier-weight", help="Weight of the verifier in the reward.")] = 1.0,
    n: Annotated[int, _F("--n", "-n", help="Responses sampled per prompt.")] = 8,
    prompts_per_step: Annotated[int, _F("--prompts-per-step", help="Prompts per rollout batch (global); the batch is prompts × n responses.")] = 8,
    ppo_epochs: Annotated[int, _F("--ppo-epochs", help="Passes over each rollout batch.")] = 1,
    mini_batch_size: Annotated[Optional[int], _F("--mini-batch-size", help="Responses per optimiser step; default: the whole rollout batch.", show_default=False)] = None,
    lr: Annotated[float, _F("--lr", help="Policy learning rate (constant).")] = 1e-4,
    critic_lr: Annotated[float, _F("--critic-lr", help="Critic learning rate (PPO).")] = 1e-4,
    kl_coef: Annotated[Optional[float], _F("--kl-coef", help="β of the KL to the reference; default 0.005 for PPO, 0.04 for GRPO.", show_default=False)] = None,
    kl_estimator: Annotated[Optional[str], _F("--kl-estimator", help="k1, k2 or k3; default k1 for PPO, k3 for GRPO.", show_default=False)] = None,
    kl_in: Annotated[Optional[str], _F("--kl-in", help="Where the KL goes: reward (per token) or loss; default reward for PPO, loss for GRPO.", show_default=False)] = None,
    reward_norm: Annotated[str, _F("--reward-norm", help="none, batch, or group: (r - mean_g)/(std_g + eps) per prompt.")] = "group",
    reward_std_floor: Annotated[Optional[float], _F("--reward-std-floor", help="Lower bound on the std used by --reward-norm; default 0 (--preset paper: 1/3).", show_default=False)] = None,
    reward_clip: Annotated[float, _F("--reward-clip", help="Clip normalised rewards to [-c, c]; 0 disables.")] = 5.0,
    neg_reward_scale: Annotated[Optional[float], _F("--neg-reward-scale", help="Asymmetric shrinkage: negative rewards are multiplied by this α; default 1.", show_default=False)] = None,
    reward_clip_range: Annotated[Optional[str], _F("--reward-clip-range", help="LO,HI: clip rewards to an asymmetric range (instead of --neg-reward-scale); default none (--preset paper: -0.4,5).", show_default=False)] = None,
    gamma: Annotated[float, _F("--gamma", help="GAE discount (PPO).")] = 1.0,
    lam: Annotated[float, _F("--lam", help="GAE λ (PPO).")] = 0.95,
    clip_eps: Annotated[float, _F("--clip-eps", help="PPO ratio clip ε.")] = 0.2,
    value_clip: Annotated[float, _F("--value-clip", help="Value-loss clip range (PPO); 0 disables.")] = 0.2,
    critic_init: Annotated[str, _F("--critic-init", help="Critic backbone: sft (the policy) or rm (the --rm model, its head too).")] = "sft",
    critic_warmup_steps: Annotated[int, _F("--critic-warmup-steps", help="Steps during which only the critic trains (actor frozen).")] = 0,
    loss_agg: Annotated[Optional[str], _F("--loss-agg", help="token-mean, seq-mean-token-mean or seq-mean-token-sum-norm; default token-mean (--preset paper: seq-mean-token-mean).", show_default=False)] = None,
    whiten_advantages: Annotated[bool, _F("--whiten-advantages", help="PPO: standardise the GAE advantages over the batch's tokens (the default; --preset paper: off).", show_default=False)] = False,
    no_whiten_advantages: Annotated[bool, _F("--no-whiten-advantages", help="PPO: leave the GAE advantages as they are.", show_default=False)] = False,
    kl_clip: Annotated[Optional[float], _F("--kl-clip", help="Clamp the per-token KL penalty to [-c, c] (with --kl-in reward); default 10 (--preset paper: 0.5).", show_default=False)] = None,
    preset: Annotated[Optional[str], _F("--preset", help="paper: set --no-whiten-advantages, --loss-agg, --kl-clip, --reward-std-floor and --reward-clip-range to the paper's code values (docs/training.md); flags you give win.", show_default=False)] = None,
    max_new_tokens: MaxNewTokensOpt = 128,
    temperature: TemperatureOpt = 1.0,
    top_p: TopPOpt = 1.0,
    backend: BackendOpt = "auto",
    gpu_memory_utilization: GpuMemoryOpt = 0.3,
    vllm_sync_timeout: Annotated[float, _F("--vllm-sync-timeout", help="Seconds the vLLM engine's weight update, sleep or wake-up may take before the run stops with an error.")] = 600.0,
    max_steps: Annotated[int, _F("--max-steps", help="Policy updates (rollout batches).")] = 100,
    save_every: SaveEveryOpt = 50,
    eval_data: Annotated[Optional[str], _F("--eval-data", help="Prompts with answers: greedy pass@1 at step 0 and every --eval-every steps.", show_default=False)] = None,
    eval_every: Annotated[int, _F("--eval-every", help="Evaluate every this many steps.")] = 10,
    eval_max_prompts: Annotated[int, _F("--eval-max-prompts", help="Evaluate on at most this many eval prompts.")] = 200,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    no_packing: NoPackingOpt = False,
    dense_embedding: DenseEmbeddingOpt = False,
    bf16: Bf16Opt = False,
    gradient_checkpointing: GradCheckpointOpt = False,
    save_dtype: SaveDtypeOpt = "auto",
    lora_r: LoraROpt = 0,
    lora_alpha: LoraAlphaOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0,
    lora_target_modules: LoraTargetsOpt = "all-linear",
    trust_remote_code: TrustOpt = False,
    field: FieldOpt = None,
    system: SystemOpt = None,
    prompt_template: PromptTemplateOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Optimise a policy with PPO or GRPO and the paper's reward shaping.

    Reward: verifier and/or ORM (weighted sum), then standardise (RM μ/σ) →
    normalise (--reward-norm) → clip (--reward-clip) → shrink negatives
    (--neg-reward-scale, or --reward-clip-range) → placed on the EOS token.
    The resolved settings are printed as a table at start and saved in the
    manifest; metrics.jsonl has one line per step (raw and shaped reward,
    KL, entropy, response length, clip fraction, losses, grad norm, eval
    pass@1).

    With --backend vllm (auto picks it with vllm and a CUDA GPU, in one
    process) a vLLM engine built from --model shares the GPU with the
    policy: its weights are reloaded from the policy after every update, it
    sleeps while the policy trains, and metrics.jsonl gets
    `vllm_logprob_abs_diff`, the mean |log π_vLLM - log π_policy| of the
    sampled tokens (near 0 when the engine samples from the policy).

    With --lora-r the policy (and the PPO critic, with its value head) trains
    LoRA adapters, the reference is the policy with its adapters switched off,
    and the saved policy has the adapters merged in.

    Examples:

        rlhfctl train-policy data/toy/train.jsonl --model runs/sft --out runs/grpo --algo grpo --verifier math --eval-data data/toy/test.jsonl

        rlhfctl train-policy data/toy/train.jsonl --model runs/sft --out runs/ppo --algo ppo --rm runs/rm --verifier math --max-steps 40

        rlhfctl train-policy data/toy/train.jsonl --model runs/sft --out runs/grpo-lora --verifier math --lora-r 8 --bf16
    """
    from rlhfctl.rl.shaping import Shaping
    from rlhfctl.training.policy.config import PolicyConfig
    from rlhfctl.training.policy.run import run
    from rlhfctl.training.presets import resolve_knobs
    from rlhfctl.training.scale import ScaleOptions

    clip_range = None
    if reward_clip_range is not None:
        try:
            lo, hi = (float(x) for x in reward_clip_range.split(","))
        except ValueError:
            raise ConfigError(f"--reward-clip-range takes LO,HI (two numbers), got {reward_clip_range!r}") from None
        clip_range = (lo, hi)
    if whiten_advantages and no_whiten_advantages:
        raise ConfigError("--whiten-advantages and --no-whiten-advantages: give one")
    whiten = True if whiten_advantages else False if no_whiten_advantages else None  # None: the preset's, else on
    knobs = resolve_knobs(preset, {"whiten_advantages": whiten, "loss_agg": loss_agg, "kl_clip": kl_clip,
                                   "reward_std_floor": reward_std_floor, "reward_clip_range": clip_range,
                                   "neg_reward_scale": neg_reward_scale})
    shaping = Shaping(norm=reward_norm, std_floor=knobs["reward_std_floor"], clip=reward_clip or None,
                      neg_scale=knobs["neg_reward_scale"], clip_range=knobs["reward_clip_range"])
    results = run(PolicyConfig(
        prompts=prompts, model=model, out=out, algo=algo, rm=rm, rm_weight=rm_weight, rm_max_length=rm_max_length,
        verifier=verifier, verifier_weight=verifier_weight, n=n, prompts_per_step=prompts_per_step, ppo_epochs=ppo_epochs,
        mini_batch_size=mini_batch_size, lr=lr, critic_lr=critic_lr, kl_coef=kl_coef, kl_estimator=kl_estimator,
        kl_in=kl_in, shaping=shaping, gamma=gamma, lam=lam, clip_eps=clip_eps, value_clip=value_clip,
        critic_init=critic_init, critic_warmup_steps=critic_warmup_steps, loss_agg=knobs["loss_agg"],
        whiten_advantages=knobs["whiten_advantages"], kl_clip=knobs["kl_clip"], preset=preset,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, max_steps=max_steps, save_every=save_every,
        eval_data=eval_data, eval_every=eval_every, eval_max_prompts=eval_max_prompts, seed=seed, resume=resume,
        backend=backend, gpu_memory_utilization=gpu_memory_utilization, vllm_sync_timeout=vllm_sync_timeout,
        packing=not no_packing, sparse_embedding=not dense_embedding, trust_remote_code=trust_remote_code, fields=field_map(field),
        prompt_format=prompt_format(system, prompt_template),
        scale=ScaleOptions(bf16=bf16, gradient_checkpointing=gradient_checkpointing, lora_r=lora_r, lora_alpha=lora_alpha,
                           lora_dropout=lora_dropout, lora_target_modules=lora_target_modules, save_dtype=save_dtype),
    ))
    print_summary({**results, "out": out}, as_json, "train-policy")
