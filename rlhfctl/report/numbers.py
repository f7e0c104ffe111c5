"""The key numbers of each input, as plain values (None where not logged).

One function per kind of input; the Markdown tables and the ``--json``
summary both read these, so the report and the JSON never disagree.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rlhfctl.report.runs import BestOfNResult, EvalResult, ReportInput, TrainingRun, is_number

BON_NS = (1, 4, 16)  # the N columns of the best-of-n table, next to N_max
RM_HELD_OUT = ("pair_accuracy", "binary_accuracy", "auc", "step_accuracy", "first_error_accuracy")
EVAL_RM_KEYS = (*RM_HELD_OUT, "num_pairs", "num_binary")
_AT_K = re.compile(r"^(pass|maj)@(\d+)$")


def key_numbers(item: ReportInput) -> dict[str, Any]:
    """``{"name", "kind", "path", ...numbers}`` for one input."""
    head = {"name": item.name, "kind": item.kind, "path": str(item.path)}
    if isinstance(item, BestOfNResult):
        return {**head, **best_of_n_numbers(item)}
    if isinstance(item, EvalResult):
        return {**head, **eval_numbers(item)}
    return {**head, **_TRAINING[item.command](item)}


def policy_numbers(run: TrainingRun) -> dict[str, Any]:
    """Steps, eval pass@1 (first, last, best), final reward and KL, mean length, wall time."""
    eval_steps, eval_values = eval_curve(run)
    best = max(range(len(eval_values)), key=lambda i: eval_values[i], default=None)
    _, seconds = run.series("seconds")
    _, lengths = run.series("response_length")
    return {
        "algo": run.options.get("algo") or run.results.get("algo"),
        "steps": last_step(run),
        "eval_pass@1_first": eval_values[0] if eval_values else None,
        "eval_pass@1_last": eval_values[-1] if eval_values else None,
        "eval_pass@1_best": eval_values[best] if best is not None else None,
        "eval_pass@1_best_step": eval_steps[best] if best is not None else None,
        "final_reward_raw_mean": _last(run, "reward_raw_mean", "final_reward_raw_mean"),
        "final_kl": _last(run, "kl", "final_kl"),
        "mean_response_length": math.fsum(lengths) / len(lengths) if lengths else None,
        "wall_seconds": math.fsum(seconds) if seconds else None,
    }


def sft_numbers(run: TrainingRun) -> dict[str, Any]:
    """Steps, final loss, and the last value of every ``eval_*`` metric logged."""
    evals = sorted({k for row in run.metrics for k in row if k.startswith("eval_")})
    return {"steps": last_step(run), "final_loss": _last(run, "loss", "final_loss"),
            **{key: _last(run, key) for key in evals}}


def rm_numbers(run: TrainingRun) -> dict[str, Any]:
    """Steps, final loss, and the held-out accuracies the manifest saved."""
    kind = run.results.get("kind") or ("prm" if run.options.get("prm") else "orm")
    held_out = {key: run.results.get(key) for key in RM_HELD_OUT if is_number(run.results.get(key))}
    return {"rm_kind": kind, "steps": last_step(run), "final_loss": _last(run, "loss", "final_loss"), **held_out}


_TRAINING = {"train-policy": policy_numbers, "train-sft": sft_numbers, "train-rm": rm_numbers}


def best_of_n_numbers(result: BestOfNResult) -> dict[str, Any]:
    """Accuracy at N = 1, 4, 16 and N_max for every selector (None where N was not reached)."""
    n_max = max(result.n)
    selectors = {}
    for selector, ys in result.curves.items():
        at = dict(zip(result.n, ys))
        selectors[selector] = {**{str(n): at.get(n) for n in BON_NS}, "max": at[n_max]}
    return {"num_prompts": result.num_prompts, "n_max": n_max, "selectors": selectors}


def eval_numbers(result: EvalResult) -> dict[str, Any]:
    """pass@k and maj@k by k, then a reward model's accuracies; ``n`` and ``num_prompts``."""
    data = result.numbers
    at_k = sorted((k for k in data if _AT_K.match(k) and is_number(data[k])),
                  key=lambda k: (_AT_K.match(k).group(1) != "pass", int(_AT_K.match(k).group(2))))
    rm = [k for k in EVAL_RM_KEYS if is_number(data.get(k))]
    return {"n": data.get("n"), "num_prompts": data.get("num_prompts"), **{k: data[k] for k in (*at_k, *rm)}}


def eval_curve(run: TrainingRun) -> tuple[list[int], list[float]]:
    """Eval pass@1 by step: from the metrics, else from the manifest's results."""
    steps, values = run.series("eval_pass@1")
    if steps:
        return steps, values
    saved = run.results.get("eval_pass@1")
    if not isinstance(saved, dict):
        return [], []
    points = sorted((int(s), float(v)) for s, v in saved.items() if str(s).isdigit() and is_number(v))
    return [s for s, _ in points], [v for _, v in points]


def last_step(run: TrainingRun) -> int | None:
    steps = [int(row["step"]) for row in run.metrics]
    if steps:
        return max(steps)
    saved = run.results.get("steps")
    return saved if is_number(saved) else None


def _last(run: TrainingRun, key: str, saved_key: str | None = None) -> float | None:
    """The metric's value at its last logged step, else the manifest's final number."""
    _, values = run.series(key)
    if values:
        return values[-1]
    saved = run.results.get(saved_key) if saved_key else None
    return float(saved) if is_number(saved) else None
