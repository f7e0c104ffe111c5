from __future__ import annotations

from typing import Annotated, Optional

import typer

from rlhfctl.commands._options import (
    ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, ConcurrencyOpt, ConfigOpt, FieldOpt, GenBatchOpt, GpuMemoryOpt, JsonOpt, MaxNewTokensOpt,
    PromptTemplateOpt, SeedOpt, ServedModelOpt, StopOpt, SystemOpt, TemperatureOpt, TopPOpt, TpOpt, TrustOpt, field_map,
    print_summary, prompt_format, require_model, server_options,
)
from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import EngineOptions, SamplingParams


def label_prm(
    rollouts: Annotated[str, typer.Argument(metavar="ROLLOUTS", help="Rollouts (rollout's or grade's output) whose prompts carry a gold `answer`: JSONL, Parquet, CSV, a datasets folder or hf:ORG/NAME.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Stepwise JSONL (prompt, completions, labels); rerunning resumes. - for stdout (the summary then goes to stderr).")],
    completer: Annotated[Optional[str], typer.Option("--model", "--completer", "-m", help="The model that completes each step prefix (usually the SFT policy). With --backend openai it names only the tokenizer that renders chat prompts.", show_default=False)] = None,
    n_completions: Annotated[int, typer.Option("--n-completions", help="Continuations sampled per step prefix (N).")] = 8,
    method: Annotated[str, typer.Option("--method", help="hard (any continuation right) or soft (the fraction right).")] = "hard",
    step_sep: Annotated[str, typer.Option("--step-sep", help="What separates steps in a solution (a blank line: $'\\n\\n'); default: a newline.", show_default=False)] = "\n",
    max_solutions_per_prompt: Annotated[Optional[int], typer.Option("--max-solutions-per-prompt", help="Label at most this many distinct responses per prompt.", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help="trl (stepwise records), or openrlhf: also OUT.openrlhf.jsonl with step tags and +/- labels.")] = "trl",
    temperature: TemperatureOpt = 1.0,
    top_p: TopPOpt = 1.0,
    max_new_tokens: MaxNewTokensOpt = 128,
    batch_size: GenBatchOpt = 64,
    seed: SeedOpt = 0,
    backend: BackendOpt = "auto",
    tp: TpOpt = 1,
    gpu_memory_utilization: GpuMemoryOpt = 0.9,
    base_url: BaseUrlOpt = None,
    served_model: ServedModelOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    stop: StopOpt = None,
    trust_remote_code: TrustOpt = False,
    field: FieldOpt = None,
    system: SystemOpt = None,
    prompt_template: PromptTemplateOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Label every step of every solution by Monte-Carlo completion (Math-Shepherd).

    For each step prefix, the completer samples --n-completions
    continuations; their final answers are graded against the gold answer.
    hard: a step is good if any continuation reaches the answer; soft: the
    fraction that does. The last step is labelled by the solution's own
    answer. Identical prefixes are completed once. On the toy task each record
    also carries the true step correctness (`meta.true_labels`) and the
    summary reports how well the labels agree with it.

    With --backend openai a server completes the prefixes, sent as text to
    /v1/completions; chat prompts are rendered with the tokenizer of
    --model, which string prompts do not need.

    Examples:

        rlhfctl label-prm runs/rollouts.jsonl --model runs/sft --out runs/steps.jsonl

        rlhfctl label-prm runs/rollouts.jsonl --model runs/sft --out runs/steps-soft.jsonl --method soft --n-completions 4 --max-solutions-per-prompt 2
    """
    from rlhfctl.rm.prm_label import LabelConfig, run

    require_model(backend, completer, "--model")
    server = server_options(backend, base_url=base_url, served_model=served_model, api_key_env=api_key_env,
                            concurrency=concurrency, stop=stop)
    if n_completions < 1:
        raise ConfigError(f"--n-completions must be at least 1, got {n_completions}")
    params = SamplingParams(n=n_completions, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed)
    summary = run(LabelConfig(rollouts=rollouts, completer=completer, out=out, params=params, method=method, step_sep=step_sep,
                              max_solutions_per_prompt=max_solutions_per_prompt, format=format, backend=backend,
                              engine=EngineOptions(tp=tp, gpu_memory_utilization=gpu_memory_utilization),
                              trust_remote_code=trust_remote_code, fields=field_map(field),
                              prompt_format=prompt_format(system, prompt_template), server=server))
    print_summary(summary, as_json, "label-prm", to_stderr=out == "-")
