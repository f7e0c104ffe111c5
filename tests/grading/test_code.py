import json
import os
import uuid

import pytest

from rlhfctl.errors import DataError
from rlhfctl.grading import CodeGrader, get_grader, sandbox
from rlhfctl.grading.code import canonical_program, compiles, extract_program, parse_tests, same_output, verdicts
from rlhfctl.grading.sandbox import Limits

TIGHT = Limits(cpu_s=1, wall_s=2, memory_mb=256, processes=16, output_bytes=1 << 16)
GRADER = CodeGrader(TIGHT, workers=2)
ADD = {"prompt": "Read x, print x+58-17.", "task": "code",
       "tests": [{"stdin": "23\n", "stdout": "64\n"}, {"stdin": "0\n", "stdout": "41"}]}
RIGHT = "```python\nx=int(input())\nprint(x+58-17)\n```"


@pytest.mark.parametrize("response, program", [
    ("```python\nprint(1)\n```", "print(1)\n"),
    ("Here:\n```py\nprint(1)\n```\nDone.", "print(1)\n"),
    ("```\nprint(1)\n```", "print(1)\n"),
    ("First try:\n```python\nprint(0)\n```\nBetter:\n```python\nprint(2)\n```", "print(2)\n"),  # the last block
    ("```python\nprint(1)\n```\nIn C:\n```c\nint main;\n```", "print(1)\n"),  # other languages are skipped
    ("```python\nprint(1)\nprint(2", "print(1)\nprint(2"),  # cut off mid-block
    ("print(3)", "print(3)"),  # no fence: the response is the program
])
def test_extract_program(response, program):
    assert extract_program(response) == program


@pytest.mark.parametrize("response", ["", "   \n", "```python\n```", "```cpp\nint x;\n```"])
def test_no_program(response):
    assert extract_program(response) is None
    assert not GRADER.is_correct(response, ADD)


def test_vote_key_ignores_trailing_space_and_blank_lines():
    assert GRADER.extract("```python\nx = 1  \n\nprint(x)\n```") == GRADER.extract("x = 1\nprint(x)") == "x = 1\nprint(x)"
    assert canonical_program("a\n\n b ") == "a\n b"


def test_output_comparison():
    assert same_output("64\n", "64") and same_output("1 2\n3\n", "1 2  \n3\n\n")
    assert not same_output("64\n", "46\n") and not same_output("1\n2\n", "1\n")


def test_stdio_tests():
    assert GRADER.is_correct(RIGHT, ADD)
    assert not GRADER.is_correct(RIGHT.replace("58", "57"), ADD)  # wrong output
    assert not GRADER.is_correct("```python\nx=input()\nprint(x+58-17)\n```", ADD)  # crashes (str + int)
    assert not GRADER.is_correct("```python\nprint(64)\n```", ADD)  # right on the first test only
    assert not GRADER.is_correct("```python\nx=int(input())\nprint(x+41)\nraise SystemExit(1)\n```", ADD)  # exit 1


def test_assert_tests_run_after_the_program():
    record = {"task": "code", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
    assert GRADER.is_correct("```python\ndef add(a, b):\n    return a + b\n```", record)
    assert not GRADER.is_correct("```python\ndef add(a, b):\n    return a - b\n```", record)
    mixed = {"task": "code", "tests": [{"stdout": "hi\n"}, "assert add(1, 1) == 2"]}
    assert GRADER.is_correct("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print('hi')", mixed)


def test_garbage_costs_no_run_and_equal_programs_run_once(monkeypatch):
    calls = []
    real_run = sandbox.run
    monkeypatch.setattr(sandbox, "run", lambda job: calls.append(job) or real_run(job))
    assert not compiles("x=int(input(\nprint(") and not GRADER.is_correct("x=int(input(\nprint(", ADD)
    assert calls == []
    program = f"x=int(input())  # {uuid.uuid4().hex}\nprint(x+41)"
    assert GRADER.is_correct_many([program, program, "nonsense ((", program], ADD) == [True, True, False, True]
    assert len(calls) == 2  # one program, two tests
    assert GRADER.is_correct(program, ADD) and len(calls) == 2  # the verdict is remembered


def test_many_programs_are_graded_in_parallel():
    programs = [f"x=int(input())\nprint(x+{k})" for k in range(38, 44)]
    assert verdicts(programs + [None], parse_tests(ADD["tests"]), TIGHT, 3) == [k == 41 for k in range(38, 44)] + [False]


@pytest.mark.parametrize("tests, problem", [
    (None, "missing: code grading needs tests"),
    ([], "must be a non-empty list"),
    ("assert f()", "must be a non-empty list"),
    ([3], "item 1 is int: expected an object or a string"),
    ([{"stdin": "1\n"}], "item 1 has no 'stdout'"),
    ([{"stdout": "1"}, {"input": "1", "output": "2"}], "item 2 has unknown key(s) 'input', 'output'"),
    ([{"stdin": 1, "stdout": "1"}], "item 1: 'stdin' must be a string"),
])
def test_bad_tests_are_a_data_error(tests, problem):
    with pytest.raises(DataError, match="field 'tests': " + problem.replace("(", r"\(").replace(")", r"\)")):
        parse_tests(tests)


def test_registered():
    assert isinstance(get_grader("code"), CodeGrader)


# --- hostile programs, graded: each fails, quickly ----------------------------------------

HOSTILE = {
    "endless loop": "while True:\n    pass",
    "sleeps forever": "import time\ntime.sleep(60)",
    "fork bomb": "import os, time\nfor _ in range(8):\n    os.fork()\nprint(64)\ntime.sleep(30)",
    "unbounded allocation": "a = []\nfor _ in range(400):\n    a.append(bytearray(10**7))\nprint(64)",
    "prints gigabytes": "import sys\nfor _ in range(2**15):\n    sys.stdout.write('64\\n' * 2**14)",
    "opens a socket": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\nprint(64)",
}


@pytest.mark.parametrize("program", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_programs_are_graded_wrong(program):
    record = {"task": "code", "tests": [{"stdin": "23\n", "stdout": "64\n"}]}
    assert not GRADER.is_correct(f"```python\n{program}\n```", record)


def test_a_program_that_writes_outside_its_folder_is_graded_wrong_and_writes_nothing():
    marker = f"/tmp/escape-{uuid.uuid4().hex}"
    outside_existed = os.path.exists("/tmp/outside")
    program = f"open('/tmp/outside', 'w').write('x')\nopen({marker!r}, 'w').write('x')\nprint(64)"
    record = {"task": "code", "tests": [{"stdin": "23\n", "stdout": "64\n"}]}
    assert not GRADER.is_correct(program, record)
    assert not os.path.exists(marker)
    if not outside_existed:
        assert not os.path.exists("/tmp/outside")


# --- checked before generation --------------------------------------------------------------

def test_rollout_rejects_bad_tests_before_generating(tmp_path, run_main):
    prompts = tmp_path / "code.jsonl"
    prompts.write_text('{"prompt": "Print 1.", "task": "code", "tests": [{"stdout": "1"}]}\n'
                       '{"prompt": "Print 2.", "task": "code", "tests": [{"input": "", "output": "2"}]}\n')
    out = tmp_path / "rollouts.jsonl"
    r = run_main("rollout", prompts, "--model", "toy:tiny", "--out", out, "--n", "1")
    assert r.code == 2
    assert f"{prompts}:2: field 'tests': item 1 has unknown key(s) 'input', 'output'" in r.err
    assert not out.exists()


def test_rollout_grades_code(tmp_path, run_main):
    prompts = tmp_path / "code.jsonl"
    prompts.write_text('{"prompt": "Print 1.", "task": "code", "tests": [{"stdout": "1"}]}\n')
    out = tmp_path / "rollouts.jsonl"
    r = run_main("rollout", prompts, "--model", "toy:tiny", "--out", out, "--n", "2", "--max-new-tokens", "8")
    assert r.code == 0, r.err
    assert '"correct": [false, false]' in out.read_text()


def test_a_code_prompt_needs_tests_not_an_answer(cli, tmp_path):
    """A code prompt's gold is its `tests`: eval runs without `answer`, and names `tests` when they are missing."""
    good = {"id": "c1", "prompt": "Print 3.\n", "task": "code", "tests": [{"stdin": "", "stdout": "3"}]}
    (tmp_path / "good.jsonl").write_text(json.dumps(good) + "\n")
    proc = cli("eval", "--model", "toy:tiny", "--data", tmp_path / "good.jsonl", "--max-new-tokens", "8", "--out", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "e.json").read_text())["pass@1"] == 0.0
    bad = {"id": "c2", "prompt": "Print 3.\n", "task": "code", "answer": "print(3)"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    proc = cli("eval", "--model", "toy:tiny", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "b.json")
    assert proc.returncode == 2 and "bad.jsonl:1: field 'tests'" in proc.stderr
    assert not (tmp_path / "b.json").exists()
