import json
import os
import stat

import pytest

from rlhfctl.errors import DataError, RlhfctlError
from rlhfctl.records import (
    KINDS, METRICS, PROMPTS, ROLLOUTS, prompt_id, read_metrics, read_records, write_json, write_jsonl,
)
from rlhfctl.resumable import ResumableWriter

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 2+3.\n"}]

# One record per kind with every optional field, and a chat-message variant (docs/design.md §3).
SAMPLES = {
    "prompts": [
        {"id": "p1", "prompt": "Compute 2+3.\n", "answer": "5", "task": "math", "tests": ["assert f() == 5"],
         "meta": {"source": "toy", "ünïcode": "✓"}, "choices": ["A", "B"]},
        {"id": "p2", "prompt": CHAT, "answer": 5},
    ],
    "sft": [
        {"id": "s1", "prompt": "Compute 2+3.\n", "completion": "2+3=5\nAnswer: 5", "meta": {"clean": "x"}},
        {"id": "s2", "prompt": CHAT, "completion": [{"role": "assistant", "content": "Answer: 5"}]},
    ],
    "rollouts": [
        {"id": "r1", "prompt": "Compute 2+3.\n", "responses": ["Answer: 5", "Answer: 6"], "answer": "5", "task": "math",
         "rewards": [1.0, -0.5], "correct": [True, False], "num_tokens": [9, 9], "finish_reasons": ["stop", "length"],
         "generator": {"model": "toy:tiny", "n": 2}, "meta": {"k": 1}},
        {"id": "r2", "prompt": CHAT, "responses": []},
    ],
    "pairs": [
        {"id": "a1", "prompt": "Compute 2+3.\n", "chosen": "Answer: 5", "rejected": "Answer: 6", "margin": 0.5, "source": "bon"},
        {"id": "a2", "prompt": CHAT, "chosen": [{"role": "assistant", "content": "5"}],
         "rejected": [{"role": "assistant", "content": "6"}]},
    ],
    "binary": [
        {"id": "b1", "prompt": "Compute 2+3.\n", "completion": "Answer: 5", "label": True, "task": "math", "source": "verifier"},
        {"id": "b2", "prompt": CHAT, "completion": [{"role": "assistant", "content": "6"}], "label": False},
    ],
    "steps": [
        {"id": "t1", "prompt": "Compute 2+3-1.\n", "completions": ["2+3=5", "5-1=4", "Answer: 4"],
         "labels": [True, True, True], "answer": "4", "method": "math-shepherd", "n_completions": 8},
        {"id": "t2", "prompt": CHAT, "completions": ["2+3=6"], "labels": [0.25]},
    ],
}


def test_samples_cover_every_kind():
    assert set(SAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    write_jsonl(path, SAMPLES[kind])
    assert read_records(path, kind) == SAMPLES[kind]
    assert read_records(path, KINDS[kind]) == SAMPLES[kind]  # by name or by kind object


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_id_derived_from_prompt_hash_when_absent(tmp_path, kind):
    records = [{k: v for k, v in r.items() if k != "id"} for r in SAMPLES[kind]]
    write_jsonl(tmp_path / "x.jsonl", records)
    if kind == "rollouts":  # rollouts require an id
        with pytest.raises(DataError, match="field 'id': missing"):
            read_records(tmp_path / "x.jsonl", kind)
        return
    got = read_records(tmp_path / "x.jsonl", kind)
    assert [r["id"] for r in got] == [prompt_id(r["prompt"]) for r in records]


def test_prompt_id_is_stable_and_distinguishes_prompts():
    assert prompt_id("Compute 2+3.\n") == prompt_id("Compute 2+3.\n")
    assert len(prompt_id("x")) == 12 and int(prompt_id("x"), 16) >= 0
    assert prompt_id("Compute 2+3.\n") != prompt_id("Compute 2+4.\n")
    # a chat prompt hashes its canonical JSON: key order does not matter
    assert prompt_id([{"role": "user", "content": "a"}]) == prompt_id([{"content": "a", "role": "user"}])
    assert prompt_id([{"role": "user", "content": "a"}]) != prompt_id("a")


def test_integer_ids_become_strings(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"id": 7, "prompt": "a"}\n')
    assert read_records(tmp_path / "p.jsonl", PROMPTS)[0]["id"] == "7"


def test_unknown_fields_travel_untouched(tmp_path):
    rec = {"id": "x", "prompt": "a", "extra": {"nested": [1, 2]}, "weird key": None}
    write_jsonl(tmp_path / "p.jsonl", [rec])
    assert read_records(tmp_path / "p.jsonl", PROMPTS) == [rec]


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": 3}\n')
    with pytest.raises(DataError) as e:
        read_records(path, PROMPTS)
    assert (e.value.line, e.value.field) == (4, "prompt")
    assert str(e.value).startswith(f"{path}:4: field 'prompt': ")


@pytest.mark.parametrize("kind", ["prompts", "rollouts"])
def test_duplicate_ids_rejected_naming_the_line(tmp_path, kind):
    a, b = dict(SAMPLES[kind][0]), dict(SAMPLES[kind][0])
    b["prompt"] = "something else"
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps({"id": "other", "prompt": "z", **({"responses": []} if kind == "rollouts" else {})})
                    + "\n" + json.dumps(a) + "\n\n" + json.dumps(b) + "\n")
    with pytest.raises(DataError, match="appears twice") as e:
        read_records(path, kind)
    assert (e.value.line, e.value.field) == (4, "id")
    assert "line 2" in str(e.value)


def test_duplicate_derived_ids_rejected(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "same"}\n{"prompt": "same"}\n')
    with pytest.raises(DataError, match="appears twice"):
        read_records(path, PROMPTS)


def test_duplicate_prompts_allowed_in_pairs(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [SAMPLES["pairs"][0], SAMPLES["pairs"][0]])
    assert len(read_records(tmp_path / "pairs.jsonl", "pairs")) == 2


@pytest.mark.parametrize(
    "kind,record,field,problem",
    [
        ("prompts", {"answer": "3"}, "prompt", "missing"),
        ("prompts", {"prompt": 3}, "prompt", "expected a string or a non-empty list of chat messages, got a number"),
        ("prompts", {"prompt": []}, "prompt", "non-empty list"),
        ("prompts", {"prompt": [{"role": "user"}]}, "prompt", "message 0"),
        ("prompts", {"prompt": "a", "id": True}, "id", "got a boolean"),
        ("prompts", {"prompt": "a", "answer": [1]}, "answer", "got a list"),
        ("prompts", {"prompt": "a", "meta": "x"}, "meta", "expected an object"),
        ("rollouts", {"id": "a", "prompt": "a", "responses": "x"}, "responses", "expected a list of strings"),
        ("rollouts", {"id": "a", "prompt": "a", "responses": ["x"], "correct": [1]}, "correct", "item 0"),
        ("rollouts", {"id": "a", "prompt": "a", "responses": ["x"], "rewards": ["nan"]}, "rewards", "item 0"),
        ("binary", {"prompt": "a", "completion": "b", "label": 1}, "label", "expected true or false"),
        ("steps", {"prompt": "a", "completions": [], "labels": [True]}, "completions", "non-empty"),
        ("steps", {"prompt": "a", "completions": ["s"], "labels": [1.5]}, "labels", "item 0"),
        ("pairs", {"prompt": "a", "chosen": "b"}, "rejected", "missing"),
        ("pairs", {"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}, "margin", "finite number"),
    ],
)
def test_bad_field_reported_with_file_line_field(tmp_path, kind, record, field, problem):
    path = tmp_path / "bad.jsonl"
    good = SAMPLES[kind][0]
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        read_records(path, kind)
    assert str(e.value).startswith(f"{path}:2: field '{field}': ")
    assert problem in str(e.value)


def test_not_an_object_invalid_json_and_utf8(tmp_path):
    for text, what in [("[1, 2]\n", "expected a JSON object, got a list"), ('{"prompt": "a"\n', "invalid JSON"),
                       (b'{"prompt": "\xff"}\n', "not valid UTF-8")]:
        path = tmp_path / "bad.jsonl"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(DataError, match=what) as e:
            read_records(path, PROMPTS)
        assert e.value.line == 1


def test_empty_file_and_missing_path(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        read_records(tmp_path / "empty.jsonl", PROMPTS)
    assert read_records(tmp_path / "empty.jsonl", PROMPTS, allow_empty=True) == []
    with pytest.raises(RlhfctlError, match="no such file"):
        read_records(tmp_path / "nope.jsonl", PROMPTS)
    with pytest.raises(RlhfctlError, match="is a folder"):
        read_records(tmp_path, PROMPTS)


def test_atomic_writes_leave_no_temporary_files_and_honour_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "sub" / "a.jsonl", SAMPLES["prompts"])
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.jsonl", "b.json", "sub"]
    for p in (tmp_path / "sub" / "a.jsonl", tmp_path / "b.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644  # as open() would make it, not mkstemp's 0600


def test_write_jsonl_dash_goes_to_stdout(capsys):
    write_jsonl("-", SAMPLES["prompts"])
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == SAMPLES["prompts"]


def test_read_from_stdin(monkeypatch, tmp_path):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO('{"prompt": "a"}\n{"prompt": 4}\n'))
    with pytest.raises(DataError, match=r"^<stdin>:2: field 'prompt'"):
        read_records("-", PROMPTS)


# --- ResumableWriter ----------------------------------------------------------------------

def _rollout(i: int) -> dict:
    return {"id": f"r{i}", "prompt": f"p{i}", "responses": [f"answer {i}"]}


def test_writer_creates_no_file_when_nothing_written(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    with ResumableWriter(path, ROLLOUTS) as w:
        assert w.done == set()
    assert not path.exists() and not path.parent.exists()


def test_writer_appends_and_flushes_each_record(tmp_path):
    path = tmp_path / "out.jsonl"
    w = ResumableWriter(path, ROLLOUTS)
    w.write(_rollout(0))
    # flushed before close: another reader sees the complete line already
    assert read_records(path, ROLLOUTS) == [_rollout(0)]
    w.write(_rollout(1))
    w.close()
    assert read_records(path, ROLLOUTS) == [_rollout(0), _rollout(1)]
    assert w.done == {"r0", "r1"}


@pytest.mark.parametrize("torn", ['{"id": "r2", "prompt": "p', '{"id": "r2", "prompt": "p2", "responses": []}',
                                  "\n", '{"id": "r2"\xe9'])
def test_writer_drops_torn_last_line_and_recovers_done_ids(tmp_path, torn):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [_rollout(0), _rollout(1)])
    with open(path, "ab") as f:
        f.write(torn.encode("latin-1"))  # no newline after it: cut mid-write
    w = ResumableWriter(path, ROLLOUTS)
    assert w.done == {"r0", "r1"}
    w.write(_rollout(2))
    w.close()
    assert read_records(path, ROLLOUTS) == [_rollout(0), _rollout(1), _rollout(2)]


def test_writer_drops_a_complete_but_corrupt_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [_rollout(0)])
    with open(path, "a") as f:
        f.write('{"id": "r1", "prom\n')
    w = ResumableWriter(path, ROLLOUTS)
    assert w.done == {"r0"}
    assert path.read_text().count("\n") == 1


def test_writer_refuses_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(_rollout(0)) + "\nnot json\n" + json.dumps(_rollout(1)) + "\n")
    with pytest.raises(DataError, match=":2: invalid JSON"):
        ResumableWriter(path, ROLLOUTS)


def test_writer_custom_key(tmp_path):
    path = tmp_path / "steps.jsonl"
    rec = SAMPLES["steps"][0]
    with ResumableWriter(path, KINDS["steps"], key=lambda r: r["prompt"]) as w:
        w.write(rec)
    assert ResumableWriter(path, KINDS["steps"], key=lambda r: r["prompt"]).done == {rec["prompt"]}


def test_read_metrics_drops_a_torn_last_line_and_names_any_other_bad_line(tmp_path):
    assert read_metrics(tmp_path) == []  # no metrics.jsonl yet
    (tmp_path / METRICS).write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "loss": NaN}\n{"step": 3, "lo')
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] == 0.5
    for bad, problem in [('{"step": 1, "lo\n{"step": 2}\n', "1: invalid JSON"), ('[1]\n{"step": 2}\n', "1: expected a JSON object"),
                         ('{"loss": 1}\n', "1: field 'step': missing"), ('{"step": "1"}\n', "1: field 'step': expected a number")]:
        (tmp_path / METRICS).write_text(bad)
        with pytest.raises(DataError, match=problem):
            read_metrics(tmp_path)
