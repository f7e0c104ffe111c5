"""The generator `--backend` names: which backend it picks, and building it.

The backends (`hf`, `vllm`) depend on `base` only; this module sits above them.
"""

from __future__ import annotations

from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import BACKENDS, EngineOptions, Generator
from rlhfctl.generation.hf import HFGenerator
from rlhfctl.generation.vllm import build_vllm_generator, vllm_usable
from rlhfctl.models import ModelSource, as_source, eos_token_ids, inference_device, load_causal_lm, load_tokenizer


def resolve_backend(backend: str, engine: EngineOptions = EngineOptions()) -> str:
    """The backend ``--backend`` names: ``auto`` is vllm where it can run (vllm imports
    and torch sees a CUDA GPU), else hf."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    resolved = backend
    if backend == "auto":
        resolved = "vllm" if vllm_usable() else "hf"
    if resolved == "hf" and engine.tp != 1:
        why = " (auto chose hf: vllm is not installed or there is no CUDA GPU)" if backend == "auto" else ""
        raise ConfigError(f"--tp {engine.tp} needs --backend vllm; the hf backend runs on one device{why}")
    return resolved


def make_generator(backend: str, model: ModelSource | str, seed: int = 0,
                   engine: EngineOptions = EngineOptions()) -> Generator:
    """The generator for ``--backend`` (see `resolve_backend`) over ``model``."""
    source = as_source(model)
    if resolve_backend(backend, engine) == "vllm":
        return build_vllm_generator(source, seed, engine)
    tokenizer = load_tokenizer(source)
    lm = load_causal_lm(source, seed=seed).to(inference_device())
    return HFGenerator(lm, tokenizer, eos_token_ids(tokenizer, source.spec))
