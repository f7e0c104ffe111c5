"""Training past one device's comfort: bf16, gradient checkpointing, LoRA, sharding.

`ScaleOptions` holds the flags `--bf16`, `--gradient-checkpointing` and
`--lora-*` that train-sft, train-rm and train-policy share. The helpers
below keep the loops the same under DDP, FSDP and DeepSpeed ZeRO-3: weights
are gathered by accelerate before anything is written, only rank 0 writes,
and forward passes outside training go through the wrapped model wherever
the weights are sharded.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rlhfctl.console import log
from rlhfctl.errors import ConfigError, ModelError
from rlhfctl.packing import attention_implementation
from rlhfctl.training.lora import add_adapters, merge_adapters, require_peft, transposed_layers
from rlhfctl.training.row_sparse import RowSparseAdamW, dense_optimizer_state

# Wrappers that FSDP and activation checkpointing put into parameter names;
# state dicts from accelerate never carry them.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass(frozen=True)
class ScaleOptions:
    bf16: bool = False  # bf16 mixed precision (accelerate autocast); weights and optimizer stay fp32
    gradient_checkpointing: bool = False  # recompute activations in the backward pass
    lora_r: int = 0  # LoRA rank; 0 trains every weight
    lora_alpha: float | None = None  # LoRA scale α (the update is α/r · B·A); default 2r
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"  # comma-separated module names, or every linear layer but the heads
    save_dtype: str = "auto"  # dtype of the published weights: auto (the input model's), float32, bfloat16, float16

    @property
    def lora(self) -> bool:
        return self.lora_r > 0

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.lora_r

    def check(self) -> None:
        if self.save_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"unknown --save-dtype {self.save_dtype!r}: choose auto, float32, bfloat16 or float16")
        if self.lora_r < 0:
            raise ConfigError(f"--lora-r must be 0 (off) or positive, got {self.lora_r}")
        if not self.lora:
            return
        if self.alpha <= 0:
            raise ConfigError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules.strip(" ,"):
            raise ConfigError("--lora-target-modules is empty: name modules (q_proj,v_proj) or give all-linear")

        require_peft()

    def as_options(self) -> dict[str, Any]:
        """One key per flag for the manifest, with α resolved (LoRA settings only when LoRA is on)."""
        options: dict[str, Any] = {"bf16": self.bf16, "gradient_checkpointing": self.gradient_checkpointing, "lora_r": self.lora_r,
                                   "save_dtype": self.save_dtype}
        if self.lora:
            options.update(lora_alpha=self.alpha, lora_dropout=self.lora_dropout, lora_target_modules=self.lora_target_modules)
        return options


# A resumed run must rebuild the same trainable parameters as the first run.
RESUME_IDENTITY = ("lora_r", "lora_alpha", "lora_target_modules")


def make_accelerator(bf16: bool):
    """An `Accelerator`; with ``bf16``, bf16 mixed precision (autocast on CPUs and GPUs alike).

    Without ``bf16`` the precision is the launcher's (`accelerate launch
    --mixed_precision` or a config file), so a DeepSpeed or FSDP config that
    asks for bf16 still gets it.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps its precision in a process-wide singleton: a second run
    # in one process (a notebook, the tests) would inherit the first run's, or
    # fail to change it. rlhfctl makes one Accelerator per run, so start afresh.
    AcceleratorState._reset_state()
    try:
        accelerator = Accelerator(mixed_precision="bf16" if bf16 else None)
    except ValueError as e:
        raise ConfigError(f"--bf16: this device cannot train in bf16 ({str(e).splitlines()[0]})") from None
    _set_deepspeed_micro_batch(accelerator)
    return accelerator


def _set_deepspeed_micro_batch(accelerator) -> None:
    """DeepSpeed wants a micro-batch size before `prepare`, and accelerate reads it from a
    dataloader, which rlhfctl does not use (it shards its own batches). With one backward
    pass per optimiser step the number only feeds DeepSpeed's bookkeeping: say 1."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1


def prepare_model(accelerator, model, scale: ScaleOptions, heads: tuple[str, ...] = ()) -> dict[str, Any]:
    """The attention kernel, gradient checkpointing and LoRA adapters, in place, before accelerate wraps the model.

    ``heads`` are modules that train in full next to the adapters (a reward
    model's ``score``). Returns what the manifest should record of it.
    """
    recorded: dict[str, Any] = {}
    if use_eager_attention(accelerator, model):
        recorded["attention"] = "eager"
    if scale.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if not scale.lora:
        return recorded

    targets = add_adapters(model, scale, heads)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {**recorded, "lora": {"target_modules": targets, "trainable_parameters": trainable}}


def use_eager_attention(accelerator, model) -> bool:
    """On a CPU in bf16 mixed precision, switch ``model`` from SDPA to eager attention; True if it did.

    torch's CPU SDPA kernel is slow in bf16, its backward above all: on a
    toy:small train-sft step it took ~40% of the time in bf16 against ~15% in
    fp32, so bf16 gained nothing. Eager attention does the same arithmetic as
    bf16 matmuls (under autocast) with the softmax in fp32: the bf16 step got
    1.46x faster with 2 threads and 1.59x with 1. GPUs keep SDPA, and so does a
    model whose eager attention transformers refuses.
    """
    if accelerator.device.type != "cpu" or accelerator.mixed_precision != "bf16":
        return False
    if attention_implementation(model) != "sdpa":
        return False
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError, AttributeError):
        return False
    log(f"bf16 on a CPU: {type(model).__name__} runs eager attention (torch's CPU SDPA kernel is slow in bf16)",
        accelerator.is_main_process)
    return True


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass (a Hugging Face model).

    Non-reentrant checkpointing needs no input that requires grad, so it also
    works when LoRA freezes the embeddings. Newer transformers renamed the
    method (the old name warns); both take the same settings.
    """
    settings = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def is_sharded(accelerator) -> bool:
    """True where no rank holds every weight: FSDP, or DeepSpeed ZeRO stage 3."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3


def check_resumable(accelerator, resume: bool) -> None:
    """Refuse --resume where checkpoints would hold only rank 0's shard of the optimizer state.

    Under FSDP version 2 the state is gathered whole (`optimizer_state`);
    under FSDP version 1 and DeepSpeed it is not.
    """
    from accelerate.utils import DistributedType

    if resume and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) and not is_fsdp2(accelerator):
        what = "FSDP version 1" if accelerator.distributed_type == DistributedType.FSDP else accelerator.distributed_type.value
        raise ConfigError(f"--resume is not supported under {what}: the optimizer state is sharded and checkpoints keep "
                          "rank 0's part only; use DDP, or FSDP version 2 (examples/accelerate/fsdp.yaml), to resume")


def is_fsdp2(accelerator) -> bool:
    return bool(getattr(accelerator, "is_fsdp2", False))


def check_frozen_outer_weights(accelerator, scale: ScaleOptions, command: str) -> None:
    """Refuse LoRA on a causal LM under FSDP version 1.

    With LoRA every weight outside the decoder layers (embeddings, final norm,
    lm_head) is frozen, so FSDP's outer unit gets no gradient; after the first
    backward pass torch leaves those weights as plain tensors and FSDP's state
    dict no longer finds them (seen with torch 2.11 on a GPU and 2.13 on a
    CPU). A reward model is spared: its trainable score head sits in that unit.
    """
    from accelerate.utils import DistributedType

    if scale.lora and accelerator.distributed_type == DistributedType.FSDP and not is_fsdp2(accelerator):
        raise ConfigError(f"{command} --lora-r does not run under FSDP version 1 (torch loses the frozen embeddings and lm_head "
                          "from the state dict): use DDP, where the adapters' optimizer state is small")


def model_for_inference(accelerator, model):
    """The module to call for forward passes outside training (held-out scoring).

    The bare module where each rank holds all weights; the wrapped one where
    they are sharded, which gathers them layer by layer (every rank must then
    make the same calls).
    """
    return model if is_sharded(accelerator) else accelerator.unwrap_model(model)


@contextmanager
def full_weights(accelerator, *models):
    """Every weight of ``models`` present on every rank for the duration (HF generation, scoring).

    Inside, forward passes make no collective calls, so ranks may make
    different numbers of them (each stops decoding when its own responses
    end). Every rank must enter and leave together. ZeRO-3 gathers the
    parameters; FSDP version 2 all-gathers each unit once and keeps it whole
    until the end (no resharding after each forward pass). Under DDP, or one
    process, every rank already holds them. ``None`` entries are skipped.
    """
    from accelerate.utils import DistributedType

    models = [m for m in models if m is not None]
    if accelerator.distributed_type == DistributedType.DEEPSPEED and is_sharded(accelerator):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for m in models for p in m.parameters()]):
            yield
    elif accelerator.distributed_type == DistributedType.FSDP:
        with _fsdp2_unsharded(accelerator, models):
            yield
    else:
        yield


@contextmanager
def _fsdp2_unsharded(accelerator, models):
    """FSDP2 units of ``models`` unsharded, not resharded by forward passes, until the end; then as before.

    Accelerate sets resharding after forward unit by unit (off for the root
    and the final norm/lm_head unit, the plugin's value elsewhere), and FSDP2
    has no public getter for it, so each unit's own setting (its param
    groups' post-forward mesh, its state's "auto" flag) is kept and put back.
    """
    from torch.distributed.fsdp import FSDPModule

    if not is_fsdp2(accelerator):  # check_parallelism refuses FSDP version 1 first
        raise ConfigError("this needs FSDP version 2 (fsdp_version: 2 in the accelerate config)")
    units = list(dict.fromkeys(u for m in models for u in m.modules() if isinstance(u, FSDPModule)))
    saved = [(state, state._auto_reshard_after_forward, [(g, g.post_forward_mesh_info) for g in state._fsdp_param_groups])
             for state in (u._get_fsdp_state() for u in units)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()  # an all-gather: every rank, same units, same order
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()  # local: frees the gathered copies
        for state, auto, groups in saved:
            state._auto_reshard_after_forward = auto
            for group, mesh_info in groups:
                group.post_forward_mesh_info = mesh_info


# --- weights on disk --------------------------------------------------------------

def frozen_parameter_names(model) -> set[str]:
    """State-dict names of the parameters that never train (a LoRA run's base model)."""
    return {_plain_name(n) for n, p in model.named_parameters() if not p.requires_grad}


def _plain_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def checkpoint_weights(accelerator, model) -> dict[str, Any]:
    """The weights a checkpoint keeps: the full state dict less frozen parameters.

    With LoRA that is the adapters and heads, megabytes instead of the whole
    model; the frozen base comes back from ``--model`` on resume. All ranks
    call this (sharded weights are gathered); ranks other than 0 may get {}.
    """
    state = accelerator.get_state_dict(model)
    frozen = frozen_parameter_names(accelerator.unwrap_model(model))
    return {k: v for k, v in state.items() if k not in frozen}


def restore_weights(accelerator, model, weights: dict[str, Any], where: str) -> None:
    """Load a checkpoint's (full) weights into ``model`` as prepared by accelerate; every rank calls this.

    Under FSDP version 2 torch keeps each rank's shard of every tensor;
    elsewhere the bare module takes them whole.
    """
    if not is_fsdp2(accelerator):
        return load_weights(accelerator.unwrap_model(model), weights, where)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    missing, unexpected = set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    _check_loaded(model, missing, unexpected, where)


def optimizer_state(accelerator, model, optimizer) -> dict[str, Any]:
    """What a checkpoint keeps of ``optimizer``; every rank calls this and rank 0's answer is written.

    Under FSDP version 2 each rank holds a shard of the AdamW state: torch
    gathers it whole on rank 0, in CPU memory, keyed by parameter name
    (``{"by_name": ...}``), so a resumed run may shard it afresh. Elsewhere
    it is the optimizer's own state dict.
    """
    if not is_fsdp2(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"by_name": get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=options)}


def restore_optimizer(accelerator, model, optimizer, saved: dict[str, Any], where: str) -> None:
    """Load what `optimizer_state` wrote; every rank calls this."""
    if "by_name" in saved:
        if not is_fsdp2(accelerator):
            raise ModelError(f"{where}: this checkpoint was written under FSDP version 2; resume it under the same launcher")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), saved["by_name"],
                                 options=StateDictOptions(full_state_dict=True))
    elif is_fsdp2(accelerator):
        raise ModelError(f"{where}: this checkpoint was written without FSDP; resume it under the launcher that wrote it")
    else:
        if not isinstance(getattr(optimizer, "optimizer", optimizer), RowSparseAdamW):
            saved = dense_optimizer_state(saved, optimizer)  # written by row, resumed dense (--dense-embedding, several ranks)
        optimizer.load_state_dict(saved)


def load_weights(model, weights: dict[str, Any], where: str) -> None:
    """Load a checkpoint's weights; the parameters it leaves out must be frozen ones."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    _check_loaded(model, missing, unexpected, where)


def _check_loaded(model, missing, unexpected, where: str) -> None:
    frozen = frozen_parameter_names(model)
    absent = [k for k in missing if k not in frozen]
    if absent or unexpected:
        names = ", ".join((absent or unexpected)[:3])
        raise ModelError(f"{where}: checkpoint does not fit the model ({'missing' if absent else 'unexpected'}: {names}); "
                         "was the run started with other --model or --lora-* flags?")


def final_state_dict(accelerator, model, scale: ScaleOptions, prefix: str = "") -> dict[str, Any] | None:
    """The full state dict to publish (rank 0; None elsewhere), LoRA adapters merged in.

    ``prefix`` selects a submodule's weights (``model.`` for the Hugging Face
    model inside `TokenValues`). All ranks must call this.
    """
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if scale.lora:
        names = {_plain_name(n) for n in transposed_layers(accelerator.unwrap_model(model))}
        conv = {n[len(prefix):] for n in names if n.startswith(prefix)}
        state = merge_adapters(state, scale.alpha / scale.lora_r, conv)
    return state
