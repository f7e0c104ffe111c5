"""Loading and saving models: a folder, or a ``toy:SIZE`` spec built from config.

Everywhere a command takes a model, it takes either a Hugging Face folder or
``toy:tiny|small|base``. A toy spec builds a fresh, seeded Llama-style model
with the toy tokenizer, so the whole pipeline runs with nothing downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhfctl.errors import ModelError
from rlhfctl.toy.sizes import TOY_SIZES

TOY_PREFIX = "toy:"


def is_toy_spec(spec: str) -> bool:
    return spec.startswith(TOY_PREFIX)


def check_model_spec(spec: str) -> str:
    """Fail early, with one line, on a spec that cannot be loaded."""
    if is_toy_spec(spec):
        size = spec[len(TOY_PREFIX):]
        if size not in TOY_SIZES:
            raise ModelError(f"unknown toy size {size!r} in {spec!r}: choose one of {', '.join('toy:' + s for s in TOY_SIZES)}")
        return spec
    if not os.path.exists(spec):
        raise ModelError(f"{spec}: no such model folder (give a Hugging Face folder or toy:SIZE)")
    if not (Path(spec) / "config.json").is_file():
        raise ModelError(f"{spec}: not a model folder (no config.json)")
    return spec


def quiet_transformers() -> None:
    """No load reports or progress bars from transformers: rlhfctl reports itself."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """The tokenizer of a model spec, with a pad token and left padding."""
    check_model_spec(spec)
    quiet_transformers()
    if is_toy_spec(spec):
        from rlhfctl.toy.tokenizer import build_toy_tokenizer

        return build_toy_tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # pad == eos: readers use attention masks
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(spec: str, seed: int = 0, dtype: str = "float32", trust_remote_code: bool = False):
    """A policy (`AutoModelForCausalLM`) from a folder, or a fresh seeded toy model."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_spec(spec)
    quiet_transformers()
    torch_dtype = _dtype(dtype)
    if is_toy_spec(spec):
        from rlhfctl.toy.sizes import toy_config

        with _seeded(seed):
            model = AutoModelForCausalLM.from_config(toy_config(spec[len(TOY_PREFIX):]), dtype=torch_dtype)
        return model
    try:
        return AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"{spec}: cannot load as a causal LM: {str(e).splitlines()[0]}") from None


def save_model(model: Any, tokenizer: Any, folder: str | os.PathLike, state_dict: dict | None = None) -> None:
    """Save weights (safetensors), config and tokenizer as a Hugging Face folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(folder)


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
