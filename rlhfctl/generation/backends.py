"""The generator `--backend` names: which backend it picks, and building it.

The backends (`hf`, `vllm`, `openai`) depend on `base` only; this module sits above them.
"""

from __future__ import annotations

from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import BACKENDS, EngineOptions, Generator
from rlhfctl.generation.hf import HFGenerator
from rlhfctl.generation.server import OpenAIGenerator, ServerOptions
from rlhfctl.generation.vllm import build_vllm_generator, vllm_usable
from rlhfctl.models import ModelSource, as_source, eos_token_ids, inference_device, load_causal_lm, load_tokenizer


def resolve_backend(backend: str, engine: EngineOptions = EngineOptions()) -> str:
    """The backend ``--backend`` names: ``auto`` is vllm where it can run (vllm imports
    and torch sees a CUDA GPU), else hf; ``openai`` is a server, never picked by ``auto``."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    resolved = backend
    if backend == "auto":
        resolved = "vllm" if vllm_usable() else "hf"
    if resolved in ("hf", "openai") and engine.tp != 1:
        why = " (auto chose hf: vllm is not installed or there is no CUDA GPU)" if backend == "auto" else ""
        where = "the server decides its own parallelism" if resolved == "openai" else "the hf backend runs on one device"
        raise ConfigError(f"--tp {engine.tp} needs --backend vllm; {where}{why}")
    return resolved


def make_generator(backend: str, model: ModelSource | str | None, seed: int = 0,
                   engine: EngineOptions = EngineOptions(), server: ServerOptions | None = None) -> Generator:
    """The generator for ``--backend`` (see `resolve_backend`) over ``model``.

    With ``openai`` the server samples; ``model`` (optional there: None, or
    a source whose spec is None) only names a tokenizer, for callers that
    render text locally.
    """
    source = as_source(model) if model is not None else None
    if source is not None and source.spec is None:
        source = None
    resolved = resolve_backend(backend, engine)
    if resolved == "openai":
        if server is None:
            raise ConfigError("--backend openai needs --base-url and --served-model")
        return OpenAIGenerator(server, load_tokenizer(source) if source is not None else None)
    if source is None:
        raise ConfigError(f"--backend {backend} needs a model folder to load; only --backend openai samples without one")
    if resolved == "vllm":
        return build_vllm_generator(source, seed, engine)
    tokenizer = load_tokenizer(source)
    lm = load_causal_lm(source, seed=seed).to(inference_device())
    return HFGenerator(lm, tokenizer, eos_token_ids(tokenizer, source.spec))
