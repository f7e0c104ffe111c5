"""Loading and saving models: a folder, a Hub id, or a ``toy:SIZE`` spec built from config.

Everywhere a command takes a model, it takes a Hugging Face folder, a Hub
id (``org/name`` or ``org/name@revision``, resolved through huggingface_hub:
downloaded when online, read from the cache under ``HF_HUB_OFFLINE=1``), or
``toy:tiny|small|base``. A toy spec builds a fresh, seeded Llama-style model
with the toy tokenizer, so the whole pipeline runs with nothing downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfctl.console import log_once
from rlhfctl.errors import ModelError
from rlhfctl.toy.sizes import TOY_SIZES, toy_config
from rlhfctl.toy.tokenizer import build_toy_tokenizer

TOY_PREFIX = "toy:"


def is_toy_spec(spec: str) -> bool:
    return spec.startswith(TOY_PREFIX)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def check_model_spec(spec: str) -> str:
    """The local folder of a spec (a Hub id is resolved), or the toy spec; one line on one that cannot be loaded."""
    if is_toy_spec(spec):
        size = spec[len(TOY_PREFIX):]
        if size not in TOY_SIZES:
            raise ModelError(f"unknown toy size {size!r} in {spec!r}: choose one of {', '.join('toy:' + s for s in TOY_SIZES)}")
        return spec
    if not os.path.exists(spec) and _HUB_ID.match(spec):
        return _hub_snapshot(spec)
    if not os.path.exists(spec):
        raise ModelError(f"{spec}: no such model folder (give a Hugging Face folder, a Hub id org/name, or toy:SIZE)")
    config = Path(spec) / "config.json"
    if not config.is_file():
        raise ModelError(f"{spec}: not a model folder (no config.json)")
    _check_config_json(str(config), config.stat().st_mtime_ns)
    return spec


@functools.lru_cache(maxsize=64)
def _check_config_json(path: str, mtime_ns: int) -> None:
    """One line on a ``config.json`` that is not a JSON object (cached per file version: specs are checked often)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{Path(path).parent}: cannot load: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{Path(path).parent}: cannot load: config.json is not a JSON object")


@contextlib.contextmanager
def loading(spec: str, what: str):
    """Turn what transformers and safetensors raise on a damaged folder (a truncated weights file,
    a broken tokenizer or config) into one line naming the folder."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{spec}: cannot load {what}: {first}") from None


model_path = check_model_spec  # what loaders read: the folder behind a spec


@functools.lru_cache(maxsize=None)
def _hub_snapshot(spec: str) -> str:
    """The local snapshot of a Hub model ``org/name[@revision]`` (weights, config, tokenizer)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo, _, revision = spec.partition("@")
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=patterns)
    except LocalEntryNotFoundError:
        raise ModelError(f"{spec}: no such model folder, and not in the Hugging Face cache as a Hub id (downloads "
                         "are off: HF_HUB_OFFLINE=1 or no network)") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelError(f"{spec}: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ModelError(f"{spec}: cannot download: {str(e).splitlines()[0]}") from None
    if not (Path(folder) / "config.json").is_file():
        raise ModelError(f"{spec}: the Hub snapshot has no config.json (not a transformers model)")
    return folder


def saved_dtype(spec: str, choice: str = "auto") -> str:
    """The dtype an output folder's weights are written in: ``choice``, or for ``auto`` the input
    model's (its config's ``dtype``/``torch_dtype``; float32 for toy models and configs without one)."""
    if choice != "auto":
        _dtype(choice)
        return choice
    if is_toy_spec(spec):
        return "float32"
    try:
        config = json.loads((Path(model_path(spec)) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "float32"
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def eos_token_ids(tokenizer: Any, spec: str | None = None) -> frozenset[int]:
    """Every id that ends a response: the tokenizer's eos and the model's ``generation_config.json``'s eos ids
    (Llama 3 Instruct lists three)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if spec is not None and not is_toy_spec(spec):
        path = Path(model_path(spec)) / "generation_config.json"
        try:
            eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
        except json.JSONDecodeError:
            raise ModelError(f"{path}: invalid JSON") from None
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return frozenset(int(i) for i in ids)


def quiet_transformers() -> None:
    """No load reports or progress bars from transformers: rlhfctl reports itself."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class ModelSource:
    """A model to load: a folder, a Hub id (``org/name[@rev]``) or ``toy:SIZE``, and whether its own code may run.

    Every loader takes one (or a bare spec, which trusts no code), so
    ``--trust-remote-code`` reaches each model a command loads.
    """

    spec: str
    trust_remote_code: bool = False


def as_source(model: ModelSource | str) -> ModelSource:
    """`model` as a `ModelSource` (a bare spec trusts no remote code)."""
    return model if isinstance(model, ModelSource) else ModelSource(str(model))


def load_tokenizer(model: ModelSource | str):
    """The tokenizer of a model, with a pad token and left padding."""
    source = as_source(model)
    spec, trust_remote_code = source.spec, source.trust_remote_code
    check_model_spec(spec)
    quiet_transformers()
    if is_toy_spec(spec):
        return build_toy_tokenizer()
    from transformers import AutoTokenizer

    with loading(spec, "the tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(model_path(spec), trust_remote_code=trust_remote_code, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # pad == eos, as TRL does: readers use attention masks
    return tokenizer


def load_causal_lm(model: ModelSource | str, seed: int = 0, dtype: str = "float32"):
    """A policy (`AutoModelForCausalLM`) from a folder, or a fresh seeded toy model."""
    import torch
    from transformers import AutoModelForCausalLM

    source = as_source(model)
    spec, trust_remote_code = source.spec, source.trust_remote_code
    check_model_spec(spec)
    quiet_transformers()
    torch_dtype = _dtype(dtype)
    if is_toy_spec(spec):
        with _seeded(seed):
            model = AutoModelForCausalLM.from_config(toy_config(spec[len(TOY_PREFIX):]), dtype=torch_dtype)
        return announce_model(spec, model)
    with loading(spec, "as a causal LM"):
        model = AutoModelForCausalLM.from_pretrained(model_path(spec), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    return announce_model(spec, model)


def announce_model(spec: str, model: Any) -> Any:
    """Say once on stderr which model was loaded, its class and size (``model: runs/sft (LlamaForCausalLM, 0.9M parameters)``)."""
    log_once(f"model: {spec} ({type(model).__name__}, {human_count(count_parameters(model))} parameters)")
    return model


def human_count(n: int) -> str:
    """``n`` the way model sizes are quoted: 950 -> 950, 12,300 -> 12.3K, 912,000 -> 0.9M, 1.54e9 -> 1.5B."""
    for unit, floor, scale in (("B", 1e9, 1e9), ("M", 1e5, 1e6), ("K", 1e3, 1e3)):
        if n >= floor:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)


def save_model(model: Any, tokenizer: Any, folder: str | os.PathLike, state_dict: dict | None = None,
               dtype: str = "float32") -> None:
    """Save weights (safetensors, in ``dtype``), config and tokenizer as a Hugging Face folder.

    Tied weights stay tied: transformers writes a tied pair once. The
    tokenizer keeps its padding side and pad token, so a reader batches
    the way rlhfctl does.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = _retied(model, model.state_dict() if state_dict is None else state_dict, _dtype(dtype))
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    config_path = folder / "config.json"  # transformers records the live model's dtype, not the weights'
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = dtype
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(folder)


def _retied(model: Any, state_dict: dict, dtype) -> dict:
    """``state_dict`` in ``dtype``, tied tensors still one tensor (transformers then writes them once).

    Gathered state dicts (FSDP, LoRA merges) hold copies, so the output
    embedding is pointed back at the input one when the config ties them.
    """
    import torch

    converted: dict[tuple, Any] = {}
    out = {}
    for name, value in state_dict.items():
        if torch.is_floating_point(value):
            key = (value.data_ptr(), tuple(value.shape), value.dtype)
            value = converted.setdefault(key, value.to(dtype))
        out[name] = value
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return out
    names = {id(m): n for n, m in model.named_modules()}
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if outp is not None and id(inp) in names and id(outp) in names:
        src, dst = f"{names[id(inp)]}.weight", f"{names[id(outp)]}.weight"
        if src in out and dst in out:
            out[dst] = out[src]
    return out


def inference_device() -> str:
    """Where a command that only runs a model forward puts it: the GPU when there is one.

    Training commands place their models through accelerate; rollout, eval,
    label-prm and best-of-n scoring use this. ``RLHFCTL_DEVICE`` overrides it
    (e.g. ``cpu``, ``cuda:1``).
    """
    import torch

    return os.environ.get("RLHFCTL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ModelError(f"unknown dtype {name!r}: choose one of {', '.join(table)}")
    return table[name]


class _seeded:
    """Fork the torch RNG so model init is a function of the seed alone."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        import torch

        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)
