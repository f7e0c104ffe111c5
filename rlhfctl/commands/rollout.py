from __future__ import annotations

from typing import Annotated

import typer

from rlhfctl.commands._options import (
    BackendOpt, ConfigOpt, GenBatchOpt, GpuMemoryOpt, JsonOpt, MaxNewTokensOpt, ModelOpt, NOpt, SeedOpt, TemperatureOpt,
    TopPOpt, TpOpt, TrustOpt, print_summary,
)
from rlhfctl.generation.base import EngineOptions, SamplingParams


def rollout(
    prompts: Annotated[str, typer.Argument(help="Prompts JSONL ({prompt, id?, answer?, task?}); - for stdin.")],
    model: ModelOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Rollouts JSONL; rerunning with the same file resumes. - for stdout.")],
    n: NOpt = 4,
    temperature: TemperatureOpt = 1.0,
    top_p: TopPOpt = 1.0,
    max_new_tokens: MaxNewTokensOpt = 128,
    batch_size: GenBatchOpt = 64,
    seed: SeedOpt = 0,
    backend: BackendOpt = "auto",
    tp: TpOpt = 1,
    gpu_memory_utilization: GpuMemoryOpt = 0.9,
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Sample --n responses per prompt; grade them when prompts carry an answer.

    One line per prompt: its fields plus `responses`, `num_tokens`,
    `finish_reasons`, `generator`, and `correct` (one bool per response) when
    the prompt has an `answer`. Lines are appended as they finish: rerun the
    same command after a crash and only the missing prompts are sampled. A file
    made with other settings, or held by a running rollout, is refused; prompts
    longer than the model's context are skipped and counted.

    Examples:

        rlhfctl rollout data/toy/train.jsonl --model runs/sft --out runs/rollouts.jsonl --n 8

        rlhfctl rollout data/toy/test.jsonl --model toy:tiny --out - --n 2 --max-new-tokens 16

        rlhfctl rollout data/toy/train.jsonl --model runs/sft --out runs/rollouts.jsonl --n 8 --backend vllm --tp 2
    """
    from rlhfctl.generation.rollout import RolloutConfig, run

    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed)
    engine = EngineOptions(tp, gpu_memory_utilization)
    summary = run(RolloutConfig(prompts, model, out, params, backend, trust_remote_code, engine))
    print_summary(summary, as_json, "rollout", to_stderr=out == "-")
