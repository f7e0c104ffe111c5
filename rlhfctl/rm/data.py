"""Preference data for reward models: pairs and binary items, tokenised.

A prefs file may mix the two record kinds of docs/design.md §3, one per line:
pairs (``prompt``, ``chosen``, ``rejected``, optional ``margin``) and binary
items (``prompt``, ``completion``, ``label``). A pair without a prompt is
TRL's implicit-prompt form: the prompt is what chosen and rejected share at
the start (`split_prompt`). Anything else is an error that names the line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rlhfctl.data import encode_conversations, encode_prompt, render_prompt
from rlhfctl.errors import DataError
from rlhfctl.records import BINARY, PAIRS, STEPS, Record, iter_values, prompt_id

PAIR, BINARY_ITEM = "pair", "binary"


@dataclass
class PrefData:
    pairs: list[Record] = field(default_factory=list)
    binary: list[Record] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.pairs) + len(self.binary)


def record_kind(record: Any) -> str | None:
    if isinstance(record, dict) and "chosen" in record and "rejected" in record:
        return PAIR
    if isinstance(record, dict) and "completion" in record and "label" in record:
        return BINARY_ITEM
    return None


def read_preferences(paths: list[str] | tuple[str, ...]) -> PrefData:
    """All pairs and binary items of the files; pairs with chosen == rejected are dropped and counted
    (a file of nothing else is an error)."""
    data = PrefData()
    for path in paths:
        count = identical = 0
        for lineno, value in iter_values(path):
            kind = record_kind(value)
            if kind is None:
                raise DataError(path, lineno, "unknown record kind: expected a pair (prompt, chosen, rejected) "
                                "or a binary item (prompt, completion, label)")
            if kind == PAIR and value.get("prompt") is None:  # TRL's implicit prompt: the shared beginning
                prompt, chosen, rejected = split_prompt(None, value["chosen"], value["rejected"], path, lineno, "prompt")
                value = {**value, "prompt": prompt, "chosen": chosen, "rejected": rejected}
            record = (PAIRS if kind == PAIR else BINARY).check(value, path, lineno)
            count += 1
            if kind == PAIR and record["chosen"] == record["rejected"]:
                data.dropped["chosen equals rejected"] = data.dropped.get("chosen equals rejected", 0) + 1
                identical += 1
                continue
            (data.pairs if kind == PAIR else data.binary).append(record)
        if count == 0:
            raise DataError(path, None, "no records (expected pairs or binary items, one JSON object per line)")
        if identical == count:
            raise DataError(path, None, f"all {count} pairs have chosen equal to rejected: no preference to learn or measure")
    return data


def split_prompt(prompt: Any, chosen: Any, rejected: Any, source: str, line: int, key: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) with the prompt's turns cut from conversations that repeat them.

    Without a prompt (TRL's implicit-prompt format) the prompt is the shared
    beginning: leading messages both conversations share, or for strings
    their common prefix, ending before a space (TRL's rule).
    """
    if isinstance(chosen, list) and isinstance(rejected, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if prompt is None or (shared and chosen[:shared] in ([{"role": "user", "content": prompt}], prompt)):
            if shared == 0:
                raise DataError(source, line, "missing: the conversations share no prompt turns", key)
            return chosen[:shared], chosen[shared:], rejected[shared:]
        return prompt, chosen, rejected
    if prompt is not None:
        return prompt, chosen, rejected
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise DataError(source, line, "missing (map it with --prompt-key)", key)
    idx = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    if idx > 0 and chosen[idx - 1] == " ":
        idx -= 1
    if idx == 0:
        raise DataError(source, line, "missing: chosen and rejected share no prompt text", key)
    return chosen[:idx], chosen[idx:], rejected[idx:]


def split_by_prompt(data: PrefData, fraction: float, seed: int) -> tuple[PrefData, PrefData]:
    """(train, held-out): a seeded ``fraction`` of distinct prompts goes to held-out.

    Splitting by prompt, not by record, keeps held-out prompts unseen in training.
    """
    held = held_out_prompts(data.pairs + data.binary, fraction, seed)
    train, test = PrefData(dropped=dict(data.dropped)), PrefData()
    for r in data.pairs:
        (test if prompt_id(r["prompt"]) in held else train).pairs.append(r)
    for r in data.binary:
        (test if prompt_id(r["prompt"]) in held else train).binary.append(r)
    return train, test


def held_out_prompts(records: list[Record], fraction: float, seed: int) -> set[str]:
    """Ids of a seeded ``fraction`` of the distinct prompts of ``records``."""
    keys = sorted({prompt_id(r["prompt"]) for r in records})
    random.Random(seed).shuffle(keys)
    return set(keys[: int(round(fraction * len(keys)))])


@dataclass(frozen=True)
class Item:
    """One training record, tokenised: a pair (2 sequences) or a binary item (1)."""

    kind: str
    seqs: tuple[list[int], ...]
    margin: float = 0.0
    label: bool = False

    @property
    def length(self) -> int:
        return max(len(s) for s in self.seqs)


def encode_items(data: PrefData, tokenizer: Any, max_length: int) -> tuple[list[Item], int]:
    """(items, overlong): pairs first, then binary items, each response as `data.encode_conversations`
    renders it for a reward model; ``overlong`` counts sequences cut to ``max_length``."""
    texts = [(r["prompt"], r[k]) for r in data.pairs for k in ("chosen", "rejected")]
    texts += [(r["prompt"], r["completion"]) for r in data.binary]
    encoded = encode_conversations(tokenizer, texts, max_length, tokenizer.pad_token_id)
    ids = iter(encoded.seqs)
    items = [Item(PAIR, (next(ids), next(ids)), float(r.get("margin") or 0.0)) for r in data.pairs]
    items += [Item(BINARY_ITEM, (next(ids),), label=bool(r["label"])) for r in data.binary]
    return items, encoded.overlong


# --- stepwise data (process reward model) ----------------------------------------

@dataclass(frozen=True)
class StepItem:
    """One stepwise solution, tokenised: scores are read at ``positions``."""

    ids: list[int]
    positions: list[int]  # index of the last token of each step
    labels: list[float]  # one per position, in [0, 1]

    @property
    def length(self) -> int:
        return len(self.ids)


def read_steps(paths: list[str] | tuple[str, ...]) -> list[Record]:
    """Stepwise records (TRL's format); labels and completions must pair up."""
    out = []
    for path in paths:
        count = 0
        for lineno, value in iter_values(path):
            record = STEPS.check(value, path, lineno)
            if len(record["labels"]) != len(record["completions"]):
                raise DataError(path, lineno, f"has {len(record['labels'])} labels for {len(record['completions'])} completions (steps)", "labels")
            out.append(record)
            count += 1
        if count == 0:
            raise DataError(path, None, "no records (expected stepwise records: prompt, completions, labels)")
    return out


def encode_steps(tokenizer: Any, prompt: Any, steps: list[str], max_length: int, sep: str = "\n") -> tuple[list[int], list[int]]:
    """(ids, score positions) of prompt + step_1 + sep + step_2 + sep + … + step_S + sep.

    Each step is followed by the separator and its score is read at the
    separator's last token, as TRL's PRMTrainer lays out stepwise data (and
    Math-Shepherd reads a tag after each step): the value there has seen the
    whole step. Steps are tokenised one by one, so positions are exact;
    steps that do not fit in ``max_length`` are dropped.
    """
    ids = encode_prompt(tokenizer, render_prompt(prompt, tokenizer))
    sep_ids = tokenizer(sep, add_special_tokens=False)["input_ids"]
    positions: list[int] = []
    for step in steps:
        step_ids = tokenizer(step, add_special_tokens=False)["input_ids"] + sep_ids
        if not step_ids or len(ids) + len(step_ids) > max_length:
            break
        ids = ids + step_ids
        positions.append(len(ids) - 1)
    return ids, positions


def encode_step_items(records: list[Record], tokenizer: Any, max_length: int, sep: str = "\n") -> list[StepItem]:
    items = []
    for r in records:
        ids, positions = encode_steps(tokenizer, r["prompt"], r["completions"], max_length, sep)
        if positions:
            items.append(StepItem(ids, positions, [float(x) for x in r["labels"][: len(positions)]]))
    return items


def split_steps_by_prompt(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    held = held_out_prompts(records, fraction, seed)
    return ([r for r in records if prompt_id(r["prompt"]) not in held], [r for r in records if prompt_id(r["prompt"]) in held])
