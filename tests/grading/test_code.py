import json
import os
import tempfile
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


def test_a_code_prompt_needs_tests_not_an_answer(run_main, tmp_path):
    """A code prompt's gold is its `tests`: eval runs without `answer`, and names `tests` when they are missing."""
    good = {"id": "c1", "prompt": "Print 3.\n", "task": "code", "tests": [{"stdin": "", "stdout": "3"}]}
    (tmp_path / "good.jsonl").write_text(json.dumps(good) + "\n")
    r = run_main("eval", "--model", "toy:tiny", "--data", tmp_path / "good.jsonl", "--max-new-tokens", "8", "--out", tmp_path / "e.json")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "e.json").read_text())["pass@1"] == 0.0
    bad = {"id": "c2", "prompt": "Print 3.\n", "task": "code", "answer": "print(3)"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    r = run_main("eval", "--model", "toy:tiny", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "b.json")
    assert r.code == 2 and "bad.jsonl:1: field 'tests'" in r.err
    assert not (tmp_path / "b.json").exists()


# --- programs that try to fake a pass: each fails; honest programs still pass -----------------

ADD_ASSERTS = {"task": "code", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
WRONG_ADD = "def add(a, b):\n    return a - b\n"
CHEATS = {
    "raise SystemExit(0)": WRONG_ADD + "raise SystemExit(0)",
    "sys.exit(0)": WRONG_ADD + "import sys\nsys.exit(0)",
    "os._exit(0)": WRONG_ADD + "import os\nos._exit(0)",
    "atexit os._exit(0)": WRONG_ADD + "import atexit, os\natexit.register(lambda: os._exit(0))",
    "__eq__ always True": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                          "    __hash__ = object.__hash__\ndef add(a, b):\n    return Yes()",
    "int subclass whose __eq__ says yes": "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
                                          "def add(a, b):\n    return Yes(7)",
    "reads the asserts from its own file": (
        "import re, sys\n"
        "def add(a, b):\n"
        "    source = open(sys.argv[0]).read() + open(__file__).read()\n"
        "    for x, y, z in re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', source):\n"
        "        if (int(x), int(y)) == (a, b):\n"
        "            return int(z)\n"
        "    return 0"),
    "reads the expected value from its caller's frame": (
        "import sys, dis\n"
        "def add(a, b):\n"
        "    frame = sys._getframe(1)\n"
        "    consts = [c for c in frame.f_code.co_consts if isinstance(c, int) and c not in (a, b)]\n"
        "    while frame:\n"
        "        consts += [c for c in frame.f_code.co_consts if isinstance(c, int) and c not in (a, b)]\n"
        "        frame = frame.f_back\n"
        "    return consts[0] if consts else 0"),
    "raises the assert's exception away": WRONG_ADD + "import builtins\nbuiltins.AssertionError = KeyError\n"
                                          "builtins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int",
    "wrong answers, then exits 0 from a thread": (
        "import os, threading, time\n"
        "def add(a, b):\n    time.sleep(0.3)\n    return a - b\n"
        "threading.Thread(target=lambda: (time.sleep(0.1), os._exit(0)), daemon=True).start()"),
    # Without the expected values, a forger can only report what its add returns (a lookup table of the
    # right answers is no harness trick: it is a program that is right on the tests).
    "forges its reports and the end line on every fd": (
        WRONG_ADD + "import os\nfor fd in range(1, 20):\n    try:\n"
        "        os.write(fd, b'{\"site\": 0, \"holes\": [[\"int\", \"-0x1\"]]}\\n"
        "{\"site\": 1, \"holes\": [[\"int\", \"-0x2\"]]}\\n{\"end\": true}\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)"),
    "forges the end line alone, and prints PASS": (
        WRONG_ADD + "import os\nprint('PASS\\nok', flush=True)\nos.write(3, b'{\"end\": true}\\n')\nos._exit(0)"),
    "silences the reporter": (
        "def add(a, b):\n    globals()['__rlhfctl_report__'] = lambda *a: None\n    return a - b"),
    "closes and replaces the results fd": (
        WRONG_ADD + "import os, sys, io\nos.close(3)\nos.open('/dev/null', os.O_WRONLY)\n"
        "sys.stdout = io.StringIO()\nsys.stderr = io.StringIO()"),
    "jumps over the asserts with a tracer": (
        "import sys\n"
        "def add(a, b):\n    return a - b\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == '<module>':\n"
        "        frame.f_trace = jump\n"
        "    return None\n"
        "def jump(frame, event, arg):\n"
        "    if event == 'line':\n"
        "        lines = open(__file__).read().splitlines()\n"
        "        end = max(i for i, line in enumerate(lines, 1) if line.startswith('__rlhfctl_end__'))\n"
        "        if frame.f_lineno < end and 'add(' in lines[frame.f_lineno - 1]:\n"
        "            try:\n                frame.f_lineno = end\n            except ValueError:\n                pass\n"
        "    return jump\n"
        "sys.settrace(tracer)\nsys._getframe().f_trace = jump"),
}


@pytest.mark.parametrize("program", CHEATS.values(), ids=CHEATS.keys())
def test_programs_that_fake_a_pass_fail(program):
    assert not GRADER.is_correct(f"```python\n{program}\n```", ADD_ASSERTS)


SCAVENGER = """
import glob, os, re
found = set()
def scan(text):
    found.update(re.findall(r"secret-[0-9a-f]{32}", text))
def read(path):
    try:
        with open(path, "rb") as f:
            scan(f.read(1 << 20).decode("latin-1"))
    except OSError:
        pass
for pattern in ("/proc/*/cmdline", "/proc/*/environ", "/proc/self/fd/*", "./*", "./.*", "/tmp/**/*", "/dev/shm/*",
                "/work/**/*.jsonl", "/root/**/*.jsonl", "/home/**/*.jsonl"):
    for path in glob.glob(pattern, recursive=True):
        if os.path.isfile(path) or pattern.startswith("/proc"):
            read(path)
for fd in range(3, 32):
    try:
        os.set_blocking(fd, False)
        scan(os.read(fd, 1 << 16).decode("latin-1"))
    except OSError:
        pass
scan(" ".join(os.environ.values()))
def greet():
    return next(iter(found), "nothing")
if __name__ == "__main__":
    print(greet())
"""


def test_a_program_cannot_read_the_expected_output_or_the_asserts(tmp_path):
    """The expected values are nowhere it can look: not its files, fds, argv, environment, /proc, nor the data file."""
    secret = f"secret-{uuid.uuid4().hex}"
    record = {"task": "code", "tests": [{"stdin": "", "stdout": secret + "\n"}, f"assert greet() == {secret!r}"]}
    shared = tempfile.mkdtemp(prefix="rlhfctl-data-")  # world-readable, like a user's data folder
    os.chmod(shared, 0o755)
    data = os.path.join(shared, "code.jsonl")
    with open(data, "w") as f:
        f.write(json.dumps(record) + "\n")
    os.chmod(data, 0o644)
    try:
        assert not GRADER.is_correct_many([SCAVENGER], {**record, "tests": record["tests"][:1]})[0]
        assert not GRADER.is_correct_many([SCAVENGER], {**record, "tests": record["tests"][1:]})[0]
        honest = f"def greet():\n    return {secret!r}\nif __name__ == '__main__':\n    print(greet())"
        assert GRADER.is_correct(honest, record)
    finally:
        os.unlink(data)
        os.rmdir(shared)


HONEST = {
    "plain": ("def add(a, b):\n    return a + b", ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]),
    "prints, and has a main guard": ("def add(a, b):\n    print('adding', a, b)\n    return a + b\n"
                                     "if __name__ == '__main__':\n    print(add(1, 2))", ["assert add(2, 3) == 5"]),
    "HumanEval check(candidate)": ("def add(a, b):\n    return a + b",
                                   ["def check(candidate):\n    assert candidate(2, 3) == 5\n"
                                    "    for i in range(3):\n        assert candidate(i, i) == 2 * i\ncheck(add)"]),
    "floats, None, truthiness": ("import math\ndef root(x):\n    return math.sqrt(x) if x >= 0 else None",
                                 ["assert abs(root(2) - 1.41421356) < 1e-6", "assert math.isclose(root(9), 3.0)",
                                  "assert root(-1) is None", "assert root(4)", "assert not root(0)"]),
    "containers, generators, Counter as dict": (
        "from collections import Counter, namedtuple\nP = namedtuple('P', 'x y')\n"
        "def evens(n):\n    return (i for i in range(0, n, 2))\n"
        "def count(s):\n    return Counter(s)\ndef pair():\n    return P(1, 2)",
        ["assert list(evens(7)) == [0, 2, 4, 6]", "assert sorted(evens(5), reverse=True) == [4, 2, 0]",
         "assert count('aab') == {'a': 2, 'b': 1}", "assert pair() == (1, 2)", "assert len(count('xyz')) == 3",
         "assert set(evens(4)) == {0, 2}", "assert isinstance(pair(), tuple)"]),
    "an expected exception": ("def inv(x):\n    return 1 / x",
                              ["try:\n    inv(0)\n    raised = False\nexcept ZeroDivisionError:\n    raised = True\n"
                               "assert raised", "assert inv(4) == 0.25"]),
    "short-circuit": ("def first(xs):\n    return xs[0] if xs else None",
                      ["assert first([]) is None or first([])[0] == 1", "assert first([3]) == 3"]),
}


@pytest.mark.parametrize("program, tests", HONEST.values(), ids=HONEST.keys())
def test_honest_programs_pass_and_wrong_ones_fail(program, tests):
    record = {"task": "code", "tests": tests}
    assert GRADER.is_correct(program, record)
    wrong = program.replace("a + b", "a * b").replace("sqrt(x)", "sqrt(x) + 1e-3").replace("range(0, n, 2)", "range(n)")
    wrong = wrong.replace("Counter(s)", "dict(Counter(s), z=0)").replace("P(1, 2)", "[1, 2]").replace("1 / x", "x")
    wrong = wrong.replace("xs[0] if", "xs[-1] + 1 if")
    assert not GRADER.is_correct(wrong, record)


def test_an_assert_that_never_runs_fails():
    record = {"task": "code", "tests": ["def check(candidate):\n    assert candidate(2, 3) == 5"]}
    assert not GRADER.is_correct("def add(a, b):\n    return a + b", record)
    assert GRADER.is_correct("def add(a, b):\n    return a + b", {"task": "code", "tests": ["x = add(1, 2)"]})
