from __future__ import annotations

from typing import Annotated, Optional

import typer

from rlhfctl.commands._options import (
    ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, ConcurrencyOpt, ConfigOpt, ExtractOpt, FieldOpt, GenBatchOpt, GpuMemoryOpt, JsonOpt,
    MaxNewTokensOpt, NOpt, PromptTemplateOpt, RMMaxLengthOpt, SeedOpt, ServedModelOpt, StopOpt, SystemOpt, TopPOpt, TpOpt,
    TrustOpt, field_map, print_summary, prompt_format, server_options,
)
from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import EngineOptions, SamplingParams


def evaluate(
    data: Annotated[Optional[str], typer.Option("--data", help="With --model: prompts with a gold `answer` (JSONL, Parquet, CSV, a datasets folder or hf:ORG/NAME). With --rm: pairs and/or binary items.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The policy to measure: a model folder or toy:SIZE.", show_default=False)] = None,
    responses: Annotated[Optional[str], typer.Option("--responses", help="Grade these responses instead of sampling: rows with a gold answer and `responses`, `response` or `completion` (rollouts, grade's output, TRL prompt-completion).", show_default=False)] = None,
    rm: Annotated[Optional[str], typer.Option("--rm", help="A reward model folder (train-rm) to measure instead of a policy.", show_default=False)] = None,
    prm: Annotated[bool, typer.Option("--prm", help="With --rm: the folder is a process reward model and --data is stepwise.")] = False,
    rm_max_length: RMMaxLengthOpt = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Write the results as JSON here; - for stdout (the summary table then goes to stderr).", show_default=False)] = None,
    n: NOpt = 1,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature; default 0 (greedy) when --n is 1, else 1.", show_default=False)] = None,
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
    extract: ExtractOpt = "strict",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Measure a policy (pass@k, maj@k) or a reward model (pair accuracy, AUC).

    With --model: pass@k and maj@k for k = 1, 2, 4, … up to --n. With
    --backend openai a server samples the policy (--base-url,
    --served-model) and --model may be left out. With --responses FILE: the
    same from responses already sampled (every prompt with the same number of
    them), no model needed.

    pass@k uses the unbiased estimator from n samples (Chen et al. 2021);
    maj@k is the expected accuracy of a majority vote over k samples. The
    JSON has top-level keys `pass@1`, `pass@2`, `maj@2`, …, `n`,
    `num_prompts`, `temperature`, `mean_tokens`, and `no_answer` (responses
    from which no answer could be extracted) with `rules` (responses per
    extraction rule).

    With --rm: `pair_accuracy` on pairs (r(chosen) > r(rejected)),
    `binary_accuracy` and `auc` on binary items, `num_pairs`, `num_binary`,
    and the reward's `reward_mean` / `reward_std` on this data. With --rm
    --prm on stepwise data: `step_accuracy` and `first_error_accuracy` (the
    first step scored wrong is the first step labelled wrong).

    Examples:

        rlhfctl eval --model runs/sft --data data/toy/test.jsonl

        rlhfctl eval --model runs/sft --data data/toy/test.jsonl --n 16 --out runs/eval.json

        rlhfctl eval --responses runs/graded.jsonl --extract flexible

        rlhfctl eval --rm runs/rm --data runs/prefs-test.jsonl

        rlhfctl eval --rm runs/prm --prm --data runs/steps-test.jsonl
    """
    server = server_options(backend, base_url=base_url, served_model=served_model, api_key_env=api_key_env,
                            concurrency=concurrency, stop=stop)
    if sum(x is not None for x in (model or server, rm, responses)) != 1:
        raise ConfigError("give exactly one of --model (a policy; or --backend openai), --rm (a reward model) "
                          "or --responses (responses to grade)")
    if responses is None and data is None:
        raise ConfigError("--data is needed with --model and --rm")
    if rm is not None:
        from rlhfctl.eval.rm_eval import RMEvalConfig, run as run_rm

        rm_config = RMEvalConfig(rm=rm, data=(data,), out=out, batch_size=batch_size, max_length=rm_max_length,
                                 trust_remote_code=trust_remote_code, prm=prm)
        print_summary(run_rm(rm_config), as_json, "eval --rm", to_stderr=out == "-")
        return
    from rlhfctl.eval.benchmark import BenchmarkConfig, run

    if temperature is None:
        temperature = 0.0 if n == 1 else 1.0
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed)
    summary = run(BenchmarkConfig(model=model, data=responses or data, params=params, out=out, backend=backend,
                                  trust_remote_code=trust_remote_code,
                                  engine=EngineOptions(tp=tp, gpu_memory_utilization=gpu_memory_utilization),
                                  extract=extract, fields=field_map(field), prompt_format=prompt_format(system, prompt_template),
                                  responses=responses is not None, server=server))
    print_summary(summary, as_json, "eval", to_stderr=out == "-")
