"""What train-policy samples with: the policy module itself (hf) or a colocated vLLM engine.

The loop sees only the generation protocol and its three hooks
(`base.PolicyEngine`): `update_weights` after every optimisation step,
`sleep` while the policy trains, and `wake_up` (implied by generating).
"""

from __future__ import annotations

from typing import Any

from rlhfctl.console import log
from rlhfctl.errors import ConfigError
from rlhfctl.generation.backends import resolve_backend
from rlhfctl.generation.hf import HFGenerator
from rlhfctl.generation.vllm import build_policy_engine, import_vllm
from rlhfctl.models import eos_token_ids


def policy_backend(config, accelerator) -> str:
    """The backend train-policy generates with.

    The colocated engine lives in the training process, on its GPU, so it
    needs one process: ``auto`` falls back to hf under `accelerate launch`
    with several ranks, and an explicit ``vllm`` is refused there.
    """
    several = accelerator.num_processes > 1
    if config.backend == "auto" and several:
        return "hf"
    backend = resolve_backend(config.backend)
    if backend == "vllm" and several:
        raise ConfigError(f"train-policy --backend vllm runs in one process (a colocated engine on its GPU), "
                          f"not {accelerator.num_processes} ranks: use --backend hf under accelerate launch")
    if backend == "vllm":
        import_vllm()  # a missing vllm fails before any model is built
    return backend


def policy_generator(config, policy: Any, tokenizer: Any, accelerator) -> Any:
    """The generator for ``policy`` (an unwrapped module): itself, or a vLLM engine built from ``config.model``.

    The engine loads full weights, not LoRA adapters, so ``auto`` generates
    a LoRA policy with hf (an explicit ``vllm`` is refused by the engine).
    """
    backend = policy_backend(config, accelerator)
    if backend == "vllm" and config.backend == "auto" and getattr(policy, "peft_config", None):
        backend = "hf"
    log(f"generation: {backend}", accelerator.is_main_process)
    if backend == "hf":
        return HFGenerator(policy, tokenizer, eos_token_ids(tokenizer, config.model))

    return build_policy_engine(config.source_of(config.model), policy, tokenizer, config.seed, config.gpu_memory_utilization,
                               config.vllm_sync_timeout)
