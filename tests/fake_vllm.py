"""A stand-in for the `vllm` package, for CPU tests of the vLLM backend.

It has the shapes of vLLM's public API that rlhfctl uses (`LLM`,
`EngineArgs`, `SamplingParams`, `RequestOutput` / `CompletionOutput`,
`Logprob`) and enforces the rules of the real one that matter here:
unknown engine or sampling arguments are a TypeError, greedy sampling
refuses n > 1, `skip_tokenizer_init` refuses detokenising, without a
tokenizer only `stop_token_ids` stop a response (and the stop token stays
in `token_ids`), a sleeping engine neither generates nor loads weights,
and the j-th of n samples is seeded with seed + j.

Behind it runs the Hugging Face model saved in the folder it is given,
decoded with rlhfctl's own sampler, so its samples can be compared with
the HF backend's and its log-probs with a policy's. Every call is recorded
in `LLM.calls` and every engine in `ENGINES`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

ENGINES: list["LLM"] = []
RELEASE = threading.Event()  # lets a hanging apply_model go (set it when a test ends)


@dataclass
class EngineArgs:
    """The subset of vLLM's engine arguments rlhfctl may pass (the real class has many more)."""

    model: str = ""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    seed: int | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    skip_tokenizer_init: bool = False
    enable_sleep_mode: bool = False
    logprobs_mode: str = "raw_logprobs"
    max_model_len: int | None = None
    enforce_eager: bool = False


class SamplingParams:
    FIELDS = {"n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 16, "seed": None,
              "stop_token_ids": None, "detokenize": True, "logprobs": None, "ignore_eos": False}

    def __init__(self, **kwargs: Any):
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
        for name, default in self.FIELDS.items():
            setattr(self, name, kwargs.get(name, default))
        self.given = dict(kwargs)
        if self.temperature < 1e-5 and self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


class FakeModel:
    """vLLM's model as `LLM.apply_model` hands it out: `load_weights` of (HF name, tensor) pairs."""

    def __init__(self, hf_model: Any):
        self.hf = hf_model

    def load_weights(self, weights) -> set[str]:
        own = self.hf.state_dict()
        loaded = set()
        for name, tensor in weights:
            if name not in own:
                raise KeyError(f"unexpected weight {name}")
            own[name].copy_(tensor)
            loaded.add(name)
        return loaded


class LLM:
    def __init__(self, model: str, **kwargs: Any):
        names = {f.name for f in dataclasses.fields(EngineArgs)}
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"EngineArgs got unexpected keyword arguments {sorted(unknown)}")
        if not os.path.isdir(model):
            raise OSError(f"{model} is not a model folder")
        import torch
        from transformers import AutoModelForCausalLM

        self.args = EngineArgs(model=model, **kwargs)
        dtype = getattr(torch, self.args.dtype) if self.args.dtype != "auto" else torch.float32
        self.model = FakeModel(AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval())
        self.calls: list[tuple] = [("init", dict(kwargs, model=model))]
        self.asleep: set[str] = set()
        self.hang_on_apply: int | None = None  # the apply_model call (1, 2, ...) that waits for RELEASE: a stuck engine
        self.applied = 0
        ENGINES.append(self)

    # --- generation ------------------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True, **kwargs):
        if self.asleep:
            raise RuntimeError(f"generate() on a sleeping engine ({sorted(self.asleep)} released)")
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.calls.append(("generate", prompts, params))
        return [self._request(str(i), p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]

    def _request(self, request_id: str, prompt: dict, params: SamplingParams) -> RequestOutput:
        if self.args.skip_tokenizer_init and params.detokenize:
            raise ValueError("detokenize=True is not supported when skip_tokenizer_init=True")
        ids = prompt["prompt_token_ids"]
        seeds = [None if params.seed is None else params.seed + j for j in range(params.n)]
        outputs = [self._completion(j, ids, params, seed) for j, seed in enumerate(seeds)]
        return RequestOutput(request_id, None, ids, outputs)

    def _completion(self, index: int, prompt_ids: list[int], params: SamplingParams, seed: int | None) -> CompletionOutput:
        import torch

        from rlhfctl.generation.base import SamplingParams as Ours
        from rlhfctl.generation.hf import _decode_loop

        stop = frozenset(params.stop_token_ids or ())  # without a tokenizer, vLLM knows no eos of its own
        ours = Ours(n=1, temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_tokens)
        generator = torch.Generator().manual_seed(seed if seed is not None else 12345)
        (tokens, reason), = _decode_loop(self.model.hf, [prompt_ids], ours, 0, stop, generator, "cpu")
        logprobs = None
        if params.logprobs is not None:
            logprobs = [{t: Logprob(lp, 1)} for t, lp in zip(tokens, self._logprobs(prompt_ids, tokens, params.temperature))]
        return CompletionOutput(index, "", tokens, None, logprobs, reason, tokens[-1] if reason == "stop" else None)

    def _logprobs(self, prompt_ids: list[int], tokens: list[int], temperature: float) -> list[float]:
        """log softmax(logits / T) of each sampled token ("processed" log-probs)."""
        import torch

        ids = torch.tensor([prompt_ids + tokens])
        with torch.no_grad():
            logits = self.model.hf(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float() / (temperature or 1.0)
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1).tolist()

    # --- control -----------------------------------------------------------------------------------
    def apply_model(self, func):
        self.calls.append(("apply_model",))
        self.applied += 1
        if self.applied == self.hang_on_apply:
            RELEASE.wait()
        if "weights" in self.asleep:
            raise RuntimeError("apply_model() while the weights sleep")
        return [func(self.model)]

    def sleep(self, level: int = 1):
        self.calls.append(("sleep", level))
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None):
        self.calls.append(("wake_up", None if tags is None else list(tags)))
        tags = list(tags) if tags is not None else ["weights", "kv_cache"]
        if any(t not in self.asleep for t in tags):
            raise RuntimeError(f"wake_up({tags}) of memory that is awake: it would be mapped twice")
        self.asleep -= set(tags)

    def reset_prefix_cache(self, device=None) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True


def install(monkeypatch, *, sleep_mode: bool = True, logprobs_mode: bool = True, hang_on_apply: int | None = None) -> types.ModuleType:
    """Put a fresh fake `vllm` in sys.modules; ``sleep_mode`` / ``logprobs_mode`` False mimic a vLLM without them,
    ``hang_on_apply`` makes every engine's k-th `apply_model` wait for `RELEASE`."""
    module = types.ModuleType("vllm")
    args = EngineArgs
    dropped = {name for name, keep in (("enable_sleep_mode", sleep_mode), ("logprobs_mode", logprobs_mode)) if not keep}
    if dropped:
        args = dataclasses.make_dataclass("EngineArgs", [(f.name, f.type, field(default=f.default))
                                                         for f in dataclasses.fields(EngineArgs) if f.name not in dropped])
    module.EngineArgs = args
    module.SamplingParams = SamplingParams
    module.RequestOutput = RequestOutput
    module.CompletionOutput = CompletionOutput
    module.ENGINES = ENGINES
    module.RELEASE = RELEASE

    class ThisLLM(LLM):
        def __init__(self, model: str, **kwargs: Any):
            names = {f.name for f in dataclasses.fields(args)}
            unknown = set(kwargs) - names
            if unknown:
                raise TypeError(f"EngineArgs got unexpected keyword arguments {sorted(unknown)}")
            super().__init__(model, **kwargs)
            self.hang_on_apply = hang_on_apply

    module.LLM = ThisLLM
    ENGINES.clear()
    RELEASE.clear()
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module
