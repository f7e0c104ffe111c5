"""`eval --model`: benchmark accuracy of a policy (pass@k, maj@k)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rlhfctl.errors import DataError
from rlhfctl.eval.passk import summarize
from rlhfctl.generation.backends import make_generator
from rlhfctl.generation.base import EngineOptions, SamplingParams
from rlhfctl.generation.server import ServerOptions
from rlhfctl.grading import check_graders, get_grader, gold_field, grade, task_of
from rlhfctl.records import PROMPTS, check_out_file, read_records, write_json


@dataclass(frozen=True)
class BenchmarkConfig:
    model: str | None  # optional with a server backend
    data: str
    params: SamplingParams
    out: str | None = None
    backend: str = "auto"
    trust_remote_code: bool = False
    engine: EngineOptions = EngineOptions()
    server: ServerOptions | None = None  # --backend openai


def run(config: BenchmarkConfig) -> dict[str, Any]:
    """Sample n responses per prompt, grade them, and summarise.

    Returns ``{"pass@1": …, "pass@2": …, "maj@2": …, "n", "num_prompts", …}``
    with k over the powers of two up to n (pass@k unbiased, Chen et al. 2021;
    maj@k the expected majority-vote accuracy over k-subsets).
    """
    check_out_file(config.out)
    records = read_records(config.data, PROMPTS)
    for i, r in enumerate(records):
        gold = gold_field(task_of(r))
        if r.get(gold) is None or task_of(r) in (None, "chat"):
            raise DataError(config.data, i + 1, f"missing: eval needs {'tests' if gold == 'tests' else 'a gold answer'} for every prompt", gold)
    check_graders(records, config.data)
    generator = make_generator(config.backend, config.model, config.params.seed, config.trust_remote_code, config.engine,
                               server=config.server)
    samples = generator.generate([generator.render(r["prompt"]) for r in records], config.params, keys=[r["id"] for r in records])
    groups = []
    for record, group in zip(records, samples):
        responses = [s.text for s in group]
        grader = get_grader(task_of(record))
        groups.append(([grader.extract(t) for t in responses], grade(record, responses)))
    summary = summarize(groups)
    if generator.name == "openai":
        summary["generator"] = {"backend": "openai", **config.server.public()}
    summary.update({"temperature": config.params.temperature, "model": config.model, "data": config.data,
                    "mean_tokens": sum(s.num_tokens for g in samples for s in g) / sum(len(g) for g in samples)})
    if config.out:
        write_json(config.out, {**summary, "options": asdict(config.params)})
    return summary
