"""`build-prefs`: preference data from rollouts, from a reward model, or imported.

Three modes, one output format (TRL's: pairs ``prompt/chosen/rejected`` and
binary items ``prompt/completion/label``, mixed in one JSONL):

- ``verified``: rollouts that carry ``correct`` give pairs (a correct vs an
  incorrect response to the same prompt) and binary items;
- ``rm``: responses ranked by a reward model give pairs (k-th best vs k-th
  worst);
- ``import``: pairs from the public preference formats (TRL's explicit- and
  implicit-prompt pairs, UltraFeedback-binarized conversations,
  score-annotated response sets) in JSONL, Parquet, CSV, a datasets folder
  or a Hub dataset.

The paper's data-scaling knobs (prompts, pairs per prompt, binary items per
prompt) are options; every drop is counted and reported.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from rlhfctl import sources
from rlhfctl.artifacts import describe_inputs, make_manifest
from rlhfctl.console import plural
from rlhfctl.errors import ConfigError, DataError
from rlhfctl.models import ModelSource
from rlhfctl.records import PAIRS, ROLLOUTS, Record, check_out_file, iter_values, read_records, write_json, write_jsonl
from rlhfctl.rm.data import split_prompt
from rlhfctl.rm.scorers import score_rollouts

MODES = ("verified", "rm", "import")


@dataclass(frozen=True)
class PrefsConfig:
    source: str
    out: str
    mode: str = "verified"
    max_prompts: int | None = None
    pairs_per_prompt: int = 1
    binary_per_prompt: int = 0
    seed: int = 0
    rm: str | None = None
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    split: str = "train"
    trust_remote_code: bool = False  # for the --rm that ranks responses
    fields: dict[str, str] = field(default_factory=dict)  # --field renames of the source's columns

    def check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown --mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.pairs_per_prompt < 1:
            raise ConfigError(f"--pairs-per-prompt must be at least 1, got {self.pairs_per_prompt}")
        if self.binary_per_prompt < 0:
            raise ConfigError(f"--binary-per-prompt must be >= 0, got {self.binary_per_prompt}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"--max-prompts must be at least 1, got {self.max_prompts}")
        if self.mode == "rm" and not self.rm:
            raise ConfigError("--mode rm needs --rm DIR (a reward model to rank responses with)")


def run(config: PrefsConfig) -> dict[str, Any]:
    config.check()
    check_out_file(config.out)
    rng = random.Random(config.seed)
    dropped: Counter[str] = Counter()
    if config.mode == "import":
        records, prompts = import_pairs(config, dropped)
    else:
        rollouts = read_records(config.source, ROLLOUTS, fields=config.fields)
        if config.max_prompts is not None:
            rollouts = rollouts[: config.max_prompts]
        if config.mode == "verified":
            records = verified_prefs(rollouts, config, rng, dropped)
        else:
            records = ranked_prefs(rollouts, config, dropped)
        prompts = len(rollouts)
    if not records:
        raise DataError(config.source, None, f"no preference records could be built ({_reasons(dropped)})")
    write_jsonl(config.out, records)
    summary = summarize(records, prompts, dropped)
    if config.out != "-":
        manifest = make_manifest("build-prefs", asdict(config), describe_inputs({"source": config.source}), summary)
        write_json(config.out + ".manifest.json", manifest)
    return summary


def verified_prefs(rollouts: list[Record], config: PrefsConfig, rng: random.Random, dropped: Counter) -> list[Record]:
    """Pairs (correct vs incorrect) and binary items from graded rollouts."""
    out: list[Record] = []
    for line, r in enumerate(rollouts, start=1):
        if "correct" not in r:
            raise DataError(config.source, line, "missing: --mode verified needs graded rollouts (prompts with an answer)", "correct")
        if len(r["correct"]) != len(r["responses"]):
            raise DataError(config.source, line, f"has {len(r['correct'])} entries for {len(r['responses'])} responses", "correct")
        good = _unique([t for t, ok in zip(r["responses"], r["correct"]) if ok])
        bad = _unique([t for t, ok in zip(r["responses"], r["correct"]) if not ok])
        combos = [(g, b) for g in good for b in bad if g != b]
        if set(good) & set(bad):  # one text graded both ways (a flaky sandbox): never a pair with itself
            dropped["chosen equals rejected"] += len(set(good) & set(bad))
        if not combos:
            dropped["no correct/incorrect pair (all right or all wrong)"] += 1
        for g, b in rng.sample(combos, min(config.pairs_per_prompt, len(combos))):
            out.append({"prompt": r["prompt"], "chosen": g, "rejected": b, "source": "verified"})
        labelled = [(t, True) for t in good] + [(t, False) for t in bad]
        for t, ok in rng.sample(labelled, min(config.binary_per_prompt, len(labelled))):
            out.append({"prompt": r["prompt"], "completion": t, "label": ok, "source": "verified"})
    return out


def ranked_prefs(rollouts: list[Record], config: PrefsConfig, dropped: Counter) -> list[Record]:
    """Pairs by reward-model rank: the k-th best response against the k-th worst."""
    scores = score_rollouts(rollouts, ModelSource(config.rm, config.trust_remote_code))
    out: list[Record] = []
    for r, s in zip(rollouts, scores):
        # a stable sort: tied scores keep the rollout's order (a set's order changes with each process's hash seed)
        ranked = sorted(zip(s, r["responses"]), key=lambda x: -x[0])
        texts = _unique([t for _, t in ranked])
        if len(texts) < 2:
            dropped["fewer than two distinct responses"] += 1
            continue
        for k in range(min(config.pairs_per_prompt, len(texts) // 2)):
            out.append({"prompt": r["prompt"], "chosen": texts[k], "rejected": texts[-1 - k], "source": "rm"})
    return out


def import_pairs(config: PrefsConfig, dropped: Counter) -> tuple[list[Record], int]:
    """Pairs from a public preference format, read from any source (`rlhfctl.sources`).

    Each row is one of: explicit prompt (``prompt``, ``chosen``, ``rejected``;
    strings or message lists, where chosen/rejected conversations that repeat
    the prompt's turns, as UltraFeedback-binarized does, are cut after them);
    implicit prompt (no prompt: the conversations' shared beginning is the
    prompt, as TRL reads it); or a score-annotated set (``responses`` with
    ``scores``, or ``completions`` of ``{response|text, score|overall_score|rating}``),
    from which the best-scored response is chosen over the worst.
    """
    out: list[Record] = []
    for line, row in _load_rows(config):
        if not isinstance(row, dict):
            raise DataError(config.source, line, "expected a JSON object")
        row = sources.map_fields(row, config.fields, f"{config.source}:{line}")
        record = _import_row(row, config, line, dropped)
        if record is None:
            continue
        out.append(PAIRS.check(record, config.source, line))
        if config.max_prompts is not None and len(out) >= config.max_prompts:
            break
    return out, len({json.dumps(r["prompt"], sort_keys=True) for r in out})


def _import_row(row: Record, config: PrefsConfig, line: int, dropped: Counter) -> Record | None:
    row = {k: v for k, v in row.items() if v is not None}  # a table's empty cells are absent fields
    if config.chosen_key in row or config.rejected_key in row:
        for key in (config.chosen_key, config.rejected_key):
            if key not in row:
                raise DataError(config.source, line, "missing (map it with --chosen-key/--rejected-key)", key)
        chosen, rejected = row[config.chosen_key], row[config.rejected_key]
    else:
        best_worst = _best_and_worst(row, config, line)
        if best_worst is None:
            dropped["all responses scored the same"] += 1
            return None
        chosen, rejected = best_worst
    prompt = row.get(config.prompt_key)
    prompt, chosen, rejected = split_prompt(prompt, chosen, rejected, config.source, line, config.prompt_key)
    if chosen == rejected:
        dropped["chosen equals rejected"] += 1
        return None
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "import"}
    if row.get("margin") is not None:
        record["margin"] = row["margin"]
    return record


_SCORE_KEYS = ("score", "overall_score", "rating", "reward")
_TEXT_KEYS = ("response", "text", "completion", "content")


def _best_and_worst(row: Record, config: PrefsConfig, line: int) -> tuple[Any, Any] | None:
    """(best, worst) response of a score-annotated row; None when every score ties."""
    if isinstance(row.get("responses"), list) and isinstance(row.get("scores"), list):
        scored = list(zip(row["scores"], row["responses"]))
        if len(row["scores"]) != len(row["responses"]):
            raise DataError(config.source, line, f"has {len(row['scores'])} scores for {len(row['responses'])} responses", "scores")
    elif isinstance(row.get("completions"), list):
        scored = [(_first(c, _SCORE_KEYS), _first(c, _TEXT_KEYS)) for c in row["completions"] if isinstance(c, dict)]
    else:
        raise DataError(config.source, line, f"missing: expected {config.chosen_key}/{config.rejected_key}, "
                        "responses with scores, or completions with scores (map fields with --chosen-key/--rejected-key)",
                        config.chosen_key)
    scored = [(float(s), t) for s, t in scored if isinstance(s, (int, float)) and not isinstance(s, bool) and t is not None]
    if len(scored) < 2:
        raise DataError(config.source, line, "needs at least two scored responses", "scores")
    best, worst = max(scored, key=lambda x: x[0]), min(scored, key=lambda x: x[0])
    return None if best[0] == worst[0] else (best[1], worst[1])


def _first(item: dict, keys: tuple[str, ...]) -> Any:
    return next((item[k] for k in keys if item.get(k) is not None), None)


def _load_rows(config: PrefsConfig) -> Iterator[tuple[int, Any]]:
    """Rows of the import source: JSONL, any `rlhfctl.sources` source, or a Hub name read at --split."""
    source = config.source
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "dataset_dict.json")):
        return sources.iter_rows(f"{source}@{config.split}")
    if sources.is_table(source) or os.path.exists(source) or source == "-":
        return iter_values(source)
    return sources.iter_rows(f"{sources.HUB_PREFIX}{source}@{config.split}")


def summarize(records: list[Record], prompts: int, dropped: Counter) -> dict[str, Any]:
    pairs = [r for r in records if "chosen" in r]
    binary = [r for r in records if "label" in r]
    return {
        "prompts": prompts,
        "pairs": len(pairs),
        "binary": len(binary),
        "binary_positive_fraction": (sum(r["label"] for r in binary) / len(binary)) if binary else None,
        "dropped": dict(dropped),
    }


def _unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def _reasons(dropped: Counter) -> str:
    return "; ".join(f"{plural(n, 'prompt')}: {why}" for why, n in dropped.items()) or "empty input"
