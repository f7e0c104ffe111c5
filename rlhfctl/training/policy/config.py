"""The train-policy configuration (`PolicyConfig`), its checks, and the settings table printed at start."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from rlhfctl.console import log
from rlhfctl.data import PromptFormat
from rlhfctl.errors import ConfigError, DataError
from rlhfctl.generation.base import BACKENDS, EngineOptions
from rlhfctl.grading import check_graders, gold_field, known_tasks, task_of
from rlhfctl.models import ModelSource
from rlhfctl.rl.aggregation import LOSS_AGGREGATIONS
from rlhfctl.rl.kl import KL_ESTIMATORS
from rlhfctl.rl.shaping import NORMS, Shaping
from rlhfctl.training.loop import check_in_range, check_positive, manifest_options
from rlhfctl.training.presets import check_preset
from rlhfctl.training.scale import ScaleOptions, check_resumable, is_fsdp2

ALGOS = ("ppo", "grpo")
DEFAULTS = {  # per algorithm, where the paper's code and docs/design.md differ between the two
    "ppo": {"kl_coef": 0.005, "kl_estimator": "k1", "kl_in": "reward"},
    "grpo": {"kl_coef": 0.04, "kl_estimator": "k3", "kl_in": "loss"},
}


@dataclass(frozen=True)
class PolicyConfig:
    prompts: str
    model: str
    out: str
    algo: str = "grpo"
    rm: str | None = None
    rm_weight: float = 1.0
    rm_max_length: int | None = None  # tokens the ORM reads; None: its trained --max-length
    verifier: str | None = None  # a grader name, or "auto": each prompt's task
    verifier_weight: float = 1.0
    n: int = 8
    prompts_per_step: int = 8
    ppo_epochs: int = 1
    mini_batch_size: int | None = None  # rows (prompts × n) per update; default: the whole batch
    lr: float = 1e-4
    critic_lr: float = 1e-4
    kl_coef: float | None = None
    kl_estimator: str | None = None
    kl_in: str | None = None
    shaping: Shaping = field(default_factory=Shaping)
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    value_clip: float = 0.2
    critic_init: str = "sft"
    critic_warmup_steps: int = 0
    loss_agg: str = "token-mean"
    whiten_advantages: bool = True  # PPO only; GRPO's advantages are the group-normalised scores
    kl_clip: float = 10.0  # the per-token KL penalty is clamped to [-kl_clip, kl_clip]
    preset: str | None = None  # the --preset the knobs above were resolved from (training.presets)
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    max_steps: int = 100
    save_every: int = 50
    keep_checkpoints: int = 2  # as `loop.Schedule`'s
    eval_data: str | None = None
    eval_every: int = 10
    eval_max_prompts: int | None = 200
    max_grad_norm: float = 1.0
    seed: int = 0
    resume: bool = False
    backend: str = "auto"  # what generates the rollouts: hf (the policy module) or a colocated vLLM engine
    gpu_memory_utilization: float = 0.3  # the colocated engine's share of the GPU; the policy trains in the rest
    vllm_sync_timeout: float = 600.0  # seconds a weight update, sleep or wake-up of the engine may take
    packing: bool = True  # forwards on rows packed by prompt, each prompt once (rlhfctl.packing)
    sparse_embedding: bool = True  # untied input embeddings (the critic's): row-sparse gradients and AdamW state
    trust_remote_code: bool = False  # for the policy, the reference, the critic and the ORM
    fields: dict[str, str] = field(default_factory=dict)  # --field renames of the prompts' (and eval data's) columns
    prompt_format: PromptFormat = field(default_factory=PromptFormat)  # --system / --prompt-template
    scale: ScaleOptions = field(default_factory=ScaleOptions)  # last: the manifest lists its options last

    def source_of(self, spec: str) -> ModelSource:
        return ModelSource(spec, self.trust_remote_code)

    def resolved(self) -> "PolicyConfig":
        """Fill the per-algorithm defaults (KL coefficient, estimator, placement)."""
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown --algo {self.algo!r}: choose ppo or grpo")
        d = DEFAULTS[self.algo]
        return replace(self, **{k: v if getattr(self, k) is None else getattr(self, k) for k, v in d.items()})

    def check_generation(self) -> None:
        if self.backend not in BACKENDS:
            trainable = ", ".join(b for b in BACKENDS if b != "openai")
            raise ConfigError(f"unknown --backend {self.backend!r}: choose one of {trainable}")
        if self.backend == "openai":
            raise ConfigError("train-policy samples from the policy it trains: --backend openai (a server's fixed model) "
                              "is for rollout, eval, label-prm and best-of-n; use hf, vllm or auto")
        EngineOptions(gpu_memory_utilization=self.gpu_memory_utilization)
        if self.vllm_sync_timeout <= 0:
            raise ConfigError(f"--vllm-sync-timeout must be positive, got {self.vllm_sync_timeout}")

    def check_numbers(self) -> None:
        """Float flags: NaN passes every ``<`` test, so each is checked to be in its range."""
        for flag, value in (("--lr", self.lr), ("--critic-lr", self.critic_lr), ("--clip-eps", self.clip_eps),
                            ("--max-grad-norm", self.max_grad_norm)):
            check_positive(flag, value)
        for flag, value in (("--gamma", self.gamma), ("--lam", self.lam), ("--top-p", self.top_p)):
            check_in_range(flag, value, 0.0, 1.0)
        check_in_range("--kl-coef", self.kl_coef, 0.0, math.inf)
        check_in_range("--temperature", self.temperature, 0.0, math.inf)
        check_in_range("--value-clip", self.value_clip, 0.0, math.inf)
        check_positive("--kl-clip", self.kl_clip)
        check_in_range("--reward-std-floor", self.shaping.std_floor, 0.0, math.inf)
        for flag, value in (("--rm-weight", self.rm_weight), ("--verifier-weight", self.verifier_weight)):
            if not math.isfinite(value):
                raise ConfigError(f"{flag} must be a finite number, got {value}")

    def check(self) -> None:
        s = self.shaping
        if self.rm is None and self.verifier is None:
            raise ConfigError("no reward: give --rm DIR and/or --verifier math")
        if self.verifier not in (None, "auto"):
            if self.verifier not in known_tasks():
                raise ConfigError(f"unknown --verifier {self.verifier!r}: choose one of {', '.join(known_tasks())}, or auto")
        if self.n < 1 or self.prompts_per_step < 1:
            raise ConfigError("--n and --prompts-per-step must be at least 1")
        if self.algo == "grpo" and self.n < 2:
            raise ConfigError("--algo grpo needs --n >= 2: its advantage is relative to the other responses to the same prompt")
        if s.norm not in NORMS:
            raise ConfigError(f"unknown --reward-norm {s.norm!r}: choose none, batch or group")
        if s.norm == "group" and self.n < 2:
            raise ConfigError("--reward-norm group needs --n >= 2; use --reward-norm batch or none with --n 1")
        if s.clip_range is not None and s.clip_range[0] >= s.clip_range[1]:
            raise ConfigError(f"--reward-clip-range needs LO < HI, got {s.clip_range[0]},{s.clip_range[1]}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"unknown --kl-estimator {self.kl_estimator!r}: choose k1, k2 or k3")
        if self.kl_in not in ("reward", "loss"):
            raise ConfigError(f"unknown --kl-in {self.kl_in!r}: choose reward or loss")
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ConfigError(f"unknown --loss-agg {self.loss_agg!r}: choose one of {', '.join(LOSS_AGGREGATIONS)}")
        check_preset(self.preset)
        if self.critic_init not in ("sft", "rm"):
            raise ConfigError(f"unknown --critic-init {self.critic_init!r}: choose sft or rm")
        if self.critic_init == "rm" and self.algo == "ppo" and not self.rm:
            raise ConfigError("--critic-init rm needs --rm DIR")
        self.check_generation()
        rows = self.n * self.prompts_per_step
        if self.mini_batch_size is not None and (self.mini_batch_size < 1 or rows % self.mini_batch_size):
            raise ConfigError(f"--mini-batch-size must divide prompts-per-step × n = {rows}, got {self.mini_batch_size}")
        if self.max_steps < 1 or self.ppo_epochs < 1:
            raise ConfigError("--max-steps and --ppo-epochs must be at least 1")
        self.check_numbers()
        self.scale.check()


def check_parallelism(accelerator, config: PolicyConfig) -> None:
    """Refuse the sharded set-ups that train-policy cannot run (examples/accelerate/README.md).

    Generation needs whole weights on every rank while ranks decode for
    different numbers of steps (`scale.full_weights`). FSDP version 2 can
    keep its units gathered for that; version 1 gathers inside every forward
    pass, so ranks would wait on each other for ever. Accelerate gives
    DeepSpeed one model per engine, and PPO trains two.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and not is_fsdp2(accelerator):
        raise ConfigError("train-policy does not run under FSDP version 1 (generation would deadlock the ranks): "
                          "set fsdp_version: 2 in the accelerate config (examples/accelerate/fsdp.yaml), or use DDP")
    if kind == DistributedType.DEEPSPEED and config.algo == "ppo":
        raise ConfigError("--algo ppo does not run under DeepSpeed (accelerate prepares one model per engine; PPO trains a critic too): "
                          "use DDP or FSDP, or --algo grpo")
    check_resumable(accelerator, config.resume)


def check_prompts(records: list[dict[str, Any]], config: PolicyConfig) -> None:
    """A verifier needs a gold answer on every prompt: say which line lacks one."""
    if config.verifier is None:
        return

    for line, r in enumerate(records, start=1):
        gold = gold_field(config.verifier if config.verifier != "auto" else task_of(r))
        if r.get(gold) is None:
            raise DataError(config.prompts, line, f"missing: --verifier {config.verifier} needs {'tests' if gold == 'tests' else 'a gold answer'} on every prompt", gold)

    check_graders(records if config.verifier == "auto" else [{**r, "task": config.verifier} for r in records], config.prompts)


def options_table(config: PolicyConfig) -> list[tuple[str, str]]:
    """The resolved settings, flag by flag, for the table printed at start."""
    return [(k.replace("_", "-"), str(v)) for k, v in manifest_options(config).items()]


def print_settings(config: PolicyConfig, enabled: bool) -> None:
    if not enabled:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"train-policy ({config.algo}): resolved settings", show_header=False)
    for key, value in options_table(config):
        table.add_row(key, value)
    Console(stderr=True).print(table)
    log(f"loss aggregation: {config.loss_agg} (the frameworks disagree on this; it is a flag)"
        + (f"; method knobs from --preset {config.preset}" if config.preset else ""))
