from __future__ import annotations

from typing import Annotated

import typer

from rlhfctl.commands._options import (
    ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, ConcurrencyOpt, ConfigOpt, ExtractOpt, FieldOpt, GenBatchOpt, GpuMemoryOpt, JsonOpt,
    MaxNewTokensOpt, NOpt, PromptTemplateOpt, SamplerModelOpt, SeedOpt, ServedModelOpt, StopOpt, SystemOpt, TemperatureOpt,
    TopPOpt, TpOpt, TrustOpt, field_map, print_summary, prompt_format, require_model, server_options,
)
from rlhfctl.generation.base import EngineOptions, SamplingParams


def rollout(
    prompts: Annotated[str, typer.Argument(metavar="PROMPTS", help="Prompts ({prompt, id?, answer?, task?}): JSONL (- for stdin), Parquet, CSV/TSV, a datasets folder, or hf:ORG/NAME\\[:CONFIG]\\[@SPLIT].")],
    out: Annotated[str, typer.Option("--out", "-o", help="Rollouts JSONL; rerunning with the same file resumes. - for stdout.")],
    model: SamplerModelOpt = None,
    n: NOpt = 4,
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
    extract: ExtractOpt = "strict",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Sample --n responses per prompt; grade them when prompts carry an answer.

    One line per prompt: its fields plus `responses`, `num_tokens`,
    `finish_reasons`, `generator`, and, when the prompt has an `answer`,
    `correct` (one bool per response), `extracted` (the answer found) and
    `extract_rule` (the rule that found it). Lines are appended as they finish: rerun the
    same command after a crash and only the missing prompts are sampled. A file
    made with other settings, or held by a running rollout, is refused; prompts
    longer than the model's context are skipped and counted.

    With --backend openai an OpenAI-compatible server (vllm serve,
    transformers serve, ...) samples: one request per response, --concurrency
    at a time; --model is then optional and only names the tokenizer that
    finds prompts too long for the context.

    Examples:

        rlhfctl rollout data/toy/train.jsonl --model runs/sft --out runs/rollouts.jsonl --n 8

        rlhfctl rollout data/toy/test.jsonl --model toy:tiny --out - --n 2 --max-new-tokens 16

        rlhfctl rollout data/toy/train.jsonl --model runs/sft --out runs/rollouts.jsonl --n 8 --backend vllm --tp 2

        rlhfctl rollout data/toy/train.jsonl --backend openai --base-url http://localhost:8000/v1 --served-model Qwen/Qwen2.5-0.5B-Instruct --out runs/rollouts.jsonl --n 8

        rlhfctl rollout gsm8k.parquet --field prompt=question --model Qwen/Qwen2.5-0.5B-Instruct --out runs/gsm.jsonl --prompt-template '{prompt} Put the final answer in \\boxed{}.'

    """
    from rlhfctl.generation.rollout import RolloutConfig, run

    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed)
    require_model(backend, model, "--model")
    server = server_options(backend, base_url=base_url, served_model=served_model, api_key_env=api_key_env,
                            concurrency=concurrency, stop=stop)
    engine = EngineOptions(tp=tp, gpu_memory_utilization=gpu_memory_utilization)
    summary = run(RolloutConfig(prompts=prompts, model=model, out=out, params=params, backend=backend,
                                trust_remote_code=trust_remote_code, engine=engine, extract=extract, fields=field_map(field),
                                prompt_format=prompt_format(system, prompt_template), server=server))
    print_summary(summary, as_json, "rollout", to_stderr=out == "-")
