from __future__ import annotations

from typing import Annotated, Optional

import typer

from rlhfctl.commands._options import (
    ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, ConcurrencyOpt, ConfigOpt, FieldOpt, GenBatchOpt, GpuMemoryOpt, JsonOpt,
    MaxNewTokensOpt, PromptTemplateOpt, RMMaxLengthOpt, SeedOpt, ServedModelOpt, StopOpt, SystemOpt, TemperatureOpt, TopPOpt,
    TpOpt, TrustOpt, field_map, prompt_format, server_options,
)
from rlhfctl.console import plural
from rlhfctl.generation.base import EngineOptions, SamplingParams


def best_of_n(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Graded rollouts JSONL; or, with --policy, prompts JSONL to sample from.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Result JSON: {n, curves: {scorer: \\[accuracy per N]}, num_prompts}; default SOURCE-stem.bon.json beside SOURCE. Scores are cached in OUT.scores.json; - writes the JSON to stdout and keeps no score cache (nor, with --policy, the samples).", show_default=False)] = None,
    rm: Annotated[Optional[str], typer.Option("--rm", help="Select by this reward model (train-rm folder).", show_default=False)] = None,
    prm: Annotated[Optional[str], typer.Option("--prm", help="Select by this process reward model (train-rm --prm folder).", show_default=False)] = None,
    rm_max_length: RMMaxLengthOpt = None,
    agg: Annotated[Optional[list[str]], typer.Option("--agg", help="How a PRM's step scores make one score: min (default), last, prod, mean. Repeatable.", show_default=False)] = None,
    vote: Annotated[Optional[list[str]], typer.Option("--vote", help="Voting curves: majority, weighted (σ(reward)-weighted, needs --rm). Repeatable.", show_default=False)] = None,
    logprob: Annotated[Optional[str], typer.Option("--logprob", help="Select by mean token log-probability under this model.", show_default=False)] = None,
    oracle: Annotated[bool, typer.Option("--oracle/--no-oracle", help="Include the oracle curve (pass@N, the ceiling).")] = True,
    n: Annotated[Optional[int], typer.Option("--n", "-n", help="N_max: use at most this many samples per prompt (with --policy: sample this many).", show_default=False)] = None,
    picks: Annotated[Optional[str], typer.Option("--picks", help="Write the top-scored response per prompt here (prompt/completion JSONL, ready for SFT).", show_default=False)] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Draw every curve on one PNG figure.", show_default=False)] = None,
    policy: Annotated[Optional[str], typer.Option("--model", "--policy", "-m", help="Sample the N responses from this model first (SOURCE is then a prompts file). With --backend openai the server samples and this only names a tokenizer.", show_default=False)] = None,
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
    """Best-of-N accuracy for N = 1, 2, 4, … N_max from one set of samples per prompt.

    Each point is the exact expectation over random N-subsets of the N_max
    samples (ties in score shared fairly). Curves: `oracle` (pass@N),
    `rm`, `prm-min` (one per --agg), `logprob`, `majority`, `weighted`. Scores are kept in
    OUT.scores.json, so rerunning with another scorer or --plot never
    re-scores; with --policy the samples are kept in OUT-stem.rollouts.jsonl
    and reused by a rerun. With --backend openai (--base-url, --served-model) a
    server samples them instead, and SOURCE is a prompts file.

    Examples:

        rlhfctl best-of-n runs/rollouts-test.jsonl --rm runs/rm --vote majority --vote weighted --out runs/bon.json --plot runs/bon.png

        rlhfctl best-of-n runs/rollouts-test.jsonl --rm runs/rm --prm runs/prm --agg min --agg prod --out runs/bon-prm.json

        rlhfctl best-of-n data/toy/test.jsonl --policy runs/sft --n 16 --logprob runs/sft --out runs/bon-lp.json
    """
    from rlhfctl.eval.best_of_n_sweep import BoNConfig, default_out, run

    out = out or default_out(source)

    server = server_options(backend, base_url=base_url, served_model=served_model, api_key_env=api_key_env,
                            concurrency=concurrency, stop=stop)
    params = SamplingParams(n=n or 16, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed)
    result = run(BoNConfig(source=source, out=out, rm=rm, prm=prm, aggs=tuple(agg or ("min",)), votes=tuple(vote or ()),
                           logprob=logprob, oracle=oracle, n=n, picks=picks, plot=plot, policy=policy, params=params,
                           backend=backend, engine=EngineOptions(tp=tp, gpu_memory_utilization=gpu_memory_utilization),
                           rm_max_length=rm_max_length, trust_remote_code=trust_remote_code, fields=field_map(field),
                           prompt_format=prompt_format(system, prompt_template), server=server))
    if as_json and out != "-":  # with --out -, stdout holds the result already
        import json
        import sys

        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif not as_json:
        _print_table(result, to_stderr=out == "-")


def _print_table(result, to_stderr: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"best-of-n ({plural(result['num_prompts'], 'prompt')})")
    table.add_column("N", justify="right")
    for name in result["curves"]:
        table.add_column(name, justify="right")
    for i, n in enumerate(result["n"]):
        table.add_row(str(n), *(f"{ys[i]:.4f}" for ys in result["curves"].values()))
    Console(stderr=to_stderr).print(table)
