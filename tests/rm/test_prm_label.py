"""label-prm (Math-Shepherd labels) with a fake completer whose continuations the test controls."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import read_jsonl, write_prompts
from rlhfctl.generation.base import SamplingParams, Sample
from rlhfctl.records import write_jsonl
from rlhfctl.rm import prm_label
from rlhfctl.rm.prm_label import LabelConfig, label_agreement, openrlhf_record, split_steps
from rlhfctl.toy.task import ToyTaskConfig, parse_prompt, step_correctness, write_solution
from rlhfctl.toy.tokenizer import build_toy_tokenizer

A = "Compute 20+5-3.\n"  # 20+5=25, 25-3=22
B = "Compute 30+4.\n"  # 30+4=34

S0 = "20+5=25\n25-3=22\nAnswer: 22"  # right
S1 = "20+5=25\n25-3=12\nAnswer: 12"  # wrong from step 1
S2 = "20+5=15\n15-3=12\nAnswer: 12"  # wrong from step 0
T0 = "30+4=34\nAnswer: 34"  # right, but its completions (below) all go astray

# Continuations of each step prefix (N = 4). The first prefix is shared by S0 and S1.
CONTINUATIONS = {
    A + "20+5=25\n": ["25-3=22\nAnswer: 22", "25-3=21\nAnswer: 21", "25-3=22\nAnswer: 22", "no answer"],  # 2/4
    A + "20+5=25\n25-3=22\n": ["Answer: 22", "Answer: 22", "Answer: 22", "Answer: 2"],  # 3/4
    A + "20+5=25\n25-3=12\n": ["Answer: 12"] * 4,  # 0/4
    A + "20+5=15\n": ["15-3=12\nAnswer: 12"] * 4,  # 0/4
    A + "20+5=15\n15-3=12\n": ["Answer: 22", "Answer: 12", "Answer: 12", "Answer: 12"],  # 1/4: a lucky guess
    B + "30+4=34\n": ["Answer: 7"] * 4,  # 0/4
}
HARD = {S0: [True, True, True], S1: [True, False, False], S2: [False, True, False], T0: [False, True]}
SOFT = {S0: [0.5, 0.75, 1.0], S1: [0.5, 0.0, 0.0], S2: [0.0, 0.25, 0.0], T0: [0.0, 1.0]}
TRUTH = {S0: [True, True, True], S1: [True, False, False], S2: [False, False, False], T0: [True, True]}

ROLLOUTS = [
    {"id": "a", "prompt": A, "answer": "22", "task": "math", "responses": [S0, S1, S2, S0], "correct": [True, False, False, True]},
    {"id": "b", "prompt": B, "answer": "34", "responses": [T0]},
]


class FakeCompleter:
    """The generator protocol: `.tokenizer` and `.generate(prompts, params, keys)`; records every call."""

    def __init__(self, fail_on_call=None):
        self.tokenizer = build_toy_tokenizer()
        self.calls = []
        self.fail_on_call = fail_on_call

    def generate(self, prompts, params, keys=None):
        self.calls.append(list(prompts))
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("killed")
        assert keys is not None and len(keys) == len(prompts)
        out = []
        for p in prompts:
            texts = CONTINUATIONS[p]
            assert len(texts) == params.n
            out.append([Sample(t, list(range(len(t))), "stop") for t in texts])
        return out

    @property
    def prompts(self):
        return [p for call in self.calls for p in call]


def _config(tmp_path, method="hard", **kw):
    return LabelConfig(str(tmp_path / "in.jsonl"), "fake", str(tmp_path / "steps.jsonl"), SamplingParams(n=4), method, **kw)


def _jobs():
    return [(ROLLOUTS[0], 0, S0), (ROLLOUTS[0], 1, S1), (ROLLOUTS[0], 2, S2), (ROLLOUTS[1], 0, T0)]


# --- splitting -----------------------------------------------------------------------------------------

def test_split_steps():
    assert split_steps("Answer: 5") == ["Answer: 5"]
    assert split_steps("2+3=5\nAnswer: 5") == ["2+3=5", "Answer: 5"]
    assert split_steps("2+3=5\n\n  \nAnswer: 5\n") == ["2+3=5", "Answer: 5"]  # blank lines dropped
    assert split_steps("a\nb\n\nc\nd", "\n\n") == ["a\nb", "c\nd"]
    assert split_steps("", "\n") == [""]


# --- labels ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,expected", [("hard", HARD), ("soft", SOFT)])
def test_labels_against_hand_made_completions(tmp_path, method, expected):
    gen = FakeCompleter()
    stats = {"new_tokens": 0, "prefixes_generated": 0}
    records = prm_label._label_chunk(_jobs(), gen, _config(tmp_path, method), stats)
    assert [r["id"] for r in records] == ["a-0", "a-1", "a-2", "b-0"]
    for r, (_, _, solution) in zip(records, _jobs()):
        assert r["completions"] == solution.split("\n")
        assert r["labels"] == expected[solution], solution
        assert all(isinstance(x, bool if method == "hard" else float) for x in r["labels"])
        assert (r["method"], r["n_completions"]) == (method, 4)
        assert r["meta"]["true_labels"] == TRUTH[solution]
    # one call for the whole chunk; the prefix S0 and S1 share is completed once
    assert len(gen.calls) == 1
    assert sorted(gen.prompts) == sorted(CONTINUATIONS) and len(gen.prompts) == len(set(gen.prompts)) == 6
    assert stats["prefixes_generated"] == 6
    assert stats["new_tokens"] == sum(len(t) for texts in CONTINUATIONS.values() for t in texts)


def test_last_step_is_the_solutions_own_verdict(tmp_path):
    """The final step is never sampled: a right solution ends on 1 however its prefixes did, a wrong one on 0."""
    gen = FakeCompleter()
    stats = {"new_tokens": 0, "prefixes_generated": 0}
    wrong_end = "20+5=25\n25-3=22\nAnswer: 23"
    records = prm_label._label_chunk([(ROLLOUTS[0], 0, S0), (ROLLOUTS[0], 1, wrong_end)], gen, _config(tmp_path, "soft"), stats)
    assert [r["labels"][-1] for r in records] == [1.0, 0.0]
    assert records[1]["labels"][:2] == [0.5, 0.75]  # same prefixes as S0
    assert all(not p.endswith("Answer: 22\n") and not p.endswith("Answer: 23\n") for p in gen.prompts)
    one_step = prm_label._label_chunk([(ROLLOUTS[1], 0, "Answer: 34")], FakeCompleter(), _config(tmp_path), stats)
    assert one_step[0]["labels"] == [True]


def test_true_labels_only_for_toy_prompts():
    assert prm_label._true_labels(A, S2.split("\n")) == [False, False, False]
    assert prm_label._true_labels("What is two plus three?", ["5"]) is None
    assert prm_label._true_labels([{"role": "user", "content": A}], ["x"]) is None
    assert step_correctness(A, S1.split("\n")) == TRUTH[S1]


def test_label_agreement_by_hand():
    records = [{"labels": HARD[s], "meta": {"true_labels": TRUTH[s]}} for s in (S0, S1, S2, T0)]
    records.append({"labels": [True], "meta": {}})  # no truth: left out
    # steps: S0 3/3, S1 3/3, S2 2/3 (step 1 lucky), T0 1/2 -> 9/11.
    # first wrong (pred, true): S0 (-, -), S1 (1, 1), S2 (0, 0), T0 (0, -): 3 predicted, 2 true, 2 exact.
    assert label_agreement(records) == pytest.approx(
        {"step_agreement": 9 / 11, "first_error_precision": 2 / 3, "first_error_recall": 1.0, "solutions_with_truth": 4})
    soft = [{"labels": SOFT[s], "meta": {"true_labels": TRUTH[s]}} for s in (S0, S1, S2, T0)]
    # soft labels count as right at >= 0.5: S2 becomes [F, F, F] (10/11); predicted 3, exact 2
    assert label_agreement(soft) == pytest.approx(
        {"step_agreement": 10 / 11, "first_error_precision": 2 / 3, "first_error_recall": 1.0, "solutions_with_truth": 4})
    assert label_agreement([{"labels": [True]}]) is None


def test_openrlhf_record():
    rec = {"id": "a-1", "prompt": A, "completions": S1.split("\n"), "labels": [0.5, 0.25, 0.0]}
    out = openrlhf_record(rec)
    assert out == {"id": "a-1", "input": A + "20+5=25 ки\n25-3=12 ки\nAnswer: 12 ки\n", "value": ["+", "-", "-"]}
    assert openrlhf_record(dict(rec, labels=[True, False, True]))["value"] == ["+", "-", "+"]


# --- run(): resume, the side file, chunking -------------------------------------------------------------

@pytest.fixture
def with_fake(monkeypatch):
    def install(**kw):
        made = []

        def make(backend, spec, seed=0, trust_remote_code=False, engine=None, server=None):
            made.append(FakeCompleter(**kw))
            return made[-1]

        monkeypatch.setattr(prm_label, "make_generator", make)
        return made

    return install


def test_run_resumes_after_a_crash_and_labels_each_solution_once(tmp_path, with_fake):
    write_jsonl(tmp_path / "in.jsonl", ROLLOUTS)
    config = _config(tmp_path, prompts_per_chunk=1, format="openrlhf")
    made = with_fake(fail_on_call=2)
    with pytest.raises(RuntimeError, match="killed"):
        prm_label.run(config)
    first = read_jsonl(tmp_path / "steps.jsonl")
    assert [r["id"] for r in first] == ["a-0", "a-1", "a-2"]  # prompt a's chunk was written before the crash
    side = tmp_path / "steps.jsonl.openrlhf.jsonl"
    side.write_text("".join(side.read_text().splitlines(keepends=True)[:2]))  # as if killed between the two appends
    made = with_fake()
    stats = prm_label.run(config)
    assert (stats["solutions"], stats["already_done"], stats["labelled"]) == (4, 3, 1)
    assert made[-1].prompts == [B + "30+4=34\n"]  # only what was missing is generated
    records = read_jsonl(tmp_path / "steps.jsonl")
    assert [r["id"] for r in records] == ["a-0", "a-1", "a-2", "b-0"]
    assert records[:3] == first
    assert {r["id"]: r["labels"] for r in records} == {"a-0": HARD[S0], "a-1": HARD[S1], "a-2": HARD[S2], "b-0": HARD[T0]}
    assert stats["truth"]["solutions_with_truth"] == 4
    assert read_jsonl(side) == [openrlhf_record(r) for r in records]  # caught up: no gap, no duplicate
    # a rerun with everything done generates nothing
    made = with_fake(fail_on_call=1)
    stats = prm_label.run(config)
    assert stats["already_done"] == 4 and stats["labelled"] == 0 and not made
    assert read_jsonl(tmp_path / "steps.jsonl") == records


@pytest.mark.parametrize("side", [False, True])
def test_an_out_that_is_not_a_steps_file_is_refused_and_kept(tmp_path, with_fake, side):
    """User notes at --out (or where --format openrlhf puts its side file): refused before any change, nothing generated."""
    from rlhfctl.errors import DataError

    write_jsonl(tmp_path / "in.jsonl", ROLLOUTS)
    notes = tmp_path / ("steps.jsonl.openrlhf.jsonl" if side else "steps.jsonl")
    notes.write_text("notes: try soft labels next\n")
    made = with_fake()
    with pytest.raises(DataError, match=rf"^{notes}:1: .*; pass another --out, or delete the file to start over$"):
        prm_label.run(_config(tmp_path, format="openrlhf"))
    assert notes.read_text() == "notes: try soft labels next\n" and not made
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.jsonl", notes.name])


@pytest.mark.parametrize("side", [False, True])
def test_a_run_on_an_out_another_run_holds_is_refused(tmp_path, with_fake, side):
    from rlhfctl.locks import OutputLocked, locked

    write_jsonl(tmp_path / "in.jsonl", ROLLOUTS)
    made = with_fake()
    held = tmp_path / ("steps.jsonl.openrlhf.jsonl" if side else "steps.jsonl")
    with locked(held):
        with pytest.raises(OutputLocked, match=rf"^{held}: another run is writing it \(pid {os.getpid()}, since "):
            prm_label.run(_config(tmp_path, format="openrlhf"))
    assert not made and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    prm_label.run(_config(tmp_path, format="openrlhf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "steps.jsonl", "steps.jsonl.openrlhf.jsonl"]


def test_resuming_with_another_method_is_refused(tmp_path, with_fake):
    from rlhfctl.errors import DataError

    write_jsonl(tmp_path / "in.jsonl", ROLLOUTS)
    with_fake()
    prm_label.run(_config(tmp_path))
    before = (tmp_path / "steps.jsonl").read_bytes()
    with pytest.raises(DataError, match=r":1: labelled with --method hard, this run has --method soft \(rerun with the same"):
        prm_label.run(_config(tmp_path, method="soft"))
    with pytest.raises(DataError, match=r":1: labelled with --n-completions 4, this run has --n-completions 2 "):
        prm_label.run(LabelConfig(str(tmp_path / "in.jsonl"), "fake", str(tmp_path / "steps.jsonl"), SamplingParams(n=2)))
    assert (tmp_path / "steps.jsonl").read_bytes() == before


def test_run_skips_prompts_without_answer_and_caps_solutions(tmp_path, with_fake):
    no_answer = {"id": "c", "prompt": "Say hi.", "responses": ["hi"]}
    write_jsonl(tmp_path / "in.jsonl", [*ROLLOUTS, no_answer])
    made = with_fake()
    stats = prm_label.run(_config(tmp_path, max_solutions_per_prompt=2))
    assert stats["skipped_no_answer"] == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "steps.jsonl")] == ["a-0", "a-1", "b-0"]
    assert A + "20+5=15\n" not in made[-1].prompts  # S2 is past the cap


# --- through the CLI, with the tiny SFT model as the completer ---------------------------------------------

def _assert_one_line_error(result, pattern):
    import re

    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), result.err


def test_cli_bad_input(tmp_path, run_main):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, ROLLOUTS)
    out = tmp_path / "steps.jsonl"
    r = run_main("label-prm", src, "--completer", "toy:tiny", "--out", out, "--n-completions", "0")
    _assert_one_line_error(r, r"--n-completions must be at least 1, got 0")
    write_jsonl(src, [{k: v for k, v in x.items() if k not in ("answer", "task")} for x in ROLLOUTS])
    r = run_main("label-prm", src, "--completer", "toy:tiny", "--out", out)
    _assert_one_line_error(r, rf"{src}: field 'answer': missing in every record")
    r = run_main("label-prm", src, "--completer", "toy:tiny", "--out", out, "--method", "fuzzy")
    _assert_one_line_error(r, r"unknown --method 'fuzzy'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def _cli_rollouts(path):
    """Toy prompts with right and wrong hand-written solutions (the tiny SFT model only completes them)."""
    records = [
        {"id": "a", "prompt": A, "answer": "22", "task": "math", "responses": [S0, S1, S2]},
        {"id": "b", "prompt": B, "answer": "34", "task": "math", "responses": [T0, "30+4=35\nAnswer: 35"]},
        {"id": "c", "prompt": "Compute 11+11.\n", "answer": "22", "task": "math", "responses": ["11+11=22\nAnswer: 22"]},
    ]
    write_jsonl(path, records)
    return records


def test_cli_openrlhf_format_and_resume_after_a_torn_write(sft_run, tmp_path, run_main):
    src, out = tmp_path / "in.jsonl", tmp_path / "steps.jsonl"
    _cli_rollouts(src)
    args = ["label-prm", src, "--completer", sft_run.path, "--out", out, "--n-completions", "2", "--max-new-tokens", "8",
            "--format", "openrlhf", "--json"]
    r = run_main(*args)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    full = read_jsonl(out)
    ids = ["a-0", "a-1", "a-2", "b-0", "b-1", "c-0"]
    assert [x["id"] for x in full] == ids
    assert summary["labelled"] == 6 and summary["steps"] == sum(len(x["labels"]) for x in full) == 15
    # the prefix "20+5=25\n" is shared by a-0 and a-1: 15 steps - 6 last steps - 1 shared = 8 prefixes
    assert summary["prefixes_generated"] == 8
    for x in full:
        assert x["labels"][-1] is (x["completions"][-1] in ("Answer: 22", "Answer: 34"))
        assert x["meta"]["true_labels"] == step_correctness(x["prompt"], x["completions"])
    assert set(summary["truth"]) == {"step_agreement", "first_error_precision", "first_error_recall", "solutions_with_truth"}
    side = read_jsonl(str(out) + ".openrlhf.jsonl")
    assert [x["id"] for x in side] == ids
    for s, x in zip(side, full):
        assert s["input"] == x["prompt"] + "".join(step + " ки\n" for step in x["completions"])
        assert s["value"] == ["+" if lab else "-" for lab in x["labels"]]

    # a crash after two records, mid-way through the third: the torn line is cut, the rest is redone once
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])
    r = run_main(*args)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert (summary["already_done"], summary["labelled"]) == (2, 4)
    again = read_jsonl(out)
    assert [x["id"] for x in again] == ids
    assert again[:2] == full[:2]
    assert [x["labels"][-1] for x in again] == [x["labels"][-1] for x in full]
    assert [x["id"] for x in read_jsonl(str(out) + ".openrlhf.jsonl")] == ids


@pytest.mark.slow
def test_cli_resume_after_sigkill(sft_run, tmp_path, cli, cli_env):
    """SIGKILL a real label-prm process once some records are on disk; the rerun labels each solution exactly once."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 48, seed=3)
    rng = random.Random(0)
    rollouts = [dict(p, responses=list(dict.fromkeys(write_solution(parse_prompt(p["prompt"]), rng, ToyTaskConfig(slip_rate=0.5))[0]
                                                     for _ in range(3)))) for p in prompts]
    write_jsonl(tmp_path / "in.jsonl", rollouts)
    out = tmp_path / "steps.jsonl"
    args = [sys.executable, "-m", "rlhfctl", "label-prm", str(tmp_path / "in.jsonl"), "--completer", str(sft_run.path),
            "--out", str(out), "--n-completions", "4", "--max-new-tokens", "24"]
    proc = subprocess.Popen(args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and out.read_text().count("\n") >= 1):
            assert proc.poll() is None, "label-prm ended before writing anything"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    total = sum(len(r["responses"]) for r in rollouts)
    assert proc.returncode == -signal.SIGKILL
    done_before = len(read_jsonl(out))
    assert 1 <= done_before < total
    again = cli(*args[3:], "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["already_done"] == done_before and summary["labelled"] == total - done_before
    ids = [x["id"] for x in read_jsonl(out)]
    assert sorted(ids) == sorted(f"{r['id']}-{j}" for r in rollouts for j in range(len(r["responses"])))
