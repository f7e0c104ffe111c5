"""The toy task as a program, for the `code` grader.

The operations of an arithmetic problem become a function of a number read
from stdin::

    Write a Python program that reads an integer x and prints x+8-5.

and a solution is a fenced program that applies one operation per line,
as the math solutions do::

    ```python
    x=int(input())
    x=x+8
    x=x-5
    print(x)
    ```

It is checked by three stdin/stdout tests: the problem's own first number
and two others. Nothing in it is beyond a toy model, which has only to copy
the operations; one per line, because it learns to copy one operand at a
time sooner than a whole chain (after 700 SFT steps of toy:small, the
operators came out right in this form but not in ``print(x+58-17)``; the
operands were not yet exact in either, so pass@1 stayed near 0). The
slip taught on purpose is forgetting the ``int()``: ``x=input()`` reads a
string, so the program raises TypeError on every test, as a real model's
missing conversion would. A demonstration makes it exactly when the math
demonstration of the same problem would slip, so the math task's flags
(``slip_kind``, ``slip_rate``, ``carry_rate``) set its rate the same way
(about 0.40 of the demonstrations at the defaults).
"""

from __future__ import annotations

import random
from typing import Any

from rlhfctl.records import prompt_id
from rlhfctl.toy.task import Problem, ToyTaskConfig, apply_op, write_solution

TEST_INPUTS = 3


def render_prompt(problem: Problem) -> str:
    chain = "".join(f"{op}{b}" for op, b in problem.ops)
    return f"Write a Python program that reads an integer x and prints x{chain}.\n"


def program(problem: Problem, slip: bool = False) -> str:
    """The reference program; with `slip`, the one that forgets to convert the input."""
    read = "x=input()" if slip else "x=int(input())"
    steps = "".join(f"\nx=x{op}{b}" for op, b in problem.ops)
    return f"{read}{steps}\nprint(x)"


def solution(problem: Problem, slip: bool = False) -> str:
    return f"```python\n{program(problem, slip)}\n```"


def evaluate(problem: Problem, x: int) -> int:
    for op, b in problem.ops:
        x = apply_op(x, op, b)
    return x


def tests_for(problem: Problem, rng: random.Random) -> list[dict[str, str]]:
    """stdin/stdout tests: the problem's first number, then others in [0, 99]."""
    inputs = [problem.start]
    while len(inputs) < TEST_INPUTS:
        x = rng.randint(0, 99)
        if x not in inputs:
            inputs.append(x)
    return [{"stdin": f"{x}\n", "stdout": f"{evaluate(problem, x)}\n"} for x in inputs]


def prompt_record(problem: Problem, rng: random.Random, task: ToyTaskConfig) -> dict[str, Any]:
    """A prompts record: ``tests`` to grade by; ``answer`` holds a reference program (not graded against)."""
    prompt = render_prompt(problem)
    return {"id": prompt_id(prompt), "prompt": prompt, "answer": program(problem), "task": "code",
            "tests": tests_for(problem, rng), "meta": {"clean": solution(problem)}}


def demonstration(problem: Problem, slip_rng: random.Random, rng: random.Random, task: ToyTaskConfig) -> dict[str, Any]:
    """An SFT record: the fenced program, which forgets ``int()`` where the math demonstration slips."""
    _, slip = write_solution(problem, slip_rng, task)
    return {"prompt": render_prompt(problem), "completion": solution(problem, slip),
            "meta": {"clean": solution(problem), "slipped": slip}}
