"""Token log-probabilities without a batch's full-vocabulary logits.

``log π(y_t | ...) = log_softmax(z_t)[y_t]`` where ``z_t`` is the LM head's
output at the position before ``y_t``. With a 150k-token vocabulary the fp32
logits of a 2,048-token batch take 1.2 GB, and the plain
``log_softmax(logits.float()).gather(...)`` holds that again for the
log-softmax and again for each gradient. Here:

* the model's final hidden states are taken where they enter the LM head
  (`final_hidden`), and the head runs only on the rows whose log-prob is
  wanted (no logits for prompt positions or ignored labels);
* those rows go through the head, the log-softmax and the gather
  ``chunk_rows`` rows at a time (`token_logprobs`); the backward pass
  recomputes each chunk's logits instead of keeping them, so at most one
  chunk of logits exists at a time.

Values and gradients are those of the plain computation (each row's
log-softmax is computed by the same kernel, in the same precision: the head
runs in its input's dtype, or in the autocast dtype when the forward ran
under autocast, and the logits are upcast to fp32 before the log-softmax).
A model whose head is not a plain ``nn.Linear``, or that changes the logits
after it (Gemma's soft-capping, Cohere's and Granite's scaling), or whose
weights are sharded (FSDP, DeepSpeed ZeRO-3), or that is compiled
(``--compile``), keeps its full logits; only
the log-softmax is then chunked.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

CHUNK_ELEMENTS = 2 ** 25  # logits computed at once: 128 MiB in fp32 (220 rows of a 151,936-token vocabulary)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # config fields that act after the head


def default_chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def token_logprobs(states: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear | None = None, *,
                   temperature: float = 1.0, with_entropy: bool = False, chunk_rows: int | None = None,
                   compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 ``log_softmax(z / temperature)[label]`` for each row; and the entropy of each row's distribution if asked.

    ``states`` (..., H) are final hidden states and ``head`` the LM head that
    makes logits of them, or ``states`` (..., V) are logits and ``head`` is
    None. ``labels`` has the shape of ``states`` without its last dimension,
    and so have the results. The log-probs carry gradients (to ``states`` and
    the head's weight and bias); the entropy does not (it is a statistic).
    ``compute_dtype``: the dtype the head runs in (default: that of ``states``).
    """
    rows = states.reshape(-1, states.shape[-1])
    weight, bias = (head.weight, head.bias) if head is not None else (None, None)
    vocab = weight.shape[0] if weight is not None else rows.shape[-1]
    chunk = chunk_rows or default_chunk_rows(vocab)
    logp, entropy = _TokenLogprobs.apply(rows, weight, bias, labels.reshape(-1), float(temperature or 1.0), chunk,
                                         with_entropy, compute_dtype or rows.dtype)
    return logp.view(labels.shape), entropy.view(labels.shape) if with_entropy else None


def _chunk_logits(rows, weight, bias, temperature: float) -> torch.Tensor:
    """fp32 logits / temperature of ``rows`` (already in the compute dtype)."""
    logits = rows if weight is None else torch.nn.functional.linear(rows, weight, bias)
    return logits.float() / temperature


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, bias, labels, temperature, chunk, with_entropy, compute_dtype):
        n = rows.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=rows.device)
        entropy = torch.zeros(n if with_entropy else 0, dtype=torch.float32, device=rows.device)
        w, b = _cast(weight, compute_dtype), _cast(bias, compute_dtype)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            lp = torch.log_softmax(_chunk_logits(rows[start:end].to(compute_dtype), w, b, temperature), dim=-1)
            logp[start:end] = lp.gather(-1, labels[start:end, None]).squeeze(-1)
            if with_entropy:
                entropy[start:end] = -(lp.exp() * lp).sum(-1)
        ctx.save_for_backward(rows, weight, bias, labels)
        ctx.settings = (temperature, chunk, compute_dtype)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        rows, weight, bias, labels = ctx.saved_tensors
        temperature, chunk, compute_dtype = ctx.settings
        need_rows, need_weight, need_bias = ctx.needs_input_grad[:3]
        w, b = _cast(weight, compute_dtype), _cast(bias, compute_dtype)
        grad_rows = torch.empty_like(rows) if need_rows else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        for start in range(0, rows.shape[0], chunk):
            end = min(start + chunk, rows.shape[0])
            x = rows[start:end].to(compute_dtype)
            with torch.no_grad():
                lp = torch.log_softmax(_chunk_logits(x, w, b, temperature), dim=-1)
            g = grad_logp[start:end, None].float()
            # d lp[y] / dz = onehot(y) - softmax(z), times the incoming gradient, through z = logits / T
            grad_z = (lp.exp_().mul_(-g)).scatter_add_(-1, labels[start:end, None], g).div_(temperature)
            grad_z = grad_z.to(compute_dtype)
            del lp
            if weight is None:
                if need_rows:
                    grad_rows[start:end] = grad_z.to(rows.dtype)
                continue
            if need_rows:
                grad_rows[start:end] = (grad_z @ w).to(rows.dtype)
            if need_weight:
                grad_weight.add_(grad_z.t().mm(x).float())
            if need_bias:
                grad_bias.add_(grad_z.float().sum(0))
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_rows, grad_weight, grad_bias, None, None, None, None, None


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


@dataclass
class FinalHidden:
    """What a forward pass under `final_hidden` left: the head and its input, or nothing (use the logits)."""

    head: torch.nn.Linear | None
    hidden: torch.Tensor | None = None
    compute_dtype: torch.dtype | None = None

    def states(self, output: Any) -> torch.Tensor:
        """The final hidden states the head was given, or, when none were taken, ``output.logits``."""
        if self.head is None:
            return output.logits
        if self.hidden is None:
            raise RuntimeError("the forward pass never reached the LM head")
        return self.hidden


@contextmanager
def final_hidden(model: Any) -> Iterator[FinalHidden]:
    """Forward passes of ``model`` (maybe wrapped) inside this block skip the LM head; the last one's hidden states are kept.

    The head then runs on an empty slice (the model returns logits of
    length 0), and `FinalHidden.states` gives the hidden states to pass to
    `token_logprobs` with ``head``. When `plain_head` finds no head to split
    off, the forward passes are left alone and ``states`` gives their logits.
    """
    head = plain_head(model)
    found = FinalHidden(head)
    if head is None:
        yield found
        return

    def take(module, args):
        hidden = args[0]
        found.hidden = hidden
        device = hidden.device.type
        found.compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        return (hidden[..., :0, :],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(take)
    try:
        yield found
    finally:
        handle.remove()


def plain_head(model: Any) -> torch.nn.Linear | None:
    """``model``'s LM head if it is a plain, unsharded ``nn.Linear`` whose output is the logits; else None."""
    inner = model
    for _ in range(4):  # DDP's wrapper; a LoRA policy's reference, which runs the policy with its adapters off
        if type(inner).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = inner.module
        elif not hasattr(inner, "get_output_embeddings") and hasattr(inner, "policy"):
            inner = inner.policy
    name = type(inner).__name__
    if "FullyShardedDataParallel" in name or "DeepSpeed" in name or name == "OptimizedModule" or _compiled(inner):
        return None
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if type(head) is not torch.nn.Linear or head.weight.dim() != 2 or _sharded(head.weight):
        return None
    config = getattr(inner, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, field, None) not in (None, 1, 1.0) for field in LOGIT_TRANSFORMS):
        return None
    return head


def _compiled(module: Any) -> bool:
    """Compiled in place (`--compile`): a hook added per call would make it recompile."""
    return getattr(module, "_compiled_call_impl", None) is not None


def _sharded(weight: torch.Tensor) -> bool:
    return hasattr(weight, "ds_id") or hasattr(weight, "device_mesh") or weight.numel() == 0
