"""The generator `--backend` names: which backend it picks, and building it.

The backends (`hf`, `vllm`, `openai`) depend on `base` only; this module sits above them.
"""

from __future__ import annotations

from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import BACKENDS, EngineOptions, Generator
from rlhfctl.generation.hf import HFGenerator
from rlhfctl.generation.server import OpenAIGenerator, ServerOptions
from rlhfctl.generation.vllm import build_vllm_generator, vllm_usable
from rlhfctl.models import eos_token_ids, inference_device, load_causal_lm, load_tokenizer


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


def make_generator(backend: str, model_spec: str | None, seed: int = 0, trust_remote_code: bool = False,
                   engine: EngineOptions = EngineOptions(), server: ServerOptions | None = None) -> Generator:
    """The generator for ``--backend`` (see `resolve_backend`) over ``model_spec``.

    With ``openai`` the server samples; ``model_spec`` (optional there) only
    names a tokenizer, for callers that render text locally.
    """
    resolved = resolve_backend(backend, engine)
    if resolved == "openai":
        if server is None:
            raise ConfigError("--backend openai needs --base-url and --served-model")
        return OpenAIGenerator(server, load_tokenizer(model_spec, trust_remote_code) if model_spec else None)
    if model_spec is None:
        raise ConfigError(f"--backend {backend} needs a model folder to load; only --backend openai samples without one")
    if resolved == "vllm":
        return build_vllm_generator(model_spec, seed, trust_remote_code, engine)
    tokenizer = load_tokenizer(model_spec, trust_remote_code)
    model = load_causal_lm(model_spec, seed=seed, trust_remote_code=trust_remote_code).to(inference_device())
    return HFGenerator(model, tokenizer, eos_token_ids(tokenizer, model_spec))
