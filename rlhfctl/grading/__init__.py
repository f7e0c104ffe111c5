"""Answer graders, looked up by task name.

Importing this package registers the built-in graders: `math` and `mcq`.
"""

from __future__ import annotations

from rlhfctl.grading.math import MathGrader
from rlhfctl.grading.mcq import MCQGrader
from rlhfctl.grading.registry import Grader, get_grader, known_tasks, register

register(MathGrader())
register(MCQGrader())

__all__ = ["Grader", "MathGrader", "MCQGrader", "get_grader", "known_tasks", "register"]
