from __future__ import annotations

from typing import Annotated

import typer

from rlhfctl.commands._options import ConfigOpt, JsonOpt, print_summary


def report(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUTS", help="Training run folders (train-policy, train-sft, train-rm), best-of-n JSON and eval JSON files, in any mix.",
        show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for report.md and the PNG figures; an earlier report there is replaced.")],
    smooth: Annotated[int, typer.Option("--smooth", help="Moving-average window (steps) drawn over per-step curves; 1 draws the raw values only.")] = 10,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Plot and tabulate training runs, best-of-n and eval results side by side.

    Policy runs: reward (raw mean), KL, response length and eval pass@1
    against step, every run overlaid (policy.png, a 2x2 grid, and one
    policy-<quantity>.png each). SFT and reward-model runs: loss curves, and
    accuracy where logged. Best-of-n files: accuracy against N on a log2
    axis. report.md holds a table of key numbers per kind of input, the
    settings that differ between runs of the same command (equal ones are
    left out) and the figures. Runs are named by folder or file stem, with
    the parent folder added where two names clash. --json prints the key
    numbers of every input.

    A run folder needs rlhfctl.json or metrics.jsonl; a torn last line of
    metrics.jsonl (a killed run) is skipped.

    Examples:

        rlhfctl report runs/grpo runs/ppo --out runs/report

        rlhfctl report runs/grpo runs/ppo runs/sft runs/rm runs/bon.json runs/eval.json --out runs/report --json

        rlhfctl report sweep/n4/grpo sweep/n8/grpo --out sweep/report --smooth 1
    """
    from rlhfctl.report.build import ReportConfig, run

    summary = run(ReportConfig(inputs=tuple(inputs), out=out, smooth=smooth))
    if as_json:
        print_summary(summary, True, "report")
        return
    print_summary({"report": summary["report"], "figures": len(summary["figures"]),
                   "inputs": ", ".join(r["name"] for r in summary["runs"])}, False, "report")
