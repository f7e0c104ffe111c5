"""AdamW whose input-embedding state covers only the rows the data has used (docs/design.md §5b).

A reward model (or a language model whose output head is not tied to its
input embedding) reads the input embedding only at the token ids of its
batches. Dense, that embedding still costs a vocabulary-sized gradient and
two vocabulary-sized AdamW moments every step: for Qwen2.5-0.5B, 136M of its
494M parameters, 1.6 GB in fp32 that hold zeros for every token the data
never contains.

`sparse_input_embedding` switches such an embedding to sparse gradients
(``nn.Embedding(sparse=True)``: the rows of this batch's ids only), and
`RowSparseAdamW` keeps AdamW's moments for the rows that have ever had a
gradient. The update is AdamW's, exactly:

* a row never seen has zero moments, so AdamW moves it only by weight
  decay, ``p ← p·(1 − lr·wd)``; that is applied to the whole tensor here;
* a row seen before but not in this batch still steps (its first moment is
  not zero): every row with state is updated each step with a zero gradient
  where the batch has none, exactly as the dense update does;
* a row seen for the first time starts from zero moments, with the bias
  correction of the global step — what the dense state would hold.

Every other parameter goes through torch's AdamW unchanged. Gradient
clipping (`clip_grad_norm`, as torch's, which refuses sparse gradients) sees
the same norm: a coalesced sparse gradient holds the dense one's nonzero
entries.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ROWS = "rows"  # the state key of a row-sparse parameter: the row ids its moments belong to


def input_embedding(model) -> torch.nn.Embedding | None:
    """The token embedding of the (outermost) Hugging Face model inside ``model``, if it is a plain `nn.Embedding`."""
    for module in model.modules():
        get = getattr(module, "get_input_embeddings", None)
        if get is None:
            continue
        try:
            embedding = get()
        except (RuntimeError, AttributeError):  # transformers raises when a model has no base model to ask
            return None
        return embedding if isinstance(embedding, torch.nn.Embedding) else None
    return None


def sparse_input_embedding(model) -> bool:
    """Give ``model``'s input embedding sparse gradients where that changes nothing but memory; True if it did.

    Not when the embedding is frozen, tied to another weight (an output head
    that reads every row would make the gradient dense anyway), or uses
    ``max_norm`` (which renormalises rows in the forward pass).
    """
    embedding = input_embedding(model)
    if embedding is None or not embedding.weight.requires_grad or embedding.max_norm is not None:
        return False
    uses = sum(p is embedding.weight for _, p in model.named_parameters(remove_duplicate=False))
    if uses != 1:
        return False
    embedding.sparse = True
    return True


class RowSparseAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` that also takes row-sparse gradients (of 2-D parameters) and keeps their state by row."""

    def __init__(self, params, **kwargs: Any):
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"]:
                raise ValueError("row-sparse AdamW has no amsgrad or maximize")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None and p.grad.is_sparse]
        dense = [p for group in self.param_groups for p in group["params"] if p.grad is not None and not p.grad.is_sparse]
        for p in dense:  # a parameter whose state was kept by row (an earlier sparse run) goes back to whole moments
            if ROWS in self.state.get(p, {}):
                self.state[p] = dense_state(self.state[p], p)
        grads = {p: p.grad for p, _ in sparse}
        for p, _ in sparse:
            p.grad = None  # torch's AdamW refuses sparse gradients: it steps the others
        try:
            super().step()
        finally:
            for p, grad in grads.items():
                p.grad = grad
        for p, group in sparse:
            self._row_step(p, p.grad, group)
        return loss

    def _row_step(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        if p.dim() != 2:
            raise ValueError(f"row-sparse AdamW needs 2-D parameters with sparse gradients, got shape {tuple(p.shape)}")
        grad = grad.coalesce()
        ids, values = grad.indices()[0], grad.values().to(p.dtype)
        state = self.state[p]
        if not state:
            state.update(step=torch.tensor(0.0), rows=ids.new_empty(0), exp_avg=p.new_zeros(0, p.shape[1]),
                         exp_avg_sq=p.new_zeros(0, p.shape[1]))
        elif ROWS not in state:  # whole moments (a dense run resumed): keep them all, row by row
            state[ROWS] = torch.arange(p.shape[0], device=p.device)
        slot = torch.full((p.shape[0],), -1, dtype=torch.long, device=p.device)
        slot[state[ROWS]] = torch.arange(len(state[ROWS]), device=p.device)
        new = ids[slot[ids] < 0]
        if len(new):
            slot[new] = torch.arange(len(state[ROWS]), len(state[ROWS]) + len(new), device=p.device)
            state[ROWS] = torch.cat([state[ROWS], new])
            state["exp_avg"] = torch.cat([state["exp_avg"], p.new_zeros(len(new), p.shape[1])])
            state["exp_avg_sq"] = torch.cat([state["exp_avg_sq"], p.new_zeros(len(new), p.shape[1])])
        g = p.new_zeros(state["exp_avg"].shape)
        g[slot[ids]] = values

        beta1, beta2 = group["betas"]
        lr, eps, decay = float(group["lr"]), group["eps"], group["weight_decay"]
        state["step"] += 1
        step = float(state["step"])
        if decay:
            p.mul_(1 - lr * decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
        p.index_add_(0, state[ROWS], exp_avg / denom, alpha=-lr / (1 - beta1 ** step))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts every state tensor to the parameter's dtype: row ids back to ints
            if ROWS in state:
                state[ROWS] = state[ROWS].long()


def has_sparse_gradients(params) -> bool:
    return any(p.grad is not None and p.grad.is_sparse for p in params)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (2-norm) for gradients some of which are sparse; the pre-clip norm."""
    params = [p for p in params if p.grad is not None]
    for p in params:  # one entry per distinct row: the values' norm is the dense gradient's
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    norms = [(p.grad.values() if p.grad.is_sparse else p.grad).norm(2.0, dtype=torch.float32) for p in params]
    total = torch.stack(norms).norm(2.0) if norms else torch.tensor(0.0)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(scale.to(p.grad.dtype))
    return total


def dense_state(state: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
    """A row-sparse parameter's AdamW state as torch's AdamW keeps it (whole-tensor moments)."""
    rows = state[ROWS].long()
    whole = {}
    for key in ("exp_avg", "exp_avg_sq"):
        whole[key] = torch.zeros_like(p)
        whole[key][rows] = state[key].to(p.dtype)
    return {"step": state["step"], **whole}


def dense_optimizer_state(saved: dict[str, Any], optimizer) -> dict[str, Any]:
    """``saved`` (an optimizer state dict) with any row-sparse entries made whole, for a plain AdamW to load."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    order = [i for group in saved.get("param_groups", []) for i in group["params"]]
    state = dict(saved.get("state", {}))
    for index, p in zip(order, params):
        if ROWS in state.get(index, {}):
            state[index] = dense_state(state[index], p)
    return {**saved, "state": state}
