"""`rollout`: sample n responses per prompt, grade them, append them to a file.

The output is appended one prompt at a time and flushed, so a killed run
resumes from the prompts already on disk: no id is lost or written twice.
A lock beside the output (`locks`) keeps a second run off the same file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rlhfctl.console import Progress, log, plural
from rlhfctl.data import PromptFormat, render_prompt
from rlhfctl.errors import ConfigError
from rlhfctl.generation.backends import make_generator, resolve_backend
from rlhfctl.generation.base import EngineOptions, SamplingParams
from rlhfctl.generation.server import ServerOptions
from rlhfctl.grading import check_graders, explain
from rlhfctl.locks import locked
from rlhfctl.models import ModelSource
from rlhfctl.records import PROMPTS, ROLLOUTS, Record, read_records
from rlhfctl.resumable import ResumableWriter


@dataclass(frozen=True)
class RolloutConfig:
    prompts: str
    model: str | None  # optional with a server backend, where it only names a tokenizer
    out: str
    params: SamplingParams
    backend: str = "auto"
    trust_remote_code: bool = False
    engine: EngineOptions = EngineOptions()
    extract: str = "strict"  # the graders' extraction mode (grading.math)
    fields: dict[str, str] = field(default_factory=dict)  # --field: column -> field renames of the prompts
    prompt_format: PromptFormat = PromptFormat()
    server: ServerOptions | None = None  # --backend openai


# the settings a rollout's samples depend on (its `generator` block), and the flag of each
SETTING_FLAGS = {"model": "--model", "backend": "--backend", "served_model": "--served-model", "stop": "--stop",
                 "n": "--n", "temperature": "--temperature", "top_p": "--top-p", "max_new_tokens": "--max-new-tokens",
                 "seed": "--seed", "extract": "--extract", "system": "--system", "prompt_template": "--prompt-template"}
SETTING_DEFAULTS = {"extract": "strict"}  # what a file written before a setting existed was made with


def generator_meta(config: RolloutConfig, backend: str) -> dict[str, Any]:
    """The `generator` block of each record: what made its samples (a server's URL and model, never its key).
    --batch-size and --concurrency change none of them."""
    server = config.server.public() if backend == "openai" and config.server is not None else {}
    meta = {"model": config.model, "backend": backend, **server, **asdict(config.params), "extract": config.extract,
            **config.prompt_format.public()}
    del meta["batch_size"]
    meta.pop("concurrency", None)
    return meta


def same_settings(meta: dict[str, Any]):
    """A check for `ResumableWriter`: the first setting in which a record's `generator` block differs from ``meta``."""

    def check(record: Record) -> str | None:
        old = record.get("generator")
        if not isinstance(old, dict):
            return "field 'generator': missing, so not a file that rollout wrote"
        for key, flag in SETTING_FLAGS.items():
            if old.get(key, SETTING_DEFAULTS.get(key)) != meta.get(key):
                return f"written with {flag} {old.get(key)}, this run has {flag} {meta.get(key)} (rerun with the same settings to resume)"
        return None

    return check


def run(config: RolloutConfig) -> dict[str, Any]:
    records = config.prompt_format.apply(read_records(config.prompts, PROMPTS, fields=config.fields), config.prompts)
    check_graders(records, config.prompts)
    backend = resolve_backend(config.backend, config.engine)
    meta = generator_meta(config, backend)
    with locked(config.out):  # a second run on this file would write every prompt again
        writer = ResumableWriter(config.out, ROLLOUTS, check=same_settings(meta))
        todo = [r for r in records if r["id"] not in writer.done]
        summary: dict[str, Any] = {"prompts": len(records), "already_done": len(records) - len(todo), "generated": 0,
                                   "skipped_too_long": 0, "new_tokens": 0, "tokens_per_s": 0.0, "out": config.out}
        if not todo:
            return summary
        generator = make_generator(backend, ModelSource(config.model, config.trust_remote_code), config.params.seed, config.engine,
                                   server=config.server)
        todo = _skip_too_long(todo, generator, config.params.max_new_tokens, summary)
        with writer:
            _generate(todo, generator, config.params, meta, writer, summary)
    return summary


def _generate(todo: list[Record], generator, params: SamplingParams, meta: dict[str, Any], writer: ResumableWriter,
              summary: dict[str, Any]) -> None:
    per_batch = max(1, params.batch_size // params.n)
    correct = total = 0
    tic = time.perf_counter()
    with Progress("rollout", len(todo), 0, True) as progress:
        for start in range(0, len(todo), per_batch):
            chunk = todo[start:start + per_batch]
            prompts = [generator.render(r["prompt"]) for r in chunk]
            samples = generator.generate(prompts, params, keys=[r["id"] for r in chunk])
            for record, group in zip(chunk, samples):
                out = _rollout_record(record, group, meta)
                writer.write(out)
                summary["generated"] += 1
                summary["new_tokens"] += sum(out["num_tokens"])
                if "correct" in out:
                    correct, total = correct + sum(out["correct"]), total + len(out["correct"])
                progress.advance()
    summary["tokens_per_s"] = summary["new_tokens"] / max(1e-9, time.perf_counter() - tic)
    if total:
        summary["accuracy"] = correct / total


def _skip_too_long(todo: list[Record], generator, max_new_tokens: int, summary: dict[str, Any]) -> list[Record]:
    """The prompts that fit the model's context with room for --max-new-tokens; the others are counted and
    reported on stderr (a prompt of megabytes would otherwise take the machine's memory). A server backend
    without a local tokenizer (no --model) cannot count tokens: its server refuses a prompt that is too long."""
    if generator.tokenizer is None:
        return todo
    context = context_length(generator)
    if context is None:
        return todo
    limit = context - max_new_tokens
    if limit < 1:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context ({context} tokens)")
    kept = [r for r in todo if not too_long(render_prompt(r["prompt"], generator.tokenizer), generator.tokenizer, limit)]
    summary["skipped_too_long"] = len(todo) - len(kept)
    if len(kept) < len(todo):
        log(f"skipped {plural(len(todo) - len(kept), 'prompt')} longer than the model's context ({limit} tokens: {context} "
            f"less --max-new-tokens {max_new_tokens})")
    return kept


def context_length(generator) -> int | None:
    """The most tokens the model attends to (prompt and response together), or None when it names no limit:
    its config's max_position_embeddings, a vLLM engine's max_model_len, the tokenizer's model_max_length
    (unless that is transformers' stand-in for "none", 1e30), whichever is smallest."""
    config = getattr(getattr(generator, "model", None), "config", None)
    engine_config = getattr(getattr(getattr(generator, "llm", None), "llm_engine", None), "model_config", None)
    sizes = [getattr(config, "max_position_embeddings", None), getattr(engine_config, "max_model_len", None),
             getattr(generator.tokenizer, "model_max_length", None)]
    sizes = [s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and 0 < s < 10**9]
    return min(sizes, default=None)


TOKENS_SLACK = 64  # tokens a prefix may gain over the whole text by cutting its last word in pieces


def too_long(text: str, tokenizer, limit: int) -> bool:
    """Whether ``text`` is more than ``limit`` tokens, without tokenising all of a huge one.

    A prefix of (limit+1)*8 characters is tokenised first: past ``limit`` by more than what cutting a
    word can add (`TOKENS_SLACK`), the whole text is too; within ``limit``, the prefix grows fourfold
    until it is the whole text or decides. Text of under 8 characters a token needs no second look.
    """
    size = (limit + 1) * 8
    while True:
        count = len(tokenizer(text[:size], add_special_tokens=True)["input_ids"])
        if size >= len(text):
            return count > limit
        if count > limit + TOKENS_SLACK:
            return True
        size *= 4


def _rollout_record(record: Record, group, meta: dict[str, Any]) -> Record:
    responses = [s.text for s in group]
    out = {**record, "responses": responses, "num_tokens": [s.num_tokens for s in group],
           "finish_reasons": [s.finish_reason for s in group], "generator": meta}
    verdicts = explain(record, responses, meta["extract"])
    if verdicts is not None:
        out.update(verdicts)
    return out
