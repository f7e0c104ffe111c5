"""The toy task as multiple choice, for the `mcq` grader.

The arithmetic problem with four lettered options::

    Compute 23+8-5.
    (A) 16
    (B) 26
    (C) 36
    (D) 27

A solution works the steps as in the math task (`rlhfctl.toy.task`) and
closes with the letter of the value it reached, ``Answer: B``. The wrong
options are the values that carry or borrow slips lead to (±10, ±20) and an
off-by-one; a demonstration that slips finds its value among the options
(it is put there), so the math task's controlled slips carry over: an SFT
policy picks the slipped value's letter by choice.
"""

from __future__ import annotations

import random
from typing import Any

from rlhfctl.records import prompt_id
from rlhfctl.toy.task import Problem, ToyTaskConfig, write_solution

LETTERS = "ABCD"
_DISTRACTOR_OFFSETS = (-10, 10, -20, 20, -1, 1)


def choices_for(problem: Problem, rng: random.Random, must_include: int | None = None) -> list[int]:
    """Four distinct non-negative options in random order: the answer, `must_include`, near misses."""
    truth = problem.answer
    picked = [must_include] if must_include is not None and must_include != truth else []
    near = [v for v in (truth + d for d in _DISTRACTOR_OFFSETS) if v >= 0 and v not in picked]
    options = [truth, *picked, *rng.sample(near, len(LETTERS) - 1 - len(picked))]
    rng.shuffle(options)
    return options


def render_prompt(problem: Problem, options: list[int]) -> str:
    return problem.prompt + "".join(f"({letter}) {value}\n" for letter, value in zip(LETTERS, options))


def _with_letter(solution: str, options: list[int]) -> str:
    """The math solution with its ``Answer: 64`` line turned into the option's letter."""
    steps, answer_line = solution.rsplit("\n", 1)
    value = int(answer_line.removeprefix("Answer: "))
    return f"{steps}\nAnswer: {LETTERS[options.index(value)]}"


def prompt_record(problem: Problem, rng: random.Random, task: ToyTaskConfig) -> dict[str, Any]:
    """A prompts record: gold letter in ``answer``, option texts in ``choices``, clean solution in ``meta``."""
    options = choices_for(problem, rng)
    prompt = render_prompt(problem, options)
    clean = _with_letter(write_solution(problem, None, task)[0], options)
    return {"id": prompt_id(prompt), "prompt": prompt, "answer": LETTERS[options.index(problem.answer)], "task": "mcq",
            "choices": [str(v) for v in options], "meta": {"clean": clean}}


def demonstration(problem: Problem, slip_rng: random.Random, rng: random.Random, task: ToyTaskConfig) -> dict[str, Any]:
    """An SFT record whose solution may slip (as in the math task) and then picks the slipped value."""
    text, slipped = write_solution(problem, slip_rng, task)
    reached = int(text.rsplit("Answer: ", 1)[1])
    options = choices_for(problem, rng, must_include=reached)
    clean = _with_letter(write_solution(problem, None, task)[0], options)
    return {"prompt": render_prompt(problem, options), "completion": _with_letter(text, options),
            "meta": {"clean": clean, "slipped": slipped}}
