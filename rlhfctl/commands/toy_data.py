from __future__ import annotations

from typing import Annotated

import typer

from rlhfctl.commands._options import ConfigOpt, JsonOpt, SeedOpt, print_summary


def toy_data(
    out_dir: Annotated[str, typer.Argument(metavar="OUT_DIR", help="Folder for sft.jsonl, train.jsonl, test.jsonl, prefs_style.jsonl and toy.json (--task mcq/code: mcq_*/code_* files).")],
    seed: SeedOpt = 0,
    kind: Annotated[str, typer.Option("--task", help="Form of the problems, one per grader: math (steps, `Answer: 64`), mcq (four lettered options, `Answer: B`; writes mcq_sft/train/test.jsonl) or code (a program reading x from stdin, graded by stdin/stdout tests in the sandbox; writes code_sft/train/test.jsonl).")] = "math",
    n_sft: Annotated[int, typer.Option("--sft", help="SFT demonstrations (prompt, completion); 64000 is 1000 steps of train-sft at its defaults.")] = 64000,
    n_train: Annotated[int, typer.Option("--train", help="Training prompts with answers (for rollout / RL).")] = 2000,
    n_test: Annotated[int, typer.Option("--test", help="Held-out test prompts with answers.")] = 500,
    n_style: Annotated[int, typer.Option("--style-pairs", help="Style preference pairs (every step shown > steps skipped; both correct).")] = 1000,
    min_ops: Annotated[int, typer.Option("--min-ops", help="Fewest operations (solution steps) per problem.")] = 2,
    max_ops: Annotated[int, typer.Option("--max-ops", help="Most operations per problem.")] = 4,
    max_value: Annotated[int, typer.Option("--max-value", help="Running values stay in [0, max-value].")] = 99,
    max_operand: Annotated[int, typer.Option("--max-operand", help="Largest number added or subtracted (9: one-digit operands, which toy:small learns fully).")] = 9,
    carry_rate: Annotated[float, typer.Option("--carry-rate", help="Chance that an operation needs a units-column carry or borrow.")] = 0.35,
    slip_kind: Annotated[str, typer.Option("--slip-kind", help="Slip taught in the SFT demonstrations: carry-add (a carry in an addition is forgotten; slips never cancel), carry (a needed carry or borrow is forgotten; a later slip can cancel an earlier one), or none.")] = "carry-add",
    slip_rate: Annotated[float, typer.Option("--slip-rate", help="Chance that a demonstration makes the slip where it can (--task code: the program forgets int() on its input where the math demonstration would slip).")] = 0.7,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Write the built-in toy task: multi-step arithmetic with controlled slips.

    Each problem (`Compute 23+8-5.`) is solved one operation per line and
    closed by `Answer: X`. SFT demonstrations forget a needed units-column
    carry with probability --slip-rate and continue from the slipped value,
    so an SFT policy makes that slip by choice and later stages have
    something to fix (toy:small learns the clean task fully: greedy pass@1
    0.998 after train-sft's default 1000 steps on --slip-kind none). Every
    record keeps the clean solution in `meta.clean`; test problems never
    appear in the SFT or train files.

    prefs_style.jsonl holds a second kind of preference, not about
    correctness: a solution that shows every step is preferred over a correct
    one that skips them (for the unified reward model, `train-rm`).

    --task mcq and --task code write the same problems for the other two
    graders, as mcq_*.jsonl and code_*.jsonl (and mcq_toy.json, code_toy.json),
    so all three forms can live in one folder: multiple choice with the
    slipped values among the options, or a program
    (`x=int(input())`, then `x=x+8` one operation per line, `print(x)`)
    checked by stdin/stdout `tests`.

    Examples:

        rlhfctl toy-data data/toy

        rlhfctl toy-data data/toy --seed 1 --sft 5000 --test 200 --slip-rate 0.5

        rlhfctl toy-data data/toy --task code --sft 0 --train 0 --test 50
    """
    from rlhfctl.toy.data import ToyDataConfig, run
    from rlhfctl.toy.task import ToyTaskConfig

    task = ToyTaskConfig(min_ops=min_ops, max_ops=max_ops, max_value=max_value, max_operand=max_operand, carry_rate=carry_rate, slip_kind=slip_kind, slip_rate=slip_rate)
    summary = run(ToyDataConfig(out_dir=out_dir, task=task, n_sft=n_sft, n_train=n_train, n_test=n_test, n_style=n_style,
                                seed=seed, kind=kind))
    print_summary(summary, as_json, "toy-data")
