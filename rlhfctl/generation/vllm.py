"""The vLLM backend: the samples of `hf.py`, from vLLM's engine on CUDA GPUs.

Prompts go in as token ids, tokenised exactly as the HF backend does, and
responses come back as token ids decoded with the same tokenizer, so both
backends write the same records. vLLM never loads a tokenizer of its own
(``skip_tokenizer_init``); it stops on the tokenizer's eos id, given as a
stop token, and keeps that token in the response as the HF backend does.

Every prompt is its own request with its own seed, derived from ``--seed``
and the prompt's key, so a prompt's samples do not depend on what else is in
the batch and a resumed run samples what an unbroken one would.

In `train-policy` the engine is colocated with the policy (same process,
same GPU, as TRL's ``vllm_mode="colocate"``): `update_weights` loads the
policy's weights after every optimisation step, and `sleep` releases the
engine's memory while the policy trains (vLLM's sleep mode, where the
installed vLLM has it). These engine calls run under a timeout, so a stuck
engine stops the run with an error instead of hanging it.

Written against vLLM's public API (v0.10 and later): `LLM`, `EngineArgs`,
`SamplingParams`, `LLM.generate` on token prompts, `LLM.apply_model`,
`LLM.sleep`, `LLM.wake_up(tags=...)` and `LLM.reset_prefix_cache`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any, Callable

from rlhfctl.data import Text, render_prompt
from rlhfctl.errors import ConfigError, EngineError
from rlhfctl.generation.base import EngineOptions, Sample, SamplingParams, decoded_sample, derive_seed
from rlhfctl.models import ModelSource, as_source, eos_token_ids, is_toy_spec, load_causal_lm, load_tokenizer, model_path, save_model

VLLM_EXTRA = "pip install 'rlhfctl[vllm]'"
# vLLM seeds the j-th of a request's n samples with seed + j; 31-bit request seeds keep
# that sum far from any integer width a sampler might hold it in.
SEED_MODULUS = 2**31
SLEEP_TAGS = ("weights", "kv_cache")  # what vLLM's sleep mode releases, and wake_up(tags=...) takes back


def import_vllm():
    """The vllm module, or a one-line ConfigError that says how to install it.

    vLLM logs to stdout unless told otherwise; rlhfctl keeps stdout for
    results and JSONL (`--out -`), so the log stream is set to stderr before
    vllm is first imported (a stream the user chose is kept).
    """
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as e:
        if (e.name or "").split(".")[0] == "vllm":
            raise ConfigError(f"--backend vllm needs vLLM, which is not installed: {VLLM_EXTRA}") from None
        raise ConfigError(f"vLLM is installed but does not import: {e}") from None
    return vllm


def vllm_usable() -> bool:
    """Whether `--backend auto` picks vLLM: torch sees a CUDA GPU and vllm imports."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import_vllm()
    except ConfigError:
        return False
    return True


class VLLMGenerator:
    """The generation protocol (`base.Generator`) and train-policy's hooks (`base.PolicyEngine`) over a `vllm.LLM`."""

    name = "vllm"

    def __init__(self, vllm: Any, llm: Any, tokenizer: Any, *, with_logprobs: bool = False, can_sleep: bool = False,
                 control_timeout: float = 600.0, workdir: Any = None, eos_ids: frozenset[int] | None = None):
        self.vllm = vllm
        self.llm = llm
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_ids = eos_ids or (frozenset() if eos is None else frozenset({eos}))  # `models.eos_token_ids`
        self.with_logprobs = with_logprobs  # report log p of every sampled token (train-policy's check)
        self.can_sleep = can_sleep  # built with enable_sleep_mode
        self.control_timeout = control_timeout  # seconds allowed for a weight update, a sleep or a wake-up
        self._workdir = workdir  # a temporary folder the engine loaded its weights from, kept while the engine lives
        self._asleep: set[str] = set()

    def render(self, prompt: Text) -> str:
        """A record's prompt as the text `generate` takes (`data.render_prompt`)."""
        return render_prompt(prompt, self.tokenizer)

    def generate(self, prompts: list[str], params: SamplingParams, keys: list[str] | None = None) -> list[list[Sample]]:
        if not prompts:
            return []
        self.wake_up()
        keys = keys if keys is not None else [str(i) for i in range(len(prompts))]
        requests = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=True)["input_ids"]} for p in prompts]
        outputs = self.llm.generate(requests, [self.request_params(params, key) for key in keys], use_tqdm=False)
        copies = params.n if params.temperature == 0 else 1
        return [self._samples(output, copies) for output in outputs]

    def request_params(self, params: SamplingParams, key: str) -> Any:
        """vLLM's SamplingParams for one prompt.

        Greedy decoding (temperature 0) asks for one sample, which is then
        repeated n times: vLLM refuses n > 1 when greedy, and the HF backend's
        n greedy rows are identical anyway.
        """
        greedy = params.temperature == 0
        return self.vllm.SamplingParams(
            n=1 if greedy else params.n,
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            seed=derive_seed(params.seed, key) % SEED_MODULUS,
            stop_token_ids=sorted(self.eos_ids) or None,  # no eos: every response runs to max_tokens, as with hf
            detokenize=False,  # decoded by rlhfctl's tokenizer, as the HF backend does
            logprobs=0 if self.with_logprobs else None,  # 0: only the sampled token's log-probability
        )

    def _samples(self, output: Any, copies: int) -> list[Sample]:
        samples = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            if completion.finish_reason not in ("stop", "length"):
                raise EngineError(f"vLLM ended a response with finish_reason {completion.finish_reason!r} (expected stop or length)")
            ids = list(completion.token_ids)
            logprobs = [position[token].logprob for position, token in zip(completion.logprobs, ids)] if self.with_logprobs else None
            samples.append(decoded_sample(self.tokenizer, ids, completion.finish_reason, logprobs))
        return [dataclasses.replace(s) for s in samples for _ in range(copies)]

    def update_weights(self, model: Any) -> None:
        """Copy ``model``'s weights into the engine (Hugging Face names, as in a checkpoint).

        The engine runs in this process, so `LLM.apply_model` hands vLLM's
        model the policy's tensors by reference; vLLM's ``load_weights`` maps
        the names onto its fused layers. Cached prompt prefixes were computed
        with the old weights, so the prefix cache is reset.
        """
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]

        def load() -> None:
            self._wake(("weights",))  # the KV cache comes back after the load: a lower peak
            self.llm.apply_model(partial(_load_weights, weights))
            self._wake(SLEEP_TAGS)
            self.llm.reset_prefix_cache()

        self._control("weight update", load)

    def sleep(self) -> None:
        """Offload the weights to CPU memory and drop the KV cache (vLLM's sleep level 1)."""
        if self.can_sleep and not self._asleep:
            self._control("sleep", lambda: self.llm.sleep(level=1))
            self._asleep = set(SLEEP_TAGS)

    def wake_up(self) -> None:
        if self._asleep:
            self._control("wake-up", lambda: self._wake(SLEEP_TAGS))

    def _wake(self, tags: tuple[str, ...]) -> None:
        """Wake the parts in ``tags`` that sleep; waking a part twice would map its memory twice."""
        todo = [t for t in tags if t in self._asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self._asleep -= set(todo)

    def _control(self, what: str, fn: Callable[[], Any]) -> Any:
        return run_with_timeout(fn, self.control_timeout, f"vLLM {what}")


def _load_weights(weights: list[tuple[str, Any]], model: Any) -> None:
    """Runs on vLLM's model (`LLM.apply_model`): load the (name, tensor) pairs."""
    import torch

    with torch.no_grad():
        model.load_weights(weights)


def run_with_timeout(fn: Callable[[], Any], seconds: float, what: str) -> Any:
    """``fn()`` in a daemon thread that is given ``seconds`` to return; its result or its error.

    A CUDA call cannot be interrupted, so an engine that stops answering
    would hang the run for good; waiting with a timeout turns that into an
    `EngineError`. The stuck thread is left behind (it is a daemon, so it
    does not keep the process alive).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"rlhfctl {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise EngineError(f"{what} did not finish in {seconds:g} s: the engine looks stuck (raise --vllm-sync-timeout if it is only slow)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def engine_arg_names(vllm: Any) -> set[str]:
    """The keyword arguments the installed vLLM's engine takes (`LLM(**kwargs)` goes to `EngineArgs`)."""
    return {f.name for f in dataclasses.fields(vllm.EngineArgs)}


def engine_kwargs(folder: str, engine: EngineOptions, seed: int, dtype: str, trust_remote_code: bool) -> dict[str, Any]:
    """`vllm.LLM` arguments shared by the generation commands and train-policy."""
    return dict(model=folder, tensor_parallel_size=engine.tp, gpu_memory_utilization=engine.gpu_memory_utilization,
                seed=seed % SEED_MODULUS, dtype=dtype, trust_remote_code=trust_remote_code, skip_tokenizer_init=True)


def engine_folder(model_spec: str, seed: int) -> tuple[str, Any]:
    """(a folder vLLM can load, the temporary directory holding it or None).

    vLLM loads weights from a folder, so a ``toy:SIZE`` spec is first saved
    to a temporary folder: the same seeded model the HF backend would build,
    so both backends sample from the same weights.
    """
    if not is_toy_spec(model_spec):
        return model_path(model_spec), None
    workdir = tempfile.TemporaryDirectory(prefix="rlhfctl-vllm-")
    save_model(load_causal_lm(model_spec, seed=seed), load_tokenizer(model_spec), workdir.name)
    return workdir.name, workdir


def saved_dtype(folder: str) -> str:
    """The dtype a folder's config.json names, for vLLM's ``dtype``.

    vLLM's own ``auto`` runs a float32 checkpoint in float16; rlhfctl runs a
    model in the precision it was saved in, as the HF backend computes.
    """
    config = json.loads((Path(folder) / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "auto"


def build_vllm_generator(model: ModelSource, seed: int, engine: EngineOptions) -> VLLMGenerator:
    """The engine of `rollout`, `eval`, `label-prm` and `best-of-n`."""
    vllm = import_vllm()

    tokenizer = load_tokenizer(model)
    folder, workdir = engine_folder(model.spec, seed)
    llm = vllm.LLM(**engine_kwargs(folder, engine, seed, saved_dtype(folder), model.trust_remote_code))
    return VLLMGenerator(vllm, llm, tokenizer, workdir=workdir, eos_ids=eos_token_ids(tokenizer, model.spec))


def build_policy_engine(model: ModelSource | str, policy: Any, tokenizer: Any, seed: int, gpu_memory_utilization: float,
                        control_timeout: float) -> VLLMGenerator:
    """train-policy's colocated engine: built from the SFT folder, in this process, on this GPU.

    In-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, unless the user set
    it) so that weight updates pass tensors by reference instead of
    pickling them to an engine process. Sleep mode and log-probabilities
    after temperature (``logprobs_mode="processed_logprobs"``, what the
    policy's log-probs mean) are asked for where the installed vLLM has them.
    """
    vllm = import_vllm()
    if getattr(policy, "peft_config", None):
        raise ConfigError("train-policy --backend vllm loads full weights into the engine, not LoRA adapters: use --backend hf with LoRA")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    source = as_source(model)
    folder, workdir = engine_folder(source.spec, seed)
    dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
    kwargs = engine_kwargs(folder, EngineOptions(tp=1, gpu_memory_utilization=gpu_memory_utilization), seed, dtype, source.trust_remote_code)
    known = engine_arg_names(vllm)
    can_sleep = "enable_sleep_mode" in known and hasattr(vllm.LLM, "sleep")
    if can_sleep:
        kwargs["enable_sleep_mode"] = True
    if "logprobs_mode" in known:
        kwargs["logprobs_mode"] = "processed_logprobs"
    llm = vllm.LLM(**kwargs)

    return VLLMGenerator(vllm, llm, tokenizer, with_logprobs=True, can_sleep=can_sleep, control_timeout=control_timeout,
                         workdir=workdir, eos_ids=eos_token_ids(tokenizer, source.spec))
