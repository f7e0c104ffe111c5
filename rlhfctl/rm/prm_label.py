"""`label-prm`: automatic step labels by Monte-Carlo completion (Math-Shepherd).

Math-Shepherd (Wang et al., arXiv 2312.08935): a step's quality is its
potential to reach the right answer. For each step prefix s_1..s_i of a
solution, a completer samples N continuations; with a_j their final answers
and a* the gold answer,

    hard:  y_HE = 1 if any a_j == a*            soft:  y_SE = #{a_j == a*} / N

The last step needs no sampling: the solution's own answer decides it.
Identical prefixes (solutions of one prompt often share their first steps)
are completed once, and all prefixes of a chunk of solutions go to the
generator together, so generation runs in full batches.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from rlhfctl.console import Progress
from rlhfctl.data import PromptFormat, render_prompt
from rlhfctl.errors import ConfigError, DataError
from rlhfctl.generation.backends import make_generator
from rlhfctl.generation.base import EngineOptions, SamplingParams
from rlhfctl.generation.server import ServerOptions
from rlhfctl.grading import check_graders, grade, task_of
from rlhfctl.locks import locked
from rlhfctl.models import ModelSource
from rlhfctl.records import KEYED, ROLLOUTS, STEPS, Record, read_records, write_jsonl
from rlhfctl.resumable import ResumableWriter
from rlhfctl.toy.task import step_correctness

METHODS = ("hard", "soft")
FORMATS = ("trl", "openrlhf")
OPENRLHF_STEP_TAG = " ки"  # the step placeholder of Math-Shepherd's released data


@dataclass(frozen=True)
class LabelConfig:
    rollouts: str
    completer: str | None  # optional with a server backend, where it names the tokenizer that renders chat prompts
    out: str
    params: SamplingParams  # n = completions per prefix
    method: str = "hard"
    step_sep: str = "\n"
    max_solutions_per_prompt: int | None = None
    format: str = "trl"
    backend: str = "auto"
    prompts_per_chunk: int = 8
    engine: EngineOptions = EngineOptions()
    trust_remote_code: bool = False
    fields: dict[str, str] = field(default_factory=dict)  # --field renames of the rollouts' columns
    prompt_format: PromptFormat = PromptFormat()  # --system / --prompt-template, unless the rollouts carry it
    server: ServerOptions | None = None  # --backend openai

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown --method {self.method!r}: choose hard or soft")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown --format {self.format!r}: choose trl or openrlhf")
        if self.format == "openrlhf" and self.out == "-":
            raise ConfigError("--format openrlhf writes OUT.openrlhf.jsonl beside OUT: give --out a file, not -")
        if not self.step_sep:
            raise ConfigError("--step-sep must not be empty")
        if self.max_solutions_per_prompt is not None and self.max_solutions_per_prompt < 1:
            raise ConfigError(f"--max-solutions-per-prompt must be at least 1, got {self.max_solutions_per_prompt}")


def split_steps(solution: str, sep: str = "\n") -> list[str]:
    """Non-empty steps of a solution; a solution without ``sep`` is one step."""
    steps = [s for s in solution.split(sep) if s.strip()]
    return steps or [solution]


def step_label(verdicts: list[bool], method: str) -> float | bool:
    """Hard: any completion reached the gold answer. Soft: the fraction that did."""
    if method == "hard":
        return any(verdicts)
    return sum(verdicts) / len(verdicts)


def run(config: LabelConfig) -> dict[str, Any]:
    config.check()
    rollouts = config.prompt_format.apply(read_records(config.rollouts, ROLLOUTS, fields=config.fields), config.rollouts)
    check_graders(rollouts, config.rollouts)
    usable = [r for r in rollouts if r.get("answer") is not None and task_of(r) not in (None, "chat")]
    if not usable:
        raise DataError(config.rollouts, None, "missing in every record: label-prm needs a gold answer to grade completions", "answer")
    if config.completer is None and any(not isinstance(r["prompt"], str) for r in usable):
        raise ConfigError("chat prompts are rendered to text here before the server completes them: "
                          "give --model, a model folder whose tokenizer has the served model's chat template")
    with ExitStack() as stack:  # one run per output: a second would label every solution again
        stack.enter_context(locked(config.out))
        if config.format == "openrlhf":
            stack.enter_context(locked(config.out + ".openrlhf.jsonl"))
        return _label_all(config, rollouts, usable)


def _label_all(config: LabelConfig, rollouts: list[Record], usable: list[Record]) -> dict[str, Any]:
    writer = ResumableWriter(config.out, STEPS, check=same_labelling(config))
    extra = ResumableWriter(config.out + ".openrlhf.jsonl", KEYED, check=_is_openrlhf) if config.format == "openrlhf" else None
    jobs = [(r, j, sol) for r in usable for j, sol in enumerate(_solutions(r, config.max_solutions_per_prompt))]
    todo = [job for job in jobs if f"{job[0]['id']}-{job[1]}" not in writer.done]
    stats = {"rollouts": len(rollouts), "skipped_no_answer": len(rollouts) - len(usable), "solutions": len(jobs),
             "already_done": len(jobs) - len(todo), "labelled": 0, "steps": 0, "prefixes_generated": 0, "new_tokens": 0}
    if not todo:
        return _finish(stats, config, 0.0)
    generator = make_generator(config.backend, ModelSource(config.completer, config.trust_remote_code), config.params.seed,
                               engine=config.engine, server=config.server)
    tic = time.perf_counter()
    streamed: list[Record] = []  # with --out -, the records this run wrote (there is no file to read back)
    with writer, Progress("label-prm", len(todo), 0, True) as progress:
        for chunk in _chunks_by_prompt(todo, config.prompts_per_chunk):
            for record in _label_chunk(chunk, generator, config, stats):
                writer.write(record)
                if config.out == "-":
                    streamed.append(record)
                if extra is not None:
                    extra.write(openrlhf_record(record))
                stats["labelled"] += 1
                stats["steps"] += len(record["labels"])
                progress.advance()
    if extra is not None:
        extra.close()
    return _finish(stats, config, time.perf_counter() - tic, streamed)


def same_labelling(config: LabelConfig):
    """A check for `ResumableWriter`: a steps record labelled with another --method or --n-completions."""
    flags = {"method": ("--method", config.method), "n_completions": ("--n-completions", config.params.n)}

    def check(record: Record) -> str | None:
        for key, (flag, value) in flags.items():
            if key not in record:
                return f"field '{key}': missing, so not a file that label-prm wrote"
            if record[key] != value:
                return f"labelled with {flag} {record[key]}, this run has {flag} {value} (rerun with the same settings to resume)"
        return None

    return check


def _is_openrlhf(record: Record) -> str | None:
    return None if "input" in record and "value" in record else "not an OpenRLHF step record (no 'input' and 'value')"


def _solutions(r: Record, limit: int | None) -> list[str]:
    unique = list(dict.fromkeys(r["responses"]))
    return unique[:limit] if limit else unique


def _chunks_by_prompt(todo: list[tuple], prompts_per_chunk: int):
    chunk, prompts = [], []
    for job in todo:
        if job[0]["id"] not in prompts and len(prompts) == prompts_per_chunk:
            yield chunk
            chunk, prompts = [], []
        if job[0]["id"] not in prompts:
            prompts.append(job[0]["id"])
        chunk.append(job)
    if chunk:
        yield chunk


def _label_chunk(chunk: list[tuple], generator, config: LabelConfig, stats: dict[str, Any]) -> list[Record]:
    """Label every solution of the chunk; each distinct prefix is completed once."""
    sep = config.step_sep
    prefixes: dict[tuple[str, str], None] = {}
    plans = []
    for r, j, solution in chunk:
        steps = split_steps(solution, sep)
        head = render_prompt(r["prompt"], generator.tokenizer)
        keys = [(r["id"], head + sep.join(steps[:i]) + sep) for i in range(1, len(steps))]
        prefixes.update(dict.fromkeys(keys))
        plans.append((r, j, solution, steps, keys))
    keys = list(prefixes)
    samples = generator.generate([text for _, text in keys], config.params, keys=[f"{pid}:{text}" for pid, text in keys])
    record_of = {r["id"]: r for r, *_ in plans}
    verdicts = {}
    for (pid, text), group in zip(keys, samples):
        prefix_steps = text[len(render_prompt(record_of[pid]["prompt"], generator.tokenizer)):]
        verdicts[(pid, text)] = grade(record_of[pid], [prefix_steps + s.text for s in group])
        stats["new_tokens"] += sum(s.num_tokens for s in group)
    stats["prefixes_generated"] += len(keys)
    out = []
    for r, j, solution, steps, step_keys in plans:
        labels = [step_label(verdicts[k], config.method) for k in step_keys]
        final = bool(grade(r, [solution])[0])
        labels.append(final if config.method == "hard" else float(final))
        out.append(_steps_record(r, j, steps, labels, config))
    return out


def _steps_record(r: Record, j: int, steps: list[str], labels: list, config: LabelConfig) -> Record:
    record = {"id": f"{r['id']}-{j}", "prompt": r["prompt"], "completions": steps, "labels": labels,
              "answer": r["answer"], "method": config.method, "n_completions": config.params.n}
    truth = _true_labels(r["prompt"], steps)
    if truth is not None:
        record["meta"] = {"true_labels": truth}
    return record


def _true_labels(prompt: Any, steps: list[str]) -> list[bool] | None:
    """Exact step correctness where it is known (the toy task); else None."""
    if not isinstance(prompt, str):
        return None

    return step_correctness(prompt, steps)


def openrlhf_record(record: Record) -> Record:
    """OpenRLHF's PRM form: one text with a step tag after each step, labels as +/-."""
    prompt = record["prompt"] if isinstance(record["prompt"], str) else "\n".join(m["content"] for m in record["prompt"])
    text = prompt + "".join(step + OPENRLHF_STEP_TAG + "\n" for step in record["completions"])
    labels = ["+" if (lab if isinstance(lab, bool) else lab >= 0.5) else "-" for lab in record["labels"]]
    return {"id": record["id"], "input": text, "value": labels}


def _finish(stats: dict[str, Any], config: LabelConfig, seconds: float, streamed: list[Record] | None = None) -> dict[str, Any]:
    stats["tokens_per_s"] = stats["new_tokens"] / seconds if seconds else 0.0
    stats["out"] = config.out
    if config.out == "-":
        records = streamed or []
    else:
        records = read_records(config.out, STEPS, allow_empty=True) if stats["solutions"] else []
    if config.format == "openrlhf":  # rebuilt from the steps file: a kill between the two appends leaves no gap or twin
        write_jsonl(config.out + ".openrlhf.jsonl", [openrlhf_record(r) for r in records])
    agreement = label_agreement(records) if records else None
    if agreement:
        stats["truth"] = agreement
    return stats


def label_agreement(records: list[Record]) -> dict[str, float] | None:
    """How Monte-Carlo labels compare with the true step correctness (toy task).

    ``step_agreement``: fraction of steps where (label ≥ ½) equals the truth.
    First wrong step: the first step labelled wrong is a prediction of the
    first truly wrong step; precision is the share of predicted first errors
    that are exactly right, recall the share of true first errors found.
    """
    with_truth = [r for r in records if r.get("meta", {}).get("true_labels") is not None]
    if not with_truth:
        return None
    agree = total = hits = predicted = actual = 0
    for r in with_truth:
        pred = [(lab >= 0.5) if not isinstance(lab, bool) else lab for lab in r["labels"]]
        true = r["meta"]["true_labels"]
        agree += sum(p == t for p, t in zip(pred, true))
        total += len(true)
        p_first = next((i for i, ok in enumerate(pred) if not ok), None)
        t_first = next((i for i, ok in enumerate(true) if not ok), None)
        predicted += p_first is not None
        actual += t_first is not None
        hits += p_first is not None and p_first == t_first
    return {"step_agreement": agree / total, "first_error_precision": hits / predicted if predicted else 1.0,
            "first_error_recall": hits / actual if actual else 1.0, "solutions_with_truth": len(with_truth)}

