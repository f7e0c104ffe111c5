"""Answer graders, looked up by task name.

Importing this package registers the built-in graders: `math`, `mcq` and
`code` (programs run against tests in `sandbox`). `records` grades a prompt
record by its task.
"""

from __future__ import annotations

from rlhfctl.grading.code import CodeGrader
from rlhfctl.grading.math import MathGrader
from rlhfctl.grading.mcq import MCQGrader
from rlhfctl.grading.records import check_graders, explain, gold_field, grade, task_of
from rlhfctl.grading.registry import Grader, get_grader, known_tasks, register

register(MathGrader())
register(MCQGrader())
register(CodeGrader())

__all__ = ["CodeGrader", "Grader", "MathGrader", "MCQGrader", "check_graders", "explain", "get_grader", "gold_field", "grade",
           "known_tasks", "register", "task_of"]
