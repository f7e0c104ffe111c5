from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rlhfctl.commands._options import ConfigOpt, JsonOpt, SeedOpt, print_summary


def demo(
    workdir: Annotated[str, typer.Option("--workdir", "-w", help="Folder for every artifact of the demo; rerunning with the same folder resumes.")] = "runs/demo",
    full: Annotated[bool, typer.Option("--full", help="Larger budgets: 2,000 training prompts, 500 test prompts, 60 policy updates of 32 prompts (about 20 minutes on a 2-core CPU; the default pass over every stage takes about 7).")] = False,
    sft_steps: Annotated[int | None, typer.Option("--sft-steps", help="Override the budget: train-sft steps.", show_default=False)] = None,
    policy_steps: Annotated[int | None, typer.Option("--policy-steps", help="Override the budget: PPO and GRPO updates each.", show_default=False)] = None,
    train_prompts: Annotated[int | None, typer.Option("--train-prompts", help="Override the budget: training prompts (RM rollouts and RL).", show_default=False)] = None,
    test_prompts: Annotated[int | None, typer.Option("--test-prompts", help="Override the budget: held-out test prompts.", show_default=False)] = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The whole pipeline on the toy task, one stage after another, on a CPU.

    toy-data → train-sft → eval → rollout → build-prefs → train-rm →
    label-prm → train-rm --prm → rollout → best-of-n (ORM, PRM, votes) →
    train-policy PPO and GRPO → eval → report. Each stage is a plain rlhfctl
    command, printed before it runs so you can rerun it by hand. Rerunning
    the demo skips finished stages and resumes a cut-off one. At the end: SFT
    pass@1, Best-of-16 with ORM and PRM, PPO and GRPO pass@1, RM accuracy;
    figures in WORKDIR/report.

    Examples:

        rlhfctl demo

        rlhfctl demo --workdir runs/demo-full --full

        rlhfctl demo --workdir runs/demo-mini --sft-steps 20 --policy-steps 2 --train-prompts 16 --test-prompts 16
    """
    from dataclasses import replace

    from rlhfctl import demo as pipeline

    budget = pipeline.FULL if full else pipeline.DEFAULT
    overrides = {"sft_steps": sft_steps, "policy_steps": policy_steps, "train_prompts": train_prompts, "test_prompts": test_prompts}
    budget = replace(budget, **{k: v for k, v in overrides.items() if v is not None})
    pipeline.check_budget(budget)
    result = pipeline.run(Path(workdir), budget, seed, echo=lambda line: print(line, file=sys.stderr, flush=True))
    print_summary({**result.table, "workdir": workdir, "report": str(Path(workdir) / "report" / "report.md")}, as_json, "rlhfctl demo")
