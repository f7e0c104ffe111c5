"""build-prefs (verified and import modes) and reading prefs files, on hand-written records."""

import json
import re

import pytest

from conftest import read_jsonl
from rlhfctl.errors import DataError
from rlhfctl.records import write_jsonl
from rlhfctl.rm.data import read_preferences

# Four prompts: one mixed with a duplicate correct response, one all right, one all wrong, one mixed.
ROLLOUTS = [
    {"id": "p1", "prompt": "Compute 2+3.\n", "answer": "5",
     "responses": ["Answer: 5", "Answer: 6", "Answer: 7", "Answer: 5"], "correct": [True, False, False, True]},
    {"id": "p2", "prompt": "Compute 4+4.\n", "answer": "8",
     "responses": ["Answer: 8", "4+4=8\nAnswer: 8"], "correct": [True, True]},
    {"id": "p3", "prompt": "Compute 9-1.\n", "answer": "8",
     "responses": ["Answer: 7", "Answer: 9", "Answer: 7"], "correct": [False, False, False]},
    {"id": "p4", "prompt": "Compute 6+1.\n", "answer": "7",
     "responses": ["Answer: 7", "6+1=7\nAnswer: 7", "Answer: 8"], "correct": [True, True, False]},
]
ALL_RIGHT_OR_WRONG = "no correct/incorrect pair (all right or all wrong)"


def _sets(r):
    good = {t for t, ok in zip(r["responses"], r["correct"]) if ok}
    bad = {t for t, ok in zip(r["responses"], r["correct"]) if not ok}
    return good, bad


def _assert_one_line_error(result, pattern):
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture
def rollouts_file(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    write_jsonl(path, ROLLOUTS)
    return path


@pytest.mark.parametrize("pairs_per_prompt,binary_per_prompt", [(1, 0), (2, 3), (5, 1)])
def test_verified_pairs_and_binary(rollouts_file, tmp_path, run_main, pairs_per_prompt, binary_per_prompt):
    out = tmp_path / "prefs.jsonl"
    r = run_main("build-prefs", rollouts_file, "--out", out, "--pairs-per-prompt", pairs_per_prompt,
                 "--binary-per-prompt", binary_per_prompt, "--json")
    assert r.code == 0, r.err
    records = read_jsonl(out)
    by_prompt = {x["prompt"]: x for x in ROLLOUTS}
    pairs = [x for x in records if "chosen" in x]
    binary = [x for x in records if "completion" in x]
    assert len(pairs) + len(binary) == len(records)
    for rollout in ROLLOUTS:
        good, bad = _sets(rollout)
        mine = [(p["chosen"], p["rejected"]) for p in pairs if p["prompt"] == rollout["prompt"]]
        # chosen is a correct response and rejected an incorrect one of the *same* prompt, no pair twice
        assert all(c in good and rj in bad for c, rj in mine)
        assert len(set(mine)) == len(mine) == min(pairs_per_prompt, len(good) * len(bad))
        items = [(b["completion"], b["label"]) for b in binary if b["prompt"] == rollout["prompt"]]
        assert len(set(items)) == len(items) == min(binary_per_prompt, len(good) + len(bad))
        assert all((t in good) if ok else (t in bad) for t, ok in items)
    assert {p["source"] for p in records} == {"verified"}
    assert all(p["prompt"] in by_prompt for p in records)
    # p2 (all right) and p3 (all wrong) give no pair; both are counted
    summary = json.loads(r.out)
    assert summary["dropped"] == {ALL_RIGHT_OR_WRONG: 2}
    assert (summary["prompts"], summary["pairs"], summary["binary"]) == (4, len(pairs), len(binary))
    if binary:
        assert summary["binary_positive_fraction"] == pytest.approx(sum(b["label"] for b in binary) / len(binary))
    manifest = json.loads((tmp_path / "prefs.jsonl.manifest.json").read_text())
    assert manifest["command"] == "build-prefs"
    assert manifest["results"] == summary
    assert manifest["options"]["pairs_per_prompt"] == pairs_per_prompt
    assert manifest["options"]["binary_per_prompt"] == binary_per_prompt
    assert manifest["inputs"]["source"]["path"] == str(rollouts_file)


def test_verified_is_seeded(rollouts_file, tmp_path, run_main):
    outs = []
    for name, seed in (("a", 0), ("b", 0)):
        r = run_main("build-prefs", rollouts_file, "--out", tmp_path / f"{name}.jsonl", "--pairs-per-prompt", "1",
                     "--binary-per-prompt", "2", "--seed", seed)
        assert r.code == 0, r.err
        outs.append((tmp_path / f"{name}.jsonl").read_text())
    assert outs[0] == outs[1]


def test_max_prompts(rollouts_file, tmp_path, run_main):
    out = tmp_path / "prefs.jsonl"
    r = run_main("build-prefs", rollouts_file, "--out", out, "--max-prompts", "2", "--pairs-per-prompt", "4", "--json")
    assert r.code == 0, r.err
    records = read_jsonl(out)
    assert {x["prompt"] for x in records} == {ROLLOUTS[0]["prompt"]}  # p2 (the other of the first two) is all right
    assert len(records) == 2  # p1: 1 distinct correct x 2 incorrect
    summary = json.loads(r.out)
    assert summary["prompts"] == 2 and summary["dropped"] == {ALL_RIGHT_OR_WRONG: 1}


def test_import_with_custom_keys(tmp_path, run_main):
    src = tmp_path / "hub.jsonl"
    rows = [
        {"q": "Say hi.", "good": "Hi!", "bad": "No.", "margin": 0.5, "extra": 1},
        {"q": "Say bye.", "good": "Bye!", "bad": "Bye!"},  # chosen == rejected: dropped
        {"q": "Say yes.", "good": "Yes.", "bad": "Nope."},
        {"q": "Say no.", "good": "No.", "bad": "Yes."},
    ]
    write_jsonl(src, rows)
    out = tmp_path / "prefs.jsonl"
    r = run_main("build-prefs", src, "--mode", "import", "--out", out, "--prompt-key", "q", "--chosen-key", "good",
                 "--rejected-key", "bad", "--json")
    assert r.code == 0, r.err
    records = read_jsonl(out)
    assert [(x["prompt"], x["chosen"], x["rejected"]) for x in records] == [
        ("Say hi.", "Hi!", "No."), ("Say yes.", "Yes.", "Nope."), ("Say no.", "No.", "Yes.")]
    assert records[0]["margin"] == 0.5 and "margin" not in records[1]
    assert {x["source"] for x in records} == {"import"}
    summary = json.loads(r.out)
    assert summary["pairs"] == 3 and summary["binary"] == 0 and summary["prompts"] == 3
    assert summary["dropped"] == {"chosen equals rejected": 1}
    assert json.loads((tmp_path / "prefs.jsonl.manifest.json").read_text())["results"]["dropped"] == {"chosen equals rejected": 1}
    # --max-prompts caps the records kept
    r = run_main("build-prefs", src, "--mode", "import", "--out", tmp_path / "two.jsonl", "--prompt-key", "q",
                 "--chosen-key", "good", "--rejected-key", "bad", "--max-prompts", "2")
    assert r.code == 0, r.err
    assert [x["prompt"] for x in read_jsonl(tmp_path / "two.jsonl")] == ["Say hi.", "Say yes."]
    # the default keys do not exist in this file: the error names the line and the key
    r = run_main("build-prefs", src, "--mode", "import", "--out", tmp_path / "bad.jsonl")
    _assert_one_line_error(r, re.escape(f"{src}:1: field 'chosen': missing: expected chosen/rejected, responses with scores"))
    assert not (tmp_path / "bad.jsonl").exists()


USER = {"role": "user", "content": "Name a prime."}
SYS = {"role": "system", "content": "Be brief."}


def _say(text):
    return {"role": "assistant", "content": text}


def test_import_public_preference_formats(tmp_path, run_main):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        # TRL implicit prompt, strings: the shared beginning is the prompt, the space goes with the answers
        {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"},
        # TRL implicit prompt, conversations: the shared turns are the prompt
        {"chosen": [SYS, USER, _say("7")], "rejected": [SYS, USER, _say("8")]},
        # UltraFeedback-binarized: a string prompt and conversations that repeat it
        {"prompt": "Name a prime.", "chosen": [USER, _say("3")], "rejected": [USER, _say("9")]},
        # scored response sets, two layouts; a set whose scores all tie is dropped
        {"prompt": "Pick.", "responses": ["a", "b", "c"], "scores": [1.0, 3.5, -2]},
        {"prompt": "Pick.", "completions": [{"response": "x", "overall_score": 2}, {"text": "y", "score": 7}]},
        {"prompt": "Tie.", "responses": ["a", "b"], "scores": [1, 1]},
    ]
    src = tmp_path / "public.parquet"
    write_jsonl(tmp_path / "public.jsonl", rows)
    out = tmp_path / "prefs.jsonl"
    r = run_main("build-prefs", tmp_path / "public.jsonl", "--mode", "import", "--out", out, "--json")
    assert r.code == 0, r.err
    got = [(x["prompt"], x["chosen"], x["rejected"]) for x in read_jsonl(out)]
    assert got == [
        ("Q: 2+2? A:", " 4", " 5"),
        ([SYS, USER], [_say("7")], [_say("8")]),
        ([USER], [_say("3")], [_say("9")]),
        ("Pick.", "b", "c"),
        ("Pick.", "y", "x"),
    ]
    assert json.loads(r.out)["dropped"] == {"all responses scored the same": 1}
    # the same pairs from Parquet, whose empty cells are absent fields
    table_rows = rows[:1] + rows[3:4]
    pq.write_table(pa.table({"chosen": [r.get("chosen") for r in table_rows], "rejected": [r.get("rejected") for r in table_rows],
                             "prompt": [r.get("prompt") for r in table_rows], "responses": [r.get("responses") for r in table_rows],
                             "scores": [r.get("scores") for r in table_rows]}), src)
    r = run_main("build-prefs", src, "--mode", "import", "--out", tmp_path / "pq.jsonl")
    assert r.code == 0, r.err
    assert [(x["prompt"], x["chosen"]) for x in read_jsonl(tmp_path / "pq.jsonl")] == [("Q: 2+2? A:", " 4"), ("Pick.", "b")]


def _outputs(tmp_path, keep):
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)


def test_verified_needs_correct(tmp_path, run_main):
    src = tmp_path / "rollouts.jsonl"
    ungraded = {k: v for k, v in ROLLOUTS[1].items() if k != "correct"}
    write_jsonl(src, [ROLLOUTS[0], ungraded, ROLLOUTS[2]])
    r = run_main("build-prefs", src, "--out", tmp_path / "prefs.jsonl")
    _assert_one_line_error(r, "^error: " + re.escape(f"{src}:2: field 'correct': missing"))
    assert _outputs(tmp_path, {"rollouts.jsonl"}) == []


def test_verified_correct_length_mismatch(tmp_path, run_main):
    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, [dict(ROLLOUTS[0], correct=[True, False])])
    r = run_main("build-prefs", src, "--out", tmp_path / "prefs.jsonl")
    _assert_one_line_error(r, re.escape(f"{src}:1: field 'correct': has 2 entries for 4 responses"))
    assert _outputs(tmp_path, {"rollouts.jsonl"}) == []


@pytest.mark.parametrize("args,pattern", [
    (["--pairs-per-prompt", "0"], r"--pairs-per-prompt must be at least 1, got 0"),
    (["--binary-per-prompt", "-1"], r"--binary-per-prompt must be >= 0"),
    (["--max-prompts", "0"], r"--max-prompts must be at least 1"),
    (["--mode", "rm"], r"--mode rm needs --rm DIR"),
    (["--mode", "best"], r"unknown --mode 'best'"),
], ids=["pairs0", "binary-neg", "max-prompts0", "rm-without-rm", "mode"])
def test_bad_flags(rollouts_file, tmp_path, run_main, args, pattern):
    r = run_main("build-prefs", rollouts_file, "--out", tmp_path / "prefs.jsonl", *args)
    _assert_one_line_error(r, pattern)
    assert _outputs(tmp_path, {"rollouts.jsonl"}) == []


def test_nothing_to_build_is_an_error(tmp_path, run_main):
    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, [ROLLOUTS[1], ROLLOUTS[2]])
    r = run_main("build-prefs", src, "--out", tmp_path / "prefs.jsonl")
    _assert_one_line_error(r, r"no preference records could be built \(2 prompts: no correct/incorrect pair")
    assert _outputs(tmp_path, {"rollouts.jsonl"}) == []


def test_contradictory_grades_give_no_pair_with_itself(tmp_path, run_main):
    """The same text graded both ways (a flaky code sandbox, a hand edit) must not pair with itself."""
    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, [{"id": "x", "prompt": "Compute 1+1.\n", "responses": ["Answer: 2", "Answer: 2", "Answer: 3"],
                       "correct": [True, False, False]}])
    out = tmp_path / "prefs.jsonl"
    r = run_main("build-prefs", src, "--out", out, "--pairs-per-prompt", "5", "--json")
    assert r.code == 0, r.err
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(out)] == [("Answer: 2", "Answer: 3")]
    assert json.loads(r.out)["dropped"] == {"chosen equals rejected": 1}


# --- reading prefs files (train-rm, eval --rm) -------------------------------------------------------

def test_read_preferences_mixes_kinds_and_drops_equal_pairs(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_jsonl(path, [
        {"prompt": "a", "chosen": "x", "rejected": "y", "margin": 1.0},
        {"prompt": "a", "completion": "x", "label": True},
        {"prompt": "b", "chosen": "z", "rejected": "z"},
        {"prompt": [{"role": "user", "content": "c"}], "chosen": [{"role": "assistant", "content": "u"}],
         "rejected": [{"role": "assistant", "content": "u"}]},
        {"prompt": "b", "completion": "w", "label": False},
    ])
    data = read_preferences([str(path)])
    assert [(r["chosen"], r["rejected"]) for r in data.pairs] == [("x", "y")]
    assert [(r["completion"], r["label"]) for r in data.binary] == [("x", True), ("w", False)]
    assert data.dropped == {"chosen equals rejected": 2}


@pytest.mark.parametrize("lines,line,pattern", [
    ([{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "a", "response": "x"}], 2, "unknown record kind"),
    ([{"prompt": "a", "chosen": "x"}], 1, "unknown record kind"),
    ([{"prompt": "a", "completion": "x", "label": "yes"}], 1, "field 'label': expected true or false"),
    ([{"prompt": "a", "chosen": "x", "rejected": "y", "margin": "big"}], 1, "field 'margin'"),
])
def test_read_preferences_errors_name_the_line(tmp_path, lines, line, pattern):
    path = tmp_path / "prefs.jsonl"
    write_jsonl(path, lines)
    with pytest.raises(DataError) as e:
        read_preferences([str(path)])
    assert e.value.line == line
    assert str(e.value).startswith(f"{path}:{line}: ") and pattern in str(e.value)


def test_read_preferences_empty_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_preferences([str(path)])


def test_out_dash_writes_jsonl_to_stdout(rollouts_file, tmp_path, run_main):
    r = run_main("build-prefs", rollouts_file, "--out", "-", "--pairs-per-prompt", "2")
    assert r.code == 0, r.err
    records = [json.loads(line) for line in r.out.splitlines()]
    assert len(records) == 4 and all("chosen" in x for x in records)  # p1 and p4: two pairs each
    assert _outputs(tmp_path, {"rollouts.jsonl"}) == []  # no manifest either
