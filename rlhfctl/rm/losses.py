"""Reward-model losses (docs/design.md §1), as small pure functions.

The unified outcome reward model of the paper learns from two kinds of data
at once: preference pairs (Bradley-Terry) and verifiable items judged
correct/incorrect (logistic). A batch holding both averages the two losses.
"""

from __future__ import annotations


def bradley_terry_loss(chosen, rejected, margin=None):
    """``mean(-log σ(r(x, y+) - r(x, y-) - m))`` over pairs.

    Bradley & Terry (1952); the optional per-pair margin ``m`` is Llama 2's
    (Touvron et al. 2023, eq. 2). ``chosen``, ``rejected``, ``margin``: (P,).
    """
    import torch.nn.functional as F

    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def binary_loss(scores, labels):
    """``mean(-log σ(y · r(x, y)))`` with y = +1 (correct) / -1 (incorrect).

    The logistic loss on a signed label; ``scores`` (B,), ``labels`` (B,) bool.
    """
    import torch.nn.functional as F

    sign = labels.float() * 2.0 - 1.0
    return -F.logsigmoid(sign * scores).mean()


def unified_loss(chosen=None, rejected=None, margin=None, scores=None, labels=None, pair_count=None, binary_count=None):
    """``½(L_BT + L_cls)`` when the batch holds both kinds, else the one it holds.

    For one rank's share of a batch, ``pair_count`` and ``binary_count`` are
    the whole batch's counts (default: this share's). Each part is then this
    share's mean times its fraction of the batch, so the ranks' parts add up
    to the batch's means; a kind the batch holds and this share lacks adds a
    zero that stays on the autograd graph.

    Returns (loss, {"bt": tensor | None, "cls": tensor | None}), the parts detached.
    """
    pair_count = _count(chosen) if pair_count is None else pair_count
    binary_count = _count(scores) if binary_count is None else binary_count
    parts = {}
    if pair_count:
        parts["bt"] = _share(bradley_terry_loss, chosen, (chosen, rejected, margin), pair_count)
    if binary_count:
        parts["cls"] = _share(binary_loss, scores, (scores, labels), binary_count)
    if not parts:
        raise ValueError("a reward-model batch needs pairs or binary items")
    loss = sum(parts.values()) / len(parts)
    return loss, {k: v.detach() for k, v in parts.items()}


def _count(values) -> int:
    return 0 if values is None else values.numel()


def _share(loss_fn, values, args, total: int):
    """``loss_fn(*args)`` (a mean over ``values``) scaled to this share of ``total``; a zero on the graph when empty."""
    n = values.numel()
    return loss_fn(*args) * n / total if n else values.sum() * 0


def step_bce_loss(step_scores, step_labels):
    """Per-step binary cross-entropy of a process reward model (Math-Shepherd).

    ``mean(-[y log σ(s) + (1 - y) log(1 - σ(s))])`` over all steps; labels
    may be hard (0/1) or soft (the fraction of completions that reached the
    right answer). ``step_scores``, ``step_labels``: (S,).
    """
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(step_scores, step_labels.float())
