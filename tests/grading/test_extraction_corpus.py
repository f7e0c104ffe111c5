"""The graders against a corpus of hand-written real-style responses (tests/grading/extraction_corpus.py)."""

import pytest

from rlhfctl.grading import get_grader
from tests.grading.extraction_corpus import FLEXIBLE, MATH, MCQ


def _math_cases():
    for entry in MATH:
        mode, entry = (FLEXIBLE, entry[1:]) if entry[0] == FLEXIBLE else ("strict", entry)
        yield pytest.param(mode, *entry, id=f"{mode}:{entry[0][:40]!r}")


@pytest.mark.parametrize("mode, response, gold, rule, correct", list(_math_cases()))
def test_math_corpus(mode, response, gold, rule, correct):
    grader = get_grader("math", extract=mode)
    found = grader.find(response)
    assert (found and found.rule) == rule, found
    assert grader.is_correct(response, {"answer": gold}) is correct


@pytest.mark.parametrize("response, gold, rule, correct", MCQ, ids=[m[0][:40] for m in MCQ])
def test_mcq_corpus(response, gold, rule, correct):
    grader = get_grader("mcq")
    found = grader.find(response)
    assert (found and found.rule) == rule, found
    assert grader.is_correct(response, {"answer": gold, "choices": ["1", "2", "3", "4"]}) is correct


def test_corpus_is_large_and_covers_every_rule():
    assert len(MATH) + len(MCQ) >= 100
    math_rules = {e[-2] for e in MATH}
    assert math_rules == {"boxed", "answer_line", "answer_is", "gsm8k", "last_number", None}
    assert {e[2] for e in MCQ} == {"boxed", "answer_is", "paren", "letter_paren", "last_letter", None}
