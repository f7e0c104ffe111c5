"""`eval --rm`: how well a reward model separates good from bad responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhfctl.models import ModelSource, inference_device
from rlhfctl.records import check_out_file, write_json
from rlhfctl.rm.data import encode_items, encode_step_items, read_preferences, read_steps
from rlhfctl.rm.evaluate import evaluate_items, evaluate_steps
from rlhfctl.rm.model import ORM, PRM, TokenValues, load_reward_model, trained_max_length
from rlhfctl.rm.scorers import report_overlong


@dataclass(frozen=True)
class RMEvalConfig:
    rm: str
    data: tuple[str, ...]
    out: str | None = None
    batch_size: int = 64
    max_length: int | None = None  # None: the length the RM was trained with (its manifest)
    trust_remote_code: bool = False
    prm: bool = False


def run(config: RMEvalConfig) -> dict[str, Any]:
    """Pair accuracy on pairs, accuracy and AUC on binary items (RewardBench style);
    for a PRM on stepwise data, step accuracy and first-error accuracy."""
    check_out_file(config.out)
    if config.prm:
        return _run_prm(config)

    data = read_preferences(config.data)  # bad data fails before the model loads
    model, tokenizer, manifest = load_reward_model(ModelSource(config.rm, config.trust_remote_code), ORM, inference_device())
    limit = config.max_length or trained_max_length(manifest)
    items, overlong = encode_items(data, tokenizer, limit)
    report_overlong(overlong, sum(len(it.seqs) for it in items), limit, config.rm, None)
    summary = evaluate_items(TokenValues(model), items, tokenizer.pad_token_id, config.batch_size)
    summary.update({"rm": config.rm, "dropped": data.dropped, "max_length": limit, "overlong": overlong})
    if config.out:
        write_json(config.out, summary)
    return summary


def _run_prm(config: RMEvalConfig) -> dict[str, Any]:
    steps = read_steps(config.data)  # bad data fails before the model loads
    model, tokenizer, manifest = load_reward_model(ModelSource(config.rm, config.trust_remote_code), PRM, inference_device())
    sep = manifest.get("results", {}).get("step_sep", "\n")
    items = encode_step_items(steps, tokenizer, config.max_length or trained_max_length(manifest), sep)
    summary = {**evaluate_steps(TokenValues(model), items, tokenizer.pad_token_id), "prm": config.rm}
    if config.out:
        write_json(config.out, summary)
    return summary
