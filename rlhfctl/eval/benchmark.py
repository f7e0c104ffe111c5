"""`eval --model` / `eval --responses`: benchmark accuracy of a policy (pass@k, maj@k).

With a model, n responses per prompt are sampled and graded; with
``--responses``, responses that came from anywhere (a rollout file, `grade`'s
output, another server's samples, TRL's prompt-completion rows) are graded
without sampling. Rows that repeat a prompt pool their responses.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rlhfctl.data import PromptFormat
from rlhfctl.errors import DataError
from rlhfctl.eval.grade import as_rollout
from rlhfctl.eval.passk import summarize
from rlhfctl.generation.backends import make_generator
from rlhfctl.generation.base import EngineOptions, SamplingParams
from rlhfctl.generation.server import ServerOptions
from rlhfctl.grading import check_graders, explain, get_grader, gold_field, task_of
from rlhfctl.models import ModelSource
from rlhfctl.records import PROMPTS, RESPONSES, Record, check_out_file, read_records, write_json


@dataclass(frozen=True)
class BenchmarkConfig:
    model: str | None  # optional with a server backend
    data: str
    params: SamplingParams = SamplingParams()
    out: str | None = None
    backend: str = "auto"
    trust_remote_code: bool = False
    engine: EngineOptions = EngineOptions()
    extract: str = "strict"  # the graders' extraction mode (grading.math)
    fields: dict[str, str] = field(default_factory=dict)  # --field renames
    prompt_format: PromptFormat = PromptFormat()
    responses: bool = False  # `data` holds responses to grade: no model, no sampling
    server: ServerOptions | None = None  # --backend openai


def run(config: BenchmarkConfig) -> dict[str, Any]:
    """Sample (or read) n responses per prompt, grade them, and summarise.

    Returns ``{"pass@1": …, "pass@2": …, "maj@2": …, "n", "num_prompts", …}``
    with k over the powers of two up to n (pass@k unbiased, Chen et al. 2021;
    maj@k the expected majority-vote accuracy over k-subsets), plus
    ``no_answer`` (responses from which no answer could be extracted) and
    ``rules`` (responses per extraction rule).
    """
    check_out_file(config.out)
    records = read_records(config.data, RESPONSES if config.responses else PROMPTS, fields=config.fields)
    if config.responses:
        records, responses = _pooled(records, config.data)
        extra: dict[str, Any] = {"responses": config.data}
    else:
        records = config.prompt_format.apply(records, config.data)
        _check_gold(records, config.data)
        check_graders(records, config.data)
        responses, extra = _sample(records, config)
    graded = [explain(r, texts, config.extract) for r, texts in zip(records, responses)]
    groups = [([get_grader(task_of(r), config.extract).extract(t) for t in texts], g["correct"])
              for r, texts, g in zip(records, responses, graded)]
    summary = summarize(groups)
    rules = Counter(rule or "none" for g in graded for rule in g["extract_rule"])
    summary.update({"no_answer": rules.pop("none", 0), "rules": dict(sorted(rules.items())), "extract": config.extract,
                    **extra, "data": config.data})
    if config.out:
        write_json(config.out, {**summary, "options": asdict(config.params), **config.prompt_format.public()})
    return summary


def _check_gold(records: list[Record], path: str) -> None:
    for i, r in enumerate(records):
        gold = gold_field(task_of(r))
        if r.get(gold) is None or task_of(r) in (None, "chat"):
            raise DataError(path, i + 1, f"missing: eval needs {'tests' if gold == 'tests' else 'a gold answer'} for every prompt", gold)


def _sample(records: list[Record], config: BenchmarkConfig) -> tuple[list[list[str]], dict[str, Any]]:
    generator = make_generator(config.backend, ModelSource(config.model, config.trust_remote_code), config.params.seed, config.engine,
                               server=config.server)
    samples = generator.generate([generator.render(r["prompt"]) for r in records], config.params, keys=[r["id"] for r in records])
    mean_tokens = sum(s.num_tokens for g in samples for s in g) / sum(len(g) for g in samples)
    meta = {"temperature": config.params.temperature, "model": config.model, "mean_tokens": mean_tokens}
    if generator.name == "openai":
        meta["generator"] = {"backend": "openai", **config.server.public()}
    return [[s.text for s in g] for g in samples], meta


def _pooled(rows: list[Record], path: str) -> tuple[list[Record], list[list[str]]]:
    """One record per prompt with the responses of every row that asks it; the same count for each."""
    by_prompt: dict[str, tuple[Record, list[str], int]] = {}
    for line, row in enumerate(rows, start=1):
        record = as_rollout(row, line, path)
        key = json.dumps(record["prompt"], sort_keys=True)
        _, texts, _ = by_prompt.setdefault(key, (record, [], line))
        texts.extend(record["responses"])
    records = [r for r, _, _ in by_prompt.values()]
    check_graders(records, path)
    groups = list(by_prompt.values())
    for _, texts, line in groups:
        if len(texts) != len(groups[0][1]):
            raise DataError(path, line, f"every prompt needs the same number of responses for pass@k: this prompt has "
                            f"{len(texts)}, the first has {len(groups[0][1])}", "responses")
    return records, [texts for _, texts, _ in by_prompt.values()]
