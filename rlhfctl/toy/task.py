"""Multi-step arithmetic with controlled slips (docs/design.md §6).

A problem is a chain of additions and subtractions, ``Compute 23+8-5.``,
solved one operation per line and closed by ``Answer: X``::

    23+8=31
    31-5=26
    Answer: 26

The task is small enough for a toy model to learn fully. Its mistakes are
taught on purpose: in the SFT demonstrations, where an addition needs a carry
in the units column (with ``slip_kind="carry"``: also where a subtraction
needs a borrow), the demonstration forgets it with probability ``slip_rate``
and the later steps continue from the slipped value.
A model trained on them makes the same slip by choice, not by incapacity, so
reward models, Best-of-N and RL have something to fix, and the true
correctness of every step stays known (`step_correctness`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# carry: a needed carry (addition, result 10 too low) or borrow (subtraction,
#   10 too high) is forgotten; a later slip can cancel an earlier one, so a
#   wrong path can still end at the right answer.
# carry-add (the default): only carries in additions are forgotten; slips
#   never cancel, so a solution that slipped once cannot reach the answer, and
#   an outcome reward says exactly whether the policy slipped.
SLIP_KINDS = ("carry", "carry-add", "none")
STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)\s*$")
PROMPT_RE = re.compile(r"Compute (\d+(?:[+-]\d+)+)\.")


@dataclass(frozen=True)
class ToyTaskConfig:
    """How problems are drawn. Every default is a `toy-data` flag."""

    min_ops: int = 2
    max_ops: int = 4
    max_value: int = 99  # running values stay in [0, max_value]
    max_operand: int = 9  # one-digit operands: toy:small learns the clean task fully
    carry_rate: float = 0.35  # chance that an operation needs a carry/borrow
    slip_kind: str = "carry-add"
    slip_rate: float = 0.7  # chance that a demonstration forgets a needed carry


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (("+", 58), ("-", 17))

    @property
    def prompt(self) -> str:
        chain = str(self.start) + "".join(f"{op}{b}" for op, b in self.ops)
        return f"Compute {chain}.\n"

    @property
    def answer(self) -> int:
        return solve(self)[-1]


def needs_carry(a: int, op: str, b: int) -> bool:
    """Whether the units column of ``a op b`` carries (+) or borrows (-)."""
    if op == "+":
        return a % 10 + b % 10 >= 10
    return a % 10 < b % 10


def can_slip(a: int, op: str, b: int, slip_kind: str) -> bool:
    """Whether a demonstration of ``a op b`` may make the slip of ``slip_kind``."""
    if slip_kind == "carry-add":
        return op == "+" and needs_carry(a, op, b)
    return slip_kind == "carry" and needs_carry(a, op, b)


def apply_op(a: int, op: str, b: int, slip: bool = False) -> int:
    """``a op b``; with ``slip`` the units-column carry or borrow is forgotten."""
    if op == "+":
        return a + b - (10 if slip else 0)
    return a - b + (10 if slip else 0)


def solve(problem: Problem) -> list[int]:
    """The clean running values after each operation."""
    values, a = [], problem.start
    for op, b in problem.ops:
        a = apply_op(a, op, b)
        values.append(a)
    return values


def draw_problem(rng: random.Random, cfg: ToyTaskConfig) -> Problem:
    """A random problem whose running values stay within [0, max_value]."""
    start = rng.randint(10, 99)
    a, ops = start, []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        op = rng.choice("+-")
        if op == "+" and a + cfg.max_operand > cfg.max_value:
            op = "-"
        if op == "-" and a < 10:
            op = "+"
        b = _draw_operand(rng, a, op, rng.random() < cfg.carry_rate, cfg)
        ops.append((op, b))
        a = apply_op(a, op, b)
    return Problem(start, tuple(ops))


def _draw_operand(rng: random.Random, a: int, op: str, carry: bool, cfg: ToyTaskConfig) -> int:
    hi = cfg.max_operand if op == "+" else min(cfg.max_operand, a)
    candidates = [b for b in range(2, hi + 1) if needs_carry(a, op, b) == carry]
    if not candidates:  # e.g. no b makes a units digit of 0 carry: take any operand
        candidates = list(range(2, hi + 1))
    return rng.choice(candidates)


def write_solution(problem: Problem, rng: random.Random | None, cfg: ToyTaskConfig) -> tuple[str, bool]:
    """A demonstration: clean, or with slips when ``rng`` is given.

    Returns (text, slipped). Steps after a slip continue from the slipped value,
    so every later line is arithmetically right but the answer is wrong.
    """
    lines, a, slipped = [], problem.start, False
    for op, b in problem.ops:
        slip = rng is not None and can_slip(a, op, b, cfg.slip_kind) and rng.random() < cfg.slip_rate
        c = apply_op(a, op, b, slip)
        lines.append(f"{a}{op}{b}={c}")
        a, slipped = c, slipped or slip
    lines.append(f"Answer: {a}")
    return "\n".join(lines), slipped


def parse_prompt(prompt: str) -> Problem | None:
    """The problem behind a toy prompt, or None if it is not one."""
    m = PROMPT_RE.search(prompt)
    if not m:
        return None
    tokens = re.findall(r"[+-]?\d+", m.group(1))
    start = int(tokens[0])
    ops = tuple((t[0], int(t[1:])) for t in tokens[1:])
    return Problem(start, ops)


def step_correctness(prompt: str, steps: list[str]) -> list[bool] | None:
    """True correctness of each step of a solution (Math-Shepherd's sense).

    Step i is correct when it and every step before it follow the clean
    solution: the right operation on the right running value with the right
    result. The final ``Answer:`` line is correct when it states the true
    answer and all steps before it are correct. None for a non-toy prompt.
    """
    problem = parse_prompt(prompt)
    if problem is None:
        return None
    truth, ok, out = solve(problem), True, []
    for i, step in enumerate(steps):
        m = STEP_RE.match(step)
        if i < len(problem.ops) and m:
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            expected_a = problem.start if i == 0 else truth[i - 1]
            ok = ok and (a, op, b, c) == (expected_a, *problem.ops[i], truth[i])
        elif i == len(problem.ops) and step.strip().startswith("Answer:"):
            ok = ok and step.strip() == f"Answer: {truth[-1]}"
        else:
            ok = False
        out.append(ok)
    return out
