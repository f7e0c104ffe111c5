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
  recomputes each chunk's logits instead of keeping them (or, for a loss
  that weighs every token alike, the forward pass makes the gradients
  too), so at most one chunk of logits exists at a time.

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
                   compute_dtype: torch.dtype | None = None, grads_ahead: bool = False,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 ``log_softmax(z / temperature)[label]`` for each row; and the entropy of each row's distribution if asked.

    ``states`` (..., H) are final hidden states and ``head`` the LM head that
    makes logits of them, or ``states`` (..., V) are logits and ``head`` is
    None. ``labels`` has the shape of ``states`` without its last dimension,
    and so have the results. The log-probs carry gradients (to ``states`` and
    the head's weight and bias); the entropy does not (it is a statistic).
    ``compute_dtype``: the dtype the head runs in (default: that of ``states``).

    ``grads_ahead``: the caller's loss weighs every row's log-prob alike (a
    sum or a mean, as the SFT loss): the forward pass then also makes the
    gradients of the sum, and the backward pass scales them, instead of
    computing every chunk's logits a second time (3 passes through the head
    instead of 4; the gradients are held from the forward to the backward
    pass). A backward pass that weighs the rows unequally recomputes them,
    and so does a head that runs in a lower precision (to round as the plain
    computation does).
    """
    rows = states.reshape(-1, states.shape[-1])
    weight, bias = (head.weight, head.bias) if head is not None else (None, None)
    vocab = weight.shape[0] if weight is not None else rows.shape[-1]
    chunk = chunk_rows or default_chunk_rows(vocab)
    logp, entropy = _TokenLogprobs.apply(rows, weight, bias, labels.reshape(-1), float(temperature or 1.0), chunk,
                                         with_entropy, compute_dtype or rows.dtype, grads_ahead)
    return logp.view(labels.shape), entropy.view(labels.shape) if with_entropy else None


def _chunk_logits(rows, weight, bias, temperature: float) -> torch.Tensor:
    """fp32 logits / temperature of ``rows`` (already in the compute dtype)."""
    logits = rows if weight is None else torch.nn.functional.linear(rows, weight, bias)
    return logits.float() / temperature


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, bias, labels, temperature, chunk, with_entropy, compute_dtype, grads_ahead):
        n = rows.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=rows.device)
        entropy = torch.zeros(n if with_entropy else 0, dtype=torch.float32, device=rows.device)
        w, b = _cast(weight, compute_dtype), _cast(bias, compute_dtype)
        # in bf16 the gradients would be rounded before the loss's weight scales them, unlike the plain path's
        ahead = _Grads(rows, weight, bias, ctx.needs_input_grad[:3], torch.float32) if (
            grads_ahead and compute_dtype == torch.float32 and any(ctx.needs_input_grad[:3])) else None
        ones = torch.ones(min(chunk, n), 1, device=rows.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            x = rows[start:end].to(compute_dtype)
            lp = torch.log_softmax(_chunk_logits(x, w, b, temperature), dim=-1)
            logp[start:end] = lp.gather(-1, labels[start:end, None]).squeeze(-1)
            if with_entropy:
                entropy[start:end] = -(lp.exp() * lp).sum(-1)
            if ahead is not None:
                ahead.add(start, x, w, lp, labels[start:end], ones[:end - start], temperature, compute_dtype)
        ctx.save_for_backward(rows, weight, bias, labels)
        ctx.settings, ctx.ahead = (temperature, chunk, compute_dtype), ahead
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        rows, weight, bias, labels = ctx.saved_tensors
        temperature, chunk, compute_dtype = ctx.settings
        ahead, ctx.ahead = ctx.ahead, None
        if ahead is not None and grad_logp.numel() and bool((grad_logp == grad_logp[:1]).all()):  # Σ c·logp: the forward's gradients, times c
            return (*ahead.result(rows, weight, bias, grad_logp[:1].float()), None, None, None, None, None, None)
        grads = _Grads(rows, weight, bias, ctx.needs_input_grad[:3], rows.dtype)
        w, b = _cast(weight, compute_dtype), _cast(bias, compute_dtype)
        for start in range(0, rows.shape[0], chunk):
            end = min(start + chunk, rows.shape[0])
            x = rows[start:end].to(compute_dtype)
            lp = torch.log_softmax(_chunk_logits(x, w, b, temperature), dim=-1)
            grads.add(start, x, w, lp, labels[start:end], grad_logp[start:end, None].float(), temperature, compute_dtype)
        return (*grads.result(rows, weight, bias), None, None, None, None, None, None)


class _Grads:
    """Gradients of Σ_i g_i · logp_i with respect to the rows, the head's weight and its bias, a chunk at a time."""

    def __init__(self, rows, weight, bias, needs, rows_dtype):
        self.rows = torch.empty(rows.shape, dtype=rows_dtype, device=rows.device) if needs[0] else None
        self.weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        self.bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs[2] else None

    def add(self, start: int, x, w, lp, labels, g, temperature: float, compute_dtype) -> None:
        """One chunk: ``x`` its rows in the compute dtype, ``lp`` its fp32 log-softmax (overwritten), ``g`` (rows, 1)."""
        # d lp[y] / dz = onehot(y) - softmax(z), times the incoming gradient, through z = logits / T
        grad_z = lp.exp_().mul_(-g).scatter_add_(-1, labels[:, None], g)
        if temperature != 1.0:
            grad_z.div_(temperature)
        grad_z = grad_z.to(compute_dtype)
        end = start + x.shape[0]
        if w is None:  # the rows are the logits
            if self.rows is not None:
                self.rows[start:end] = grad_z
            return
        if self.rows is not None:
            self.rows[start:end] = grad_z @ w
        if self.weight is not None:  # accumulated in place, in fp32: no weight-sized temporary per chunk
            self.weight.addmm_(grad_z.t().float(), x.float())
        if self.bias is not None:
            self.bias.add_(grad_z.float().sum(0))

    def result(self, rows, weight, bias, scale=None) -> tuple:
        out = []
        for grad, like in ((self.rows, rows), (self.weight, weight), (self.bias, bias)):
            if grad is not None and scale is not None:
                grad = grad.mul_(scale)
            out.append(None if grad is None else grad.to(like.dtype))
        return tuple(out)


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
