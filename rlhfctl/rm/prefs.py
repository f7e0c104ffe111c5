"""`build-prefs`: preference data from rollouts, from a reward model, or imported.

Three modes, one output format (TRL's: pairs ``prompt/chosen/rejected`` and
binary items ``prompt/completion/label``, mixed in one JSONL):

- ``verified``: rollouts that carry ``correct`` give pairs (a correct vs an
  incorrect response to the same prompt) and binary items;
- ``rm``: responses ranked by a reward model give pairs (k-th best vs k-th
  worst);
- ``import``: pairs from a JSONL file or a Hugging Face dataset, mapped by key.

The paper's data-scaling knobs (prompts, pairs per prompt, binary items per
prompt) are options; every drop is counted and reported.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from rlhfctl.artifacts import describe_inputs, make_manifest
from rlhfctl.errors import ConfigError, DataError
from rlhfctl.records import ROLLOUTS, Record, check_out_file, read_records, write_json, write_jsonl

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
        rollouts = read_records(config.source, ROLLOUTS)
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
    from rlhfctl.rm.scorers import score_rollouts

    scores = score_rollouts(rollouts, config.rm)
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
    """Pairs from a JSONL file or a Hugging Face dataset (name or local folder)."""
    rows = _load_rows(config)
    out: list[Record] = []
    for line, row in enumerate(rows, start=1):
        for key in (config.prompt_key, config.chosen_key, config.rejected_key):
            if key not in row:
                raise DataError(config.source, line, "missing (map it with --prompt-key/--chosen-key/--rejected-key)", key)
        chosen, rejected = row[config.chosen_key], row[config.rejected_key]
        if chosen == rejected:
            dropped["chosen equals rejected"] += 1
            continue
        record = {"prompt": row[config.prompt_key], "chosen": chosen, "rejected": rejected, "source": "import"}
        if row.get("margin") is not None:
            record["margin"] = row["margin"]
        out.append(record)
        if config.max_prompts is not None and len(out) >= config.max_prompts:
            break
    from rlhfctl.records import PAIRS

    checked = [PAIRS.check(r, config.source, i + 1) for i, r in enumerate(out)]
    return checked, len({str(r["prompt"]) for r in checked})


def _load_rows(config: PrefsConfig) -> list[dict[str, Any]]:
    import os

    from rlhfctl.records import iter_json_lines

    if os.path.isfile(config.source):
        rows = []
        for line, value in iter_json_lines(config.source):
            if not isinstance(value, dict):
                raise DataError(config.source, line, "expected a JSON object")
            rows.append(value)
        return rows
    from datasets import load_dataset, load_from_disk

    try:
        if os.path.isdir(config.source) and os.path.exists(os.path.join(config.source, "dataset_info.json")):
            ds = load_from_disk(config.source)
            ds = ds[config.split] if hasattr(ds, "keys") else ds
        else:
            ds = load_dataset(config.source, split=config.split)
    except Exception as e:  # datasets raises many types for "not found"
        raise DataError(config.source, None, f"cannot load as a file or dataset: {str(e).splitlines()[0]}") from None
    return [dict(row) for row in ds]


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
    return "; ".join(f"{n} prompts: {why}" for why, n in dropped.items()) or "empty input"
