from __future__ import annotations

from typing import Annotated, Optional

import typer

from rlhfctl.commands._options import ConfigOpt, FieldOpt, JsonOpt, SeedOpt, TrustOpt, field_map, print_summary


def build_prefs(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Rollouts JSONL (modes verified, rm), or for --mode import a JSONL file, a Hugging Face dataset name or a local dataset folder.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Prefs JSONL (pairs and binary items); - for stdout (the summary then goes to stderr).")],
    mode: Annotated[str, typer.Option("--mode", help="verified (graded rollouts), rm (ranked by --rm), or import.")] = "verified",
    max_prompts: Annotated[Optional[int], typer.Option("--max-prompts", help="Use only the first this many prompts (records for import).", show_default=False)] = None,
    pairs_per_prompt: Annotated[int, typer.Option("--pairs-per-prompt", help="Pairs drawn per prompt (verified: correct x incorrect; rm: k-th best vs k-th worst).")] = 1,
    binary_per_prompt: Annotated[int, typer.Option("--binary-per-prompt", help="Binary items (completion, label) drawn per prompt (verified mode).")] = 0,
    rm: Annotated[Optional[str], typer.Option("--rm", help="Reward model folder that ranks responses (--mode rm).", show_default=False)] = None,
    prompt_key: Annotated[str, typer.Option("--prompt-key", help="Import: the field holding the prompt.")] = "prompt",
    chosen_key: Annotated[str, typer.Option("--chosen-key", help="Import: the field holding the preferred response.")] = "chosen",
    rejected_key: Annotated[str, typer.Option("--rejected-key", help="Import: the field holding the dispreferred response.")] = "rejected",
    split: Annotated[str, typer.Option("--split", help="Import from a Hugging Face dataset: the split.")] = "train",
    seed: SeedOpt = 0,
    trust_remote_code: TrustOpt = False,
    field: FieldOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Build preference data: pairs and binary items, in TRL's formats.

    Prints a summary (prompts, pairs, binary items, label balance, dropped
    records and why) and writes it to OUT.manifest.json with the options and
    the input's sha256.

    Examples:

        rlhfctl build-prefs runs/rollouts.jsonl --out runs/prefs.jsonl --pairs-per-prompt 4 --binary-per-prompt 2

        rlhfctl build-prefs runs/rollouts.jsonl --mode rm --rm runs/rm --out runs/prefs-rm.jsonl

        rlhfctl build-prefs data/toy/prefs_style.jsonl --mode import --out runs/prefs-style.jsonl
    """
    from rlhfctl.rm.prefs import PrefsConfig, run

    summary = run(PrefsConfig(source=source, out=out, mode=mode, max_prompts=max_prompts, pairs_per_prompt=pairs_per_prompt,
                              binary_per_prompt=binary_per_prompt, seed=seed, rm=rm, prompt_key=prompt_key,
                              chosen_key=chosen_key, rejected_key=rejected_key, split=split,
                              trust_remote_code=trust_remote_code, fields=field_map(field)))
    print_summary(summary, as_json, "build-prefs", to_stderr=out == "-")
