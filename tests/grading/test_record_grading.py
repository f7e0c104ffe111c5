import pytest

from rlhfctl.errors import DataError
from rlhfctl.grading import check_graders, grade, task_of


def test_task_of_and_grade():
    assert task_of({"answer": "5"}) == "math" and task_of({"task": "chat"}) == "chat" and task_of({}) is None
    assert grade({"answer": "5"}, ["2+3=5\nAnswer: 5", "Answer: 6", "no idea"]) == [True, False, False]
    assert grade({"prompt": "hi"}, ["x"]) is None
    assert grade({"task": "chat", "answer": "x"}, ["x"]) is None


def test_check_graders_names_the_line_and_field():
    with pytest.raises(DataError) as e:
        check_graders([{"answer": "1"}, {"task": "poetry"}], "p.jsonl")
    assert str(e.value).startswith("p.jsonl:2: field 'task': no grader for task 'poetry'")
