"""Held-out metrics of a reward model: the numbers `train-rm` writes into its manifest and `eval --rm` reports."""

from __future__ import annotations

from typing import Any

from rlhfctl.rm.data import PAIR, Item, StepItem
from rlhfctl.rm.metrics import auc, binary_accuracy, first_error_accuracy, mean_std, pair_accuracy
from rlhfctl.rm.model import score_sequences, step_scores


def evaluate_items(values, items: list[Item], pad_id: int, batch_size: int = 64) -> dict[str, Any]:
    """Held-out metrics and the reward's mean/std over every scored response."""
    values.eval()
    seqs = [s for it in items for s in it.seqs]
    scores = score_sequences(values, seqs, pad_id, batch_size) if seqs else []
    chosen, rejected, bin_scores, labels, i = [], [], [], [], 0
    for it in items:
        if it.kind == PAIR:
            chosen.append(scores[i])
            rejected.append(scores[i + 1])
            i += 2
        else:
            bin_scores.append(scores[i])
            labels.append(it.label)
            i += 1
    mu, sigma = mean_std(scores)
    out: dict[str, Any] = {"num_pairs": len(chosen), "num_binary": len(bin_scores), "reward_mean": mu, "reward_std": sigma}
    if chosen:
        out["pair_accuracy"] = pair_accuracy(chosen, rejected)
    if bin_scores:
        out["binary_accuracy"] = binary_accuracy(bin_scores, labels)
        out["auc"] = auc(bin_scores, labels)
    return out


def evaluate_steps(values, items: list[StepItem], pad_id: int) -> dict[str, Any]:
    """Held-out step accuracy and first-error accuracy, and the step scores' mean/std."""
    values.eval()
    if not items:
        return {"num_solutions": 0}
    scores = step_scores(values, [it.ids for it in items], [it.positions for it in items], pad_id)
    flat = [s for row in scores for s in row]
    labels = [y for it in items for y in it.labels]
    mu, sigma = mean_std(flat)
    return {"num_solutions": len(items), "num_steps": len(flat),
            "step_accuracy": sum((s > 0) == (y >= 0.5) for s, y in zip(flat, labels)) / len(flat),
            "first_error_accuracy": first_error_accuracy(scores, [it.labels for it in items]),
            "reward_mean": mu, "reward_std": sigma}
