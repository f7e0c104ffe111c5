"""LoRA adapters through peft (`--lora-r`), and merging them back for publishing.

Adapters are injected into the Hugging Face model in place, so the loops,
`TokenValues` and the generator call the same module as without LoRA. The
published folder is a plain Hugging Face model: the adapters are merged into
the weights from the gathered state dict (works on FSDP and ZeRO-3 shards
alike), so `transformers` and vLLM load it with no peft.

LoRA (Hu et al. 2021, arXiv 2106.09685, eq. 3): a frozen linear layer W₀
gets a trainable low-rank update, ``h = W₀x + (α/r)·B·A·x`` with
A (r × in), B (out × r), B initialised to zero.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from rlhfctl.errors import ConfigError

ADAPTER = "default"  # peft's adapter name; one adapter per model


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("--lora-r needs peft, which is not installed: pip install 'rlhfctl[lora]'") from None


def _linear_types() -> tuple[type, ...]:
    """Layers LoRA adapts: nn.Linear, and transformers' Conv1D (GPT-2's linear layers, weight stored (in, out))."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def linear_targets(model, heads: tuple[str, ...]) -> list[str]:
    """`all-linear`: the names of every linear layer but the output heads (lm_head, score), as peft matches them."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {name for name, module in model.named_modules() if module is output} | set(heads)
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, _linear_types()) and name not in skip and name.split(".")[0] not in heads})


def transposed_layers(model) -> set[str]:
    """Names of the adapted layers whose weight is stored (in, out) (Conv1D), for `merge_adapters`."""
    from transformers.pytorch_utils import Conv1D

    return {name.removesuffix(".base_layer") for name, module in model.named_modules()
            if isinstance(module, Conv1D) and name.endswith(".base_layer")}


def add_adapters(model, scale, heads: tuple[str, ...] = ()) -> list[str]:
    """Inject LoRA adapters into ``model`` in place; only adapters and ``heads`` train.

    Returns the targeted module names. Only linear layers (nn.Linear, Conv1D)
    are accepted: `merge_adapters` merges W₀ + (α/r)·B·A, the form of a linear layer.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D
    from peft.tuners.lora import LoraLayer

    if scale.lora_target_modules.strip() == "all-linear":
        targets = linear_targets(model, heads)
    else:
        targets = [t.strip() for t in scale.lora_target_modules.split(",") if t.strip()]
    _check_targets(model, targets)
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules())
    config = LoraConfig(r=scale.lora_r, lora_alpha=scale.alpha, lora_dropout=scale.lora_dropout, target_modules=targets,
                        bias="none", fan_in_fan_out=conv1d)
    try:
        inject_adapter_in_model(config, model)  # freezes every weight but the adapters
    except ValueError as e:
        raise ConfigError(f"--lora-target-modules {scale.lora_target_modules}: {str(e).splitlines()[0]}") from None
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not isinstance(module.get_base_layer(), _linear_types()):
            raise ConfigError(f"--lora-target-modules: {name} is a {type(module.get_base_layer()).__name__}; "
                              "rlhfctl adapts linear layers only (nn.Linear, Conv1D)")
    for head in heads:
        getattr(model, head).requires_grad_(True)
    return targets


def _check_targets(model, targets: list[str]) -> None:
    """peft only refuses a list none of whose names match; refuse any name that matches nothing."""
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            linear = ", ".join(linear_targets(model, ()))
            raise ConfigError(f"--lora-target-modules: {type(model).__name__} has no module named {target!r} "
                              f"(its linear layers: {linear})")


def merge_adapters(state: dict[str, Any], scaling: float, transposed: set[str] = frozenset()) -> dict[str, Any]:
    """A plain state dict from an adapted one: ``W = W₀ + scaling·B·A``, peft's names removed.

    ``x.base_layer.weight`` + ``x.lora_A.default.weight`` + ``x.lora_B.default.weight``
    become ``x.weight`` (computed in fp32, stored in W₀'s dtype);
    ``x.base_layer.bias`` becomes ``x.bias``. Layers named in ``transposed``
    store W₀ as (in, out) (Conv1D), so they get (B·A)ᵀ.
    """
    merged: dict[str, Any] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        prefix, marker, param = key.rpartition(".base_layer.")
        if not marker:
            merged[key] = value
            continue
        if param == "weight":
            a, b = state[f"{prefix}.lora_A.{ADAPTER}.weight"], state[f"{prefix}.lora_B.{ADAPTER}.weight"]  # (r, in), (out, r)
            delta = b.float() @ a.float()  # (out, in)
            value = (value.float() + scaling * (delta.T if prefix in transposed else delta)).to(value.dtype)
        merged[f"{prefix}.{param}"] = value
    return merged


@contextmanager
def adapters_disabled(model):
    """Run ``model`` as its base: every LoRA layer passes its input through W₀ alone."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class BaseModelReference:
    """π_ref of a LoRA policy: the policy's own forward pass with its adapters off.

    The base weights never train, so this is exactly the starting model,
    without a second copy of it in memory. Called like the model it wraps.
    """

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, **inputs):
        with adapters_disabled(self.policy):
            return self.policy(**inputs)
