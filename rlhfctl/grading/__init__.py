"""Answer graders, looked up by task name.

Importing this package registers the built-in graders (currently `math`).
"""

from __future__ import annotations

from rlhfctl.grading.math import MathGrader
from rlhfctl.grading.registry import Grader, get_grader, known_tasks, register

register(MathGrader())

__all__ = ["Grader", "MathGrader", "get_grader", "known_tasks", "register"]
