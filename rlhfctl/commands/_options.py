"""Option types shared by every command (docs/design.md §3b), defined once.

Also `--config FILE.yaml`: its keys are flag names (``max-steps`` or
``max_steps``); they become the command's defaults, so a flag given on the
command line wins over the file. An unknown key is an error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer

from rlhfctl.errors import ConfigError
from rlhfctl.generation.server import ServerOptions


def _load_config(ctx: click.Context, param: click.Parameter, value: Optional[Path]) -> Optional[Path]:
    if value is None:
        return value
    if not value.is_file():
        raise ConfigError(f"{value}: no such config file")
    import yaml

    try:
        data = yaml.safe_load(value.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{value}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{value}: expected a mapping of flag names to values")
    known: dict[str, str] = {}  # flag name (``--sft`` -> ``sft``) or parameter name -> parameter name
    for p in ctx.command.params:
        if p.name not in ("config", "help"):
            known[p.name] = p.name
            known.update({o.lstrip("-").replace("-", "_"): p.name for o in p.opts if o.startswith("--")})
    params = {p.name: p for p in ctx.command.params}
    defaults: dict[str, Any] = {}
    for key, val in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known:
            raise ConfigError(f"{value}: unknown key {key!r} (not a flag of '{ctx.info_name}')")
        _check_value(ctx, params[known[name]], key, val, value)
        defaults[known[name]] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _check_value(ctx: click.Context, param: click.Parameter, key: Any, val: Any, path: Path) -> None:
    """A config value of the wrong type, named with its file and key (click would name only the flag)."""
    try:
        if hasattr(param, "get_runtime_param"):  # typer >= 0.2x converts values itself
            param.get_runtime_param().coerce(val, param=param, ctx=ctx)
        else:
            param.type_cast_value(ctx, val)
    except _bad_parameter() as e:
        flag = next((o for o in param.opts if o.startswith("--")), param.name)
        raise ConfigError(f"{path}: key {key!r} ({flag}): invalid value {val!r}: {getattr(e, 'message', None) or e}") from None


def _bad_parameter() -> tuple[type[Exception], ...]:
    try:  # typer >= 0.2x raises its own copy of click's BadParameter
        from typer._click.exceptions import BadParameter
    except ImportError:
        return (click.BadParameter,)
    return (click.BadParameter, BadParameter)


ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML file of flag values (keys are flag names); flags given on the command line win.",
    is_eager=True, callback=_load_config, show_default=False,
)]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="A Hugging Face model folder or Hub id (org/name), or toy:tiny|small|base for a fresh toy model.")]
SamplerModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="The model to sample from: a Hugging Face model folder, or toy:tiny|small|base. With --backend openai it is optional and names only a local tokenizer.", show_default=False)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same result on a CPU.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in --out.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow model folders to run their own Python code.")]
EpochsOpt = Annotated[float, typer.Option("--epochs", help="Passes over the data (ignored when --max-steps is given).")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Optimiser steps; overrides --epochs.", show_default=False)]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (linear warmup, cosine decay).")]
WarmupOpt = Annotated[float, typer.Option("--warmup-ratio", help="Fraction of steps spent warming the learning rate up.")]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", help="Longest sequence in tokens; longer ones are cut.")]
RMMaxLengthOpt = Annotated[Optional[int], typer.Option(
    "--rm-max-length", help="Tokens the reward model reads of each response (default: the --max-length it was trained with); longer ones are counted in the summary and scored on their first tokens.", show_default=False)]
SaveDtypeOpt = Annotated[str, typer.Option(
    "--save-dtype", help="dtype of the saved weights: auto (the input model's; float32 for toy models), float32, bfloat16 or float16.")]
SaveEveryOpt = Annotated[int, typer.Option("--save-every", help="Write a checkpoint every this many steps.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model (TorchInductor): faster steps after a one-off compilation of tens of seconds; on a CPU it needs a C++ compiler.")]
DenseEmbeddingOpt = Annotated[bool, typer.Option(
    "--dense-embedding", help="Keep the input embedding's gradient and AdamW state for every vocabulary row. By default an untied, trainable input embedding (a reward model's; a language model's whose output head is separate) keeps them only for the token rows the data uses: the same AdamW update in less memory (one process, not with --compile).")]
Bf16Opt = Annotated[bool, typer.Option(
    "--bf16", help="bf16 mixed precision (accelerate autocast; weights and optimizer stay fp32). Works on CPUs too, slower there.")]
GradCheckpointOpt = Annotated[bool, typer.Option(
    "--gradient-checkpointing", help="Recompute activations in the backward pass: less memory, about a third more compute.")]
LoraROpt = Annotated[int, typer.Option(
    "--lora-r", help="Train LoRA adapters of this rank (needs peft) instead of every weight; 0 is off. The saved model has them merged in.")]
LoraAlphaOpt = Annotated[Optional[float], typer.Option(
    "--lora-alpha", help="LoRA scale α: the update is α/r · B·A. Default: 2 × --lora-r.", show_default=False)]
LoraDropoutOpt = Annotated[float, typer.Option("--lora-dropout", help="Dropout on the LoRA branch's input.")]
LoraTargetsOpt = Annotated[str, typer.Option(
    "--lora-target-modules", help="Comma-separated module names to adapt (e.g. q_proj,v_proj), or all-linear: every linear layer but the output heads.")]
NoPackingOpt = Annotated[bool, typer.Option(
    "--no-packing", help="Padded batches instead of packed rows (by default, sequences that share a prompt go in one row with the prompt computed once and almost no padding, on models with SDPA or eager attention).")]
NOpt = Annotated[int, typer.Option("--n", "-n", help="Responses sampled per prompt.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature; 0 is greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep the smallest token set with this much probability.")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Longest response in tokens.")]
GenBatchOpt = Annotated[int, typer.Option("--batch-size", help="Sequences generated together (prompts x n).")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", help="Generation backend: hf, vllm, openai (an OpenAI-compatible server: --base-url, --served-model), or auto (vllm where it is installed and torch sees a CUDA GPU, else hf).")]
TpOpt = Annotated[int, typer.Option("--tp", help="vLLM tensor parallelism: GPUs that hold one copy of the model (--backend vllm only).")]
GpuMemoryOpt = Annotated[float, typer.Option(
    "--gpu-memory-utilization", help="vLLM: fraction of each GPU's memory the engine may take for weights and KV cache (the hf backend ignores it).")]
BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", help="--backend openai: the server's API root, e.g. http://localhost:8000/v1.", show_default=False)]
ServedModelOpt = Annotated[Optional[str], typer.Option(
    "--served-model", help="--backend openai: the model name the server serves (what its /v1/models lists).", show_default=False)]
ApiKeyEnvOpt = Annotated[Optional[str], typer.Option(
    "--api-key-env", help="--backend openai: the environment variable that holds the API key (sent only in the Authorization header, never written).", show_default=False)]
ConcurrencyOpt = Annotated[int, typer.Option(
    "--concurrency", help="--backend openai: requests in flight at once (one request per sample).")]
StopOpt = Annotated[Optional[list[str]], typer.Option(
    "--stop", help="--backend openai: a string that ends a response (the server drops it). Repeatable.", show_default=False)]


def server_options(backend: str, base_url: str | None, served_model: str | None, api_key_env: str | None,
                   concurrency: int, stop: list[str] | None) -> ServerOptions | None:
    """The server that ``--backend openai`` samples through; None for the other backends, which refuse server flags."""
    if backend == "openai":
        if base_url is None:
            raise ConfigError("--backend openai needs --base-url: the server's API root, e.g. http://localhost:8000/v1")
        return ServerOptions(base_url=base_url, served_model=served_model or "", api_key_env=api_key_env,
                             concurrency=concurrency, stop=tuple(stop or ()))
    given = [flag for flag, value in (("--base-url", base_url), ("--served-model", served_model),
                                      ("--api-key-env", api_key_env), ("--stop", stop)) if value]
    if given:
        raise ConfigError(f"{given[0]} needs --backend openai (this run has --backend {backend})")
    return None


def require_model(backend: str, model: str | None, flag: str) -> None:
    """``flag`` (the model to sample from) may be left out only with --backend openai, where the server samples."""
    if model is None and backend != "openai":
        raise ConfigError(f"{flag} is required: only --backend openai samples without a local model")
FieldOpt = Annotated[Optional[list[str]], typer.Option(
    "--field", help="Map a column of the input to a field rlhfctl reads, FIELD=COLUMN (repeatable), e.g. --field prompt=question --field answer=answer.",
    show_default=False)]
SystemOpt = Annotated[Optional[str], typer.Option(
    "--system", help="A system message put before each prompt (a chat model's; @FILE reads it from a file). Recorded with the outputs.",
    show_default=False)]
PromptTemplateOpt = Annotated[Optional[str], typer.Option(
    "--prompt-template", help="Wording around each prompt, with {prompt} where it goes (@FILE reads it from a file), e.g. '{prompt} Put the final answer in \\boxed{}.' Recorded with the outputs.",
    show_default=False)]
ExtractOpt = Annotated[str, typer.Option(
    "--extract", help="How math answers are found: strict (a box, an Answer line, 'the answer is', ####) or flexible (also the last number).")]


def prompt_format(system: str | None, template: str | None):
    """The `data.PromptFormat` of --system and --prompt-template (``@FILE`` read)."""
    from rlhfctl.data import PromptFormat, read_text_option

    return PromptFormat(system=read_text_option(system, "--system"), template=read_text_option(template, "--prompt-template"))


def field_map(fields: list[str] | None) -> dict[str, str]:
    """The --field options as ``{field: column}``."""
    from rlhfctl.sources import parse_field_map

    return parse_field_map(fields)


def print_summary(summary: dict[str, Any], as_json: bool, title: str, to_stderr: bool = False) -> None:
    """Results to stdout: JSON with ``--json``, else a two-column table.

    ``to_stderr`` when stdout already carries the command's records (``--out -``).
    Under ``accelerate launch`` only rank 0 prints, so ``--json`` stays one document.
    """
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        (sys.stderr if to_stderr else sys.stdout).write(json.dumps(summary, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(str(key), _fmt(value))
    Console(stderr=to_stderr).print(table)


def _fmt(value: Any) -> str:
    """A summary value as a reader wants it: floats to 4 places, nested mappings as ``key: value`` lines."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) or "-"
    return str(value)
