"""The generation protocol every backend implements.

A backend turns prompts (as its `render` gives them) into ``n`` samples each. Commands and
training loops only see this protocol, so a backend (Hugging Face on any
device, vLLM on GPUs, an OpenAI-compatible server) plugs in without touching them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlhfctl.errors import ConfigError

BACKENDS = ("auto", "hf", "vllm", "openai")


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


@dataclass(frozen=True)
class EngineOptions:
    """How a vLLM engine sits on the GPUs (`--tp`, `--gpu-memory-utilization`).

    The Hugging Face backend runs on one device and has no use for them.
    """

    tp: int = 1  # tensor parallelism: GPUs that hold one copy of the model
    gpu_memory_utilization: float = 0.9  # fraction of each GPU's memory vLLM may take (weights + KV cache)

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ConfigError(f"--tp must be at least 1, got {self.tp}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class Sample:
    text: str
    token_ids: list[int] = field(repr=False)  # the response, with the eos token when it stopped on one
    finish_reason: str  # "stop" (eos) or "length" (max_new_tokens)
    logprobs: list[float] | None = field(default=None, repr=False)  # the engine's log p of each token, when it reports them
    reported_tokens: int | None = None  # a server's count of the response's tokens, when it sends no ids

    @property
    def num_tokens(self) -> int:
        return self.reported_tokens if self.reported_tokens is not None and not self.token_ids else len(self.token_ids)


def decoded_sample(tokenizer: Any, token_ids: list[int], finish_reason: str, logprobs: list[float] | None = None) -> Sample:
    """A sample whose text is its tokens decoded without the eos, the same way for every backend."""
    shown = token_ids[:-1] if finish_reason == "stop" else token_ids
    return Sample(tokenizer.decode(shown, skip_special_tokens=True), token_ids, finish_reason, logprobs)


class Generator(Protocol):
    name: str  # the backend (hf, vllm, openai), as rollout records name it
    tokenizer: Any  # the model's tokenizer; None for a server backend given no --model

    def render(self, prompt: Any) -> Any:
        """What `generate` takes for a record's prompt: text rendered with the chat template,
        or (a server backend) the prompt itself, since the server renders chats."""
        ...

    def generate(self, prompts: list[str], params: SamplingParams, keys: list[str] | None = None) -> list[list[Sample]]:
        """``n`` samples for each prompt, in prompt order.

        ``keys`` (e.g. prompt ids) seed the sampling, so the same prompts with
        the same seed give the same samples on a rerun.
        """
        ...


class PolicyEngine(Generator, Protocol):
    """A generator that `train-policy` keeps in step with the policy it trains.

    The HF backend samples from the policy module itself, so its hooks do
    nothing; a vLLM engine holds its own copy of the weights, which must be
    reloaded after every optimisation step, and its memory is released while
    the policy trains.
    """

    def update_weights(self, model: Any) -> None:
        """Load the policy's current weights; the next generation samples from them."""
        ...

    def sleep(self) -> None:
        """Release the engine's GPU memory until the next `update_weights` or `wake_up`."""
        ...

    def wake_up(self) -> None:
        """Take the memory back before generating."""
        ...


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends on ``seed`` and ``parts`` (stable across runs)."""
    h = hashlib.sha256(repr((seed, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1
