import pytest

from rlhfctl.errors import DataError
from rlhfctl.grading import get_grader
from rlhfctl.grading.mcq import extract_choice, gold_letter


@pytest.mark.parametrize("response, letter", [
    ("Answer: C", "C"),
    ("I compared them.\nAnswer: (B)", "B"),
    ("**Final answer:** D.", "D"),
    ("The answer is A", "A"),
    ("so the correct answer is: (C), since 4 > 3", "C"),
    ("Putting it together, $\\boxed{B}$", "B"),
    ("\\boxed{\\text{D}}", "D"),
    ("\\boxed{(A)}", "A"),
    ("Only (C) survives the check.", "C"),
    ("Answer: A\nWait, no.\nAnswer: C", "C"),  # the last statement wins
    ("Answer: C\n(A) and (B) are both wrong.", "C"),  # a statement beats bare letters
    ("\\boxed{B} Answer: C", "B"),  # a box beats a statement
])
def test_extract_choice_common_forms(response, letter):
    assert extract_choice(response) == letter


@pytest.mark.parametrize("response", [
    "Answer: A or C",
    "Answer: A, C",
    "Answer: AC",
    "\\boxed{A, C}",
    "(A) looks right, but so does (C)",
    "The answer is a tough one",  # the article, not a letter
    "Answer: CORRECT",
    "No idea.",
    "",
])
def test_two_letters_or_none_choose_nothing(response):
    assert extract_choice(response) is None


def test_grader_compares_with_the_gold_letter_or_choice_text():
    grader = get_grader("mcq")
    record = {"prompt": "Pick one.\n(A) 3\n(B) 4", "answer": "B", "choices": ["3", "4"]}
    assert grader.is_correct("Answer: B", record)
    assert not grader.is_correct("Answer: A", record)
    assert not grader.is_correct("Answer: A or B", record)  # two letters: wrong, not a crash
    assert grader.is_correct("The answer is (B)", {**record, "answer": "4"})  # gold given as the choice text
    assert grader.is_correct("Answer: B", {**record, "answer": "b"})
    assert gold_letter({"answer": "x", "choices": {"X": "yes", "Y": "no"}}) == "X"
    assert grader.extract("so \\boxed{B}") == "B"


@pytest.mark.parametrize("record, problem", [
    ({"answer": "E", "choices": ["1", "2"]}, "not one of the choices AB"),
    ({"answer": "five", "choices": ["1", "2"]}, "neither a letter nor one of the choices"),
    ({"answer": "", "choices": ["1", "2"]}, "needs a gold answer"),
])
def test_bad_gold_is_a_data_error(record, problem):
    with pytest.raises(DataError, match=problem):
        gold_letter(record)


def test_rollout_rejects_a_bad_mcq_gold_before_generating(tmp_path, run_main):
    prompts = tmp_path / "mcq.jsonl"
    prompts.write_text('{"prompt": "Pick.\\n(A) 1\\n(B) 2\\n", "answer": "A", "task": "mcq", "choices": ["1", "2"]}\n'
                       '{"prompt": "Pick again.\\n(A) 1\\n(B) 2\\n", "answer": "Q", "task": "mcq", "choices": ["1", "2"]}\n')
    out = tmp_path / "rollouts.jsonl"
    r = run_main("rollout", prompts, "--model", "toy:tiny", "--out", out, "--n", "1")
    assert r.code == 2
    assert f"{prompts}:2: field 'answer'" in r.err and "not one of the choices AB" in r.err
    assert not out.exists()
