from fractions import Fraction

import pytest

from rlhfctl.errors import ConfigError, DataError
from rlhfctl.grading import MathGrader, get_grader, known_tasks
from rlhfctl.grading.math import extract_answer, last_boxed, parse_number

GRADER = get_grader("math")


def test_registry():
    assert isinstance(GRADER, MathGrader)
    assert GRADER.name == "math"
    assert known_tasks() == ["code", "math", "mcq"]
    with pytest.raises(ConfigError, match="known graders: code, math, mcq"):
        get_grader("poetry")


@pytest.mark.parametrize(
    "response,expected",
    [
        ("Some work.\nAnswer: 42", "42"),
        ("answer:  17.  \n", "17"),
        ("ANSWER: x + 1.", "x + 1"),
        ("**Answer:** 9", "9"),
        ("Final answer: 12", "12"),
        ("Answer: 1\nthinking again...\nAnswer: 2\n", "2"),
        ("Answer: 3\n\\boxed{4}", "4"),  # a box beats an Answer line, as in the common harnesses
        ("so \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{1} then \\boxed{ {a}^{2} }", "{a}^{2}"),
        ("\\boxed{5} and a broken \\boxed{6", "5"),
        ("Answer: $\\boxed{7}$.", "7"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("no answer here", None),
        ("Answer:   \n", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_flexible_extraction_takes_the_last_number_only_when_nothing_is_stated():
    assert extract_answer("so 12 and then 15") is None
    assert extract_answer("so 12 and then 15", flexible=True) == "15"
    assert extract_answer("Answer: 12, then 15", flexible=True) == "12"  # a stated answer wins
    assert get_grader("math", extract="flexible").is_correct("so 12 and then 15", {"answer": "15"})
    with pytest.raises(ConfigError, match="unknown extraction mode 'loose'"):
        get_grader("math", extract="loose")


def test_gsm8k_gold_answers_are_read_after_the_hashes():
    record = {"answer": "Natalia sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"}
    assert GRADER.is_correct("The answer is 72.", record)
    assert not GRADER.is_correct("The answer is 24.", record)
    assert GRADER.is_correct("#### 1,200", {"answer": "#### 1200"})


def test_last_boxed_nested():
    assert last_boxed("\\boxed{a{b{c}}d} x") == "a{b{c}}d"
    assert last_boxed("\\boxed{") is None


@pytest.mark.parametrize(
    "text,value",
    [("64", 64), ("+64", 64), ("64.0", 64), ("-3", -3), ("1,000", 1000), ("0.5", Fraction(1, 2)),
     (".25", Fraction(1, 4)), ("3/4", Fraction(3, 4)), ("-6/8", Fraction(-3, 4))],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["1/0", "1,00", "x", "\\frac12", "1e5", "", "2,3.5"])
def test_parse_number_rejects_non_plain(text):
    assert parse_number(text) is None


def test_vote_keys_normalise_numbers():
    keys = {GRADER.extract(r) for r in ["Answer: 64", "Answer: 64.0", "Answer: +64", "\\boxed{64}", "Answer: $64$."]}
    assert keys == {"64"}
    assert GRADER.extract("Answer: 0.5") == GRADER.extract("Answer: 1/2") == "1/2"
    assert GRADER.extract("Answer: \\dfrac{1}{3}") == GRADER.extract("\\boxed{\\frac{1}{ 3}}")
    assert GRADER.extract("Answer: 65") != GRADER.extract("Answer: 64")
    assert GRADER.extract("nothing") is None


@pytest.mark.parametrize(
    "response,gold",
    [("Answer: 64", "64"), ("Answer: 64.0", "64"), ("\\boxed{+64}", 64), ("Answer: 1/2", "0.5"),
     ("Answer: 1,000", "1000"), ("Answer: 0.75", "3/4")],
)
def test_numeric_equivalence(response, gold):
    assert GRADER.is_correct(response, {"answer": gold}) is True


@pytest.mark.parametrize(
    "response,gold",
    [("Answer: 65", "64"), ("Answer: 64.01", "64"), ("Answer: -64", "64"), ("Answer: 1/3", "0.33")],
)
def test_numeric_mismatch(response, gold):
    assert GRADER.is_correct(response, {"answer": gold}) is False


@pytest.mark.parametrize(
    "response,gold",
    [("Answer: 0.5", "\\frac{1}{2}"), ("\\boxed{\\frac12}", "\\frac{1}{2}"), ("\\boxed{\\frac12}", "0.5"),
     ("Answer: $\\sqrt{2}/2$", "\\frac{\\sqrt{2}}{2}"), ("Answer: \\dfrac{\\pi}{3}", "$\\frac{\\pi}{3}$")],
)
def test_latex_equivalence_via_math_verify(response, gold):
    assert GRADER.is_correct(response, {"answer": gold}) is True


@pytest.mark.parametrize(
    "response,gold",
    [("Answer: 0.4", "\\frac{1}{2}"), ("\\boxed{\\frac13}", "\\frac{1}{2}"), ("Answer: \\sqrt{3}", "\\sqrt{2}")],
)
def test_latex_mismatch_via_math_verify(response, gold):
    assert GRADER.is_correct(response, {"answer": gold}) is False


def test_no_answer_is_incorrect():
    assert GRADER.is_correct("I think it is 64", {"answer": "64"}) is False


def test_last_answer_wins_for_grading():
    assert GRADER.is_correct("Answer: 64\nWait, no.\nAnswer: 65", {"answer": "65"}) is True
    assert GRADER.is_correct("Answer: 64\nWait, no.\nAnswer: 65", {"answer": "64"}) is False


GARBAGE = [
    "\\boxed{", "}}}{{{", "Answer: \\frac{", "Answer: $$$", "\\boxed{\\boxed{\\boxed{}}}", "Answer: \\\\",
    "Answer: \x00\x01\ufffd", "Answer: 1/0", "Answer: " + "(" * 200, "Answer: \\begin{matrix}",
    "Answer: " + "9" * 500, "\\boxed{\\left( \\right.}", "Answer: ∞ ≠ ∅", "Answer: 1e999999",
]


@pytest.mark.parametrize("response", GARBAGE)
@pytest.mark.parametrize("gold", ["64", "\\frac{1}{2}", "\\{"])
def test_garbage_never_raises(response, gold):
    key = GRADER.extract(response)
    assert key is None or isinstance(key, str)
    assert GRADER.is_correct(response, {"answer": gold}) is False


def test_missing_gold_answer_is_a_data_error():
    with pytest.raises(DataError, match="answer"):
        GRADER.is_correct("Answer: 1", {"prompt": "1+0?"})


def test_math_verify_failure_is_incorrect_not_a_crash(monkeypatch):
    import math_verify

    def explode(*args, **kwargs):
        raise RuntimeError("sympy blew up")

    monkeypatch.setattr(math_verify, "verify", explode)
    assert GRADER.is_correct("Answer: \\frac{1}{2}", {"answer": "0.5"}) is False
    assert GRADER.is_correct("Answer: 64.0", {"answer": "64"}) is True  # numeric fast path needs no math-verify


def test_grading_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda r: GRADER.is_correct(r, {"answer": "\\frac{1}{2}"}),
                                ["\\boxed{\\frac12}", "Answer: 0.5", "Answer: 0.4"]))
    assert results == [True, True, False]
