from __future__ import annotations

from typing import Annotated

import typer

from rlhfctl.commands._options import ConfigOpt, ExtractOpt, FieldOpt, JsonOpt, field_map, print_summary


def grade(
    responses: Annotated[str, typer.Argument(metavar="RESPONSES", help="Rows with a prompt, a gold `answer` (or code `tests`) and `responses`, `response` or `completion`: JSONL (- for stdin), Parquet, CSV/TSV, a datasets folder, or hf:ORG/NAME\\[:CONFIG]\\[@SPLIT].")],
    out: Annotated[str, typer.Option("--out", "-o", help="Graded rollouts JSONL; rerunning with the same file resumes. - for stdout.")],
    extract: ExtractOpt = "strict",
    field: FieldOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Grade responses from anywhere: another server, an API, a previous run.

    Each output line is the input row with `responses` (a list), `correct`,
    `extracted` (the answer found in each response) and `extract_rule` (the
    rule that found it), the shape `rollout` writes, so best-of-n, build-prefs,
    label-prm and `eval --responses` read it. TRL's prompt-completion rows and
    single `response` rows become one-response records. Lines are appended as
    they are graded: rerun after a crash and only the rest is graded. The
    summary counts responses per extraction rule and those with no answer.

    Examples:

        rlhfctl grade samples.jsonl --out graded.jsonl

        rlhfctl grade answers.parquet --field prompt=question --field response=model_output --out graded.jsonl --extract flexible
    """
    from rlhfctl.eval.grade import GradeConfig, run

    summary = run(GradeConfig(responses=responses, out=out, extract=extract, fields=field_map(field)))
    print_summary(summary, as_json, "grade", to_stderr=out == "-")
