"""`toy-data --task mcq` and `--task code`: the toy problems for the other two graders."""

import json
import random

import pytest

from rlhfctl.errors import ConfigError
from rlhfctl.grading import get_grader
from rlhfctl.grading.mcq import gold_letter
from rlhfctl.records import read_records
from rlhfctl.toy import code_task, mcq_task
from rlhfctl.toy.data import ToyDataConfig, run as toy_data_run
from rlhfctl.toy.task import Problem, ToyTaskConfig, parse_prompt

P = Problem(23, (("+", 58), ("-", 17)))


@pytest.fixture(scope="module")
def forms_dir(tmp_path_factory):
    """One folder holding the math, mcq and code forms (seed 0; 200 SFT, 8 train, 8 test each)."""
    out = tmp_path_factory.mktemp("forms")
    for kind in ("math", "mcq", "code"):
        toy_data_run(ToyDataConfig(str(out), ToyTaskConfig(), n_sft=200, n_train=8, n_test=8, n_style=4, kind=kind))
    return out


def test_the_forms_share_a_folder_without_touching_each_other(forms_dir, toy_dir):
    names = {p.name for p in forms_dir.iterdir()}
    for kind in ("mcq", "code"):
        assert {f"{kind}_sft.jsonl", f"{kind}_train.jsonl", f"{kind}_test.jsonl", f"{kind}_toy.json"} <= names
        assert f"{kind}_prefs_style.jsonl" not in names
        assert json.loads((forms_dir / f"{kind}_toy.json").read_text())["summary"]["task"] == kind
    assert (forms_dir / "test.jsonl").read_bytes() == (toy_dir / "test.jsonl").read_bytes()  # math: unchanged


def test_bad_task_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown --task 'poetry': choose one of math, mcq, code"):
        toy_data_run(ToyDataConfig(str(tmp_path / "x"), ToyTaskConfig(), 1, 1, 1, kind="poetry"))
    assert not (tmp_path / "x").exists()


# --- mcq ----------------------------------------------------------------------------------------

def test_mcq_choices_hold_the_answer_and_the_slipped_value():
    rng = random.Random(0)
    for must in (None, 74, 54, 34):
        options = mcq_task.choices_for(P, rng, must_include=must)
        assert len(set(options)) == 4 and 64 in options and min(options) >= 0
        assert must is None or must in options
    prompt = mcq_task.render_prompt(P, [54, 64, 74, 65])
    assert prompt == "Compute 23+58-17.\n(A) 54\n(B) 64\n(C) 74\n(D) 65\n" and parse_prompt(prompt) == P


def test_mcq_records(forms_dir):
    grader = get_grader("mcq")
    test = read_records(forms_dir / "mcq_test.jsonl", "prompts")
    train = read_records(forms_dir / "mcq_train.jsonl", "prompts")
    sft = read_records(forms_dir / "mcq_sft.jsonl", "sft")
    assert (len(test), len(train), len(sft)) == (8, 8, 200)
    for r in test + train:
        problem = parse_prompt(r["prompt"])
        assert r["task"] == "mcq" and gold_letter(r) == r["answer"]
        assert r["choices"][ord(r["answer"]) - ord("A")] == str(problem.answer)
        assert grader.is_correct(r["meta"]["clean"], r)
    test_problems = {parse_prompt(r["prompt"]) for r in test}
    assert not test_problems & {parse_prompt(r["prompt"]) for r in sft + train}
    for r in sft:  # the letter names the value the steps reached: the answer unless they slipped
        options = dict(line[1:].split(") ") for line in r["prompt"].splitlines()[1:])
        steps, answer_line = r["completion"].rsplit("\n", 1)
        reached = steps.rsplit("=", 1)[1]
        assert options[answer_line.removeprefix("Answer: ")] == reached
        assert r["meta"]["slipped"] or reached == str(parse_prompt(r["prompt"]).answer)
    assert 0 < sum(r["meta"]["slipped"] for r in sft) < len(sft)


# --- code ---------------------------------------------------------------------------------------

def test_code_task_program_and_tests():
    assert code_task.render_prompt(P) == "Write a Python program that reads an integer x and prints x+58-17.\n"
    assert code_task.solution(P) == "```python\nx=int(input())\nx=x+58\nx=x-17\nprint(x)\n```"
    assert code_task.program(P, slip=True) == "x=input()\nx=x+58\nx=x-17\nprint(x)"
    tests = code_task.tests_for(P, random.Random(0))
    assert tests[0] == {"stdin": "23\n", "stdout": "64\n"} and len({t["stdin"] for t in tests}) == 3
    assert all(int(t["stdout"]) == int(t["stdin"]) + 41 for t in tests)


def test_code_records_grade_as_their_demonstrations_say(forms_dir):
    grader = get_grader("code")
    test = read_records(forms_dir / "code_test.jsonl", "prompts")
    train = read_records(forms_dir / "code_train.jsonl", "prompts")
    sft = read_records(forms_dir / "code_sft.jsonl", "sft")
    assert (len(test), len(train), len(sft)) == (8, 8, 200)
    assert len({r["prompt"] for r in test}) == 8
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in sft + train}
    for r in test[:3]:
        assert r["task"] == "code" and r["answer"] in r["meta"]["clean"]
        assert grader.is_correct(r["meta"]["clean"], r)
        slipped = r["meta"]["clean"].replace("int(input())", "input()")
        assert not grader.is_correct(slipped, r)
    assert all(("x=input()" in r["completion"]) == r["meta"]["slipped"] for r in sft)
    # the same slips as the math demonstrations of the same problems
    math_sft = read_records(forms_dir / "sft.jsonl", "sft")
    code_rate, math_rate = (sum(r["meta"]["slipped"] for r in rs) / len(rs) for rs in (sft, math_sft))
    assert 0 < code_rate < 1 and abs(code_rate - math_rate) < 0.15


def test_code_slip_kind_none_teaches_no_slip(tmp_path):
    toy_data_run(ToyDataConfig(str(tmp_path), ToyTaskConfig(slip_kind="none"), n_sft=50, n_train=0, n_test=0, kind="code"))
    assert not any(r["meta"]["slipped"] for r in read_records(tmp_path / "code_sft.jsonl", "sft"))


# --- end to end: eval on a CPU ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mcq", "code"])
def test_eval_prints_pass_and_maj_at_k(kind, forms_dir, run_main):
    r = run_main("eval", "--model", "toy:tiny", "--data", forms_dir / f"{kind}_test.jsonl", "--n", "2",
                 "--max-new-tokens", "48", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert {"pass@1", "pass@2", "maj@2"} <= set(summary) and summary["num_prompts"] == 8
    assert 0 <= summary["pass@2"] <= 1
