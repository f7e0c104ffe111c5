import json
import math
import random

import pytest

from rlhfctl.errors import ConfigError
from rlhfctl.records import read_records
from rlhfctl.toy.data import ToyDataConfig, run as toy_data_run
from rlhfctl.toy.task import (
    STEP_RE, Problem, ToyTaskConfig, apply_op, can_slip, draw_problem, needs_carry, parse_prompt, solve, step_correctness,
    write_solution,
)

PROMPT = "Compute 23+58-17.\n"


def test_problem_prompt_answer_and_parse():
    p = Problem(23, (("+", 58), ("-", 17)))
    assert p.prompt == PROMPT and p.answer == 64 and solve(p) == [81, 64]
    assert parse_prompt(PROMPT) == p
    assert parse_prompt("What is love?") is None


def test_carry_and_slip_arithmetic():
    assert needs_carry(23, "+", 58) and not needs_carry(23, "+", 51)
    assert needs_carry(81, "-", 17) and not needs_carry(87, "-", 17)
    assert apply_op(23, "+", 58) == 81 and apply_op(23, "+", 58, slip=True) == 71
    assert apply_op(81, "-", 17) == 64 and apply_op(81, "-", 17, slip=True) == 74


@pytest.mark.parametrize(
    "steps,expected",
    [
        (["23+58=81", "81-17=64", "Answer: 64"], [True, True, True]),
        ([" 23 + 58 = 81 ", "81 - 17=64", "Answer: 64  "], [True, True, True]),
        # a slip in step 1: every later step is arithmetically right but follows the wrong value
        (["23+58=71", "71-17=54", "Answer: 54"], [False, False, False]),
        # a slip in step 2 (a forgotten borrow)
        (["23+58=81", "81-17=74", "Answer: 74"], [True, False, False]),
        # right steps, wrong final answer
        (["23+58=81", "81-17=64", "Answer: 65"], [True, True, False]),
        # wrong operand, wrong operator, garbage, extra steps, too few steps
        (["23+57=80", "80-17=63", "Answer: 63"], [False, False, False]),
        (["23-58=-35"], [False]),
        (["hello", "81-17=64"], [False, False]),
        (["23+58=81", "81-17=64", "Answer: 64", "64+1=65"], [True, True, True, False]),
        (["23+58=81", "Answer: 81"], [True, False]),
        ([], []),
    ],
)
def test_step_correctness(steps, expected):
    assert step_correctness(PROMPT, steps) == expected


def test_step_correctness_not_a_toy_prompt():
    assert step_correctness("Tell me a joke.", ["ok"]) is None


def test_demonstrations_agree_with_step_correctness():
    """Clean solutions are all correct; in a slipped one the first slip and everything after is wrong."""
    cfg = ToyTaskConfig(slip_rate=0.7, carry_rate=0.5)
    rng, slip_rng = random.Random(0), random.Random(1)
    seen_slipped = 0
    for _ in range(300):
        p = draw_problem(rng, cfg)
        assert all(0 <= v <= cfg.max_value for v in solve(p))
        clean, slipped = write_solution(p, None, cfg)
        assert not slipped and step_correctness(p.prompt, clean.split("\n")) == [True] * (len(p.ops) + 1)
        text, slipped = write_solution(p, slip_rng, cfg)
        verdicts = step_correctness(p.prompt, text.split("\n"))
        if not slipped:
            assert text == clean and all(verdicts)
            continue
        seen_slipped += 1
        first = verdicts.index(False)
        assert not any(verdicts[first:]) and all(verdicts[:first])
        # the slipped step is exactly a forgotten carry/borrow, and later lines are right arithmetic
        a, op, b, c = _parse(text.split("\n")[first])
        assert needs_carry(a, op, b) and c == apply_op(a, op, b, slip=True)
        for line in text.split("\n")[first + 1:-1]:
            a, op, b, c = _parse(line)
            assert c == apply_op(a, op, b) or (needs_carry(a, op, b) and c == apply_op(a, op, b, slip=True))
    assert seen_slipped > 50


def _parse(line):
    m = STEP_RE.match(line)
    return int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))


# --- toy-data ----------------------------------------------------------------------------

def test_toy_data_is_deterministic_for_a_seed(cli, toy_dir, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert cli("toy-data", again, "--sft", "64", "--train", "8", "--test", "8", "--seed", "0").returncode == 0
    assert cli("toy-data", other, "--sft", "64", "--train", "8", "--test", "8", "--seed", "1").returncode == 0
    for name in ("sft.jsonl", "train.jsonl", "test.jsonl"):
        assert (again / name).read_bytes() == (toy_dir / name).read_bytes(), name
        assert (other / name).read_bytes() != (toy_dir / name).read_bytes(), name
    assert json.loads((again / "toy.json").read_text())["summary"]["sft"] == 64


def test_toy_data_files(toy_dir):
    sft = read_records(toy_dir / "sft.jsonl", "sft")
    train = read_records(toy_dir / "train.jsonl", "prompts")
    test = read_records(toy_dir / "test.jsonl", "prompts")
    assert (len(sft), len(train), len(test)) == (64, 8, 8)
    test_prompts = {r["prompt"] for r in test}
    assert not test_prompts & {r["prompt"] for r in sft}
    assert not test_prompts & {r["prompt"] for r in train}
    assert len(test_prompts) == 8 and len({r["prompt"] for r in train}) == 8
    for r in train + test:
        assert r["task"] == "math" and r["answer"] == str(parse_prompt(r["prompt"]).answer)
        assert r["meta"]["clean"].endswith(f"Answer: {r['answer']}")
    for r in sft:
        clean = write_solution(parse_prompt(r["prompt"]), None, ToyTaskConfig())[0]
        assert r["meta"]["clean"] == clean
        assert (r["completion"] != clean) == r["meta"]["slipped"]
    summary = json.loads((toy_dir / "toy.json").read_text())["summary"]
    assert summary["sft_slipped"] == sum(r["meta"]["slipped"] for r in sft) / len(sft)


def _slip_stats(records, slip_kind=ToyTaskConfig().slip_kind):
    chances = slips = 0
    for r in records:
        for line in r["completion"].split("\n")[:-1]:
            a, op, b, c = _parse(line)
            if can_slip(a, op, b, slip_kind):
                chances += 1
                slips += c != apply_op(a, op, b)
            else:
                assert c == apply_op(a, op, b)  # no slip where this kind has nothing to forget
    return chances, slips


@pytest.mark.parametrize("slip_kind", ["carry-add", "carry"])
def test_slip_rate_matches_the_flag(tmp_path, slip_kind):
    task = ToyTaskConfig(slip_rate=0.7, carry_rate=0.25, slip_kind=slip_kind)
    summary = toy_data_run(ToyDataConfig(str(tmp_path), task, n_sft=3000, n_train=0, n_test=0, seed=5))
    sft = read_records(tmp_path / "sft.jsonl", "sft")
    chances, slips = _slip_stats(sft, slip_kind)
    rate = slips / chances
    assert abs(rate - 0.7) < 4 * math.sqrt(0.7 * 0.3 / chances), (rate, chances)
    # a demonstration slips at least once with chance 1 - 0.3^(its carry chances)
    expected = sum(1 - 0.3 ** _slip_stats([r], slip_kind)[0] for r in sft) / len(sft)
    assert abs(summary["sft_slipped"] - expected) < 4 * math.sqrt(expected * (1 - expected) / len(sft))


def test_slip_kind_none_and_bad_flags(tmp_path):
    toy_data_run(ToyDataConfig(str(tmp_path), ToyTaskConfig(slip_kind="none"), n_sft=300, n_train=0, n_test=0))
    assert _slip_stats(read_records(tmp_path / "sft.jsonl", "sft"))[1] == 0
    for task, match in [(ToyTaskConfig(slip_kind="typo"), "slip-kind"), (ToyTaskConfig(slip_rate=1.5), "slip-rate"),
                        (ToyTaskConfig(min_ops=3, max_ops=2), "min-ops")]:
        with pytest.raises(ConfigError, match=match):
            toy_data_run(ToyDataConfig(str(tmp_path / "x"), task, 1, 1, 1))
    assert not (tmp_path / "x").exists()


def test_carry_add_slips_never_cancel_but_carry_slips_can():
    # carry-add: every slip is -10, so a slipped path ends wrong; carry mixes -10 and +10
    p = Problem(18, (("+", 5), ("-", 9)))  # 18+5 carries, 23-9 borrows
    assert can_slip(18, "+", 5, "carry-add") and not can_slip(23, "-", 9, "carry-add")
    assert can_slip(23, "-", 9, "carry")
    assert apply_op(apply_op(18, "+", 5, slip=True), "-", 9, slip=True) == p.answer  # the two slips cancel
    assert not can_slip(18, "+", 5, "none")
