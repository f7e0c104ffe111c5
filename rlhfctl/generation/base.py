"""The generation protocol every backend implements.

A backend turns rendered prompt strings into ``n`` samples each. Commands and
training loops only see this protocol, so a backend (Hugging Face now, vLLM
on GPUs) plugs in without touching them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlhfctl.errors import ConfigError

BACKENDS = ("auto", "hf")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 64  # sequences generated together (whole prompts: ceil(batch_size / n) of them)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"--n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class Sample:
    text: str
    token_ids: list[int] = field(repr=False)
    finish_reason: str  # "stop" (eos) or "length" (max_new_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class Generator(Protocol):
    tokenizer: Any  # renders chat prompts (`data.render_prompt`)

    def generate(self, prompts: list[str], params: SamplingParams, keys: list[str] | None = None) -> list[list[Sample]]:
        """``n`` samples for each prompt, in prompt order.

        ``keys`` (e.g. prompt ids) seed the sampling of each batch, so the same
        prompts with the same seed give the same samples on a rerun.
        """
        ...


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends on ``seed`` and ``parts`` (stable across runs)."""
    h = hashlib.sha256(repr((seed, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def make_generator(backend: str, model_spec: str, seed: int = 0, trust_remote_code: bool = False) -> Generator:
    """The backend for ``--backend``; ``auto`` is the Hugging Face backend here."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    from rlhfctl.generation.hf import HFGenerator
    from rlhfctl.models import inference_device, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_spec, trust_remote_code)
    model = load_causal_lm(model_spec, seed=seed, trust_remote_code=trust_remote_code).to(inference_device())
    return HFGenerator(model, tokenizer)
