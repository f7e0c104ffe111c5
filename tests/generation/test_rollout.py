import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import read_jsonl, write_prompts
from rlhfctl.generation.base import SamplingParams
from rlhfctl.generation.rollout import RolloutConfig, run
from rlhfctl.grading import grade
from rlhfctl.records import ROLLOUTS, read_records


def test_rollout_records_and_determinism(toy_dir, tmp_path):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, batch_size=6, seed=1)
    a = run(RolloutConfig(str(toy_dir / "test.jsonl"), "toy:tiny", str(tmp_path / "a.jsonl"), params))
    run(RolloutConfig(str(toy_dir / "test.jsonl"), "toy:tiny", str(tmp_path / "b.jsonl"), params))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert a["prompts"] == a["generated"] == 8 and a["already_done"] == 0 and 0 <= a["accuracy"] <= 1
    prompts = read_records(toy_dir / "test.jsonl", "prompts")
    rollouts = read_records(tmp_path / "a.jsonl", ROLLOUTS)
    assert [r["id"] for r in rollouts] == [p["id"] for p in prompts]
    for p, r in zip(prompts, rollouts):
        assert {k: r[k] for k in p} == p  # the prompt's fields travel through
        assert len(r["responses"]) == len(r["num_tokens"]) == len(r["finish_reasons"]) == len(r["correct"]) == 3
        assert all(1 <= t <= 8 for t in r["num_tokens"]) and set(r["finish_reasons"]) <= {"stop", "length"}
        assert r["correct"] == grade(p, r["responses"])
        assert r["generator"]["model"] == "toy:tiny" and r["generator"]["n"] == 3 and r["generator"]["seed"] == 1
    assert a["new_tokens"] == sum(sum(r["num_tokens"]) for r in rollouts)
    other = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, batch_size=6, seed=2)
    run(RolloutConfig(str(toy_dir / "test.jsonl"), "toy:tiny", str(tmp_path / "c.jsonl"), other))
    assert [r["responses"] for r in read_jsonl(tmp_path / "c.jsonl")] != [r["responses"] for r in rollouts]


def test_rerun_of_a_finished_rollout_does_nothing(toy_dir, tmp_path, monkeypatch):
    params = SamplingParams(n=1, temperature=0, max_new_tokens=4)
    run(RolloutConfig(str(toy_dir / "test.jsonl"), "toy:tiny", str(tmp_path / "r.jsonl"), params))
    before = (tmp_path / "r.jsonl").read_bytes()
    # nothing is left to generate, so no model is loaded
    monkeypatch.setattr("rlhfctl.generation.rollout.make_generator", lambda *a, **k: pytest.fail("a model was loaded"))
    again = run(RolloutConfig(str(toy_dir / "test.jsonl"), "toy:tiny", str(tmp_path / "r.jsonl"), params))
    assert (again["already_done"], again["generated"]) == (8, 0)
    assert (tmp_path / "r.jsonl").read_bytes() == before


def test_out_dash_streams_pure_jsonl_on_stdout(toy_dir, run_main):
    for extra in ([], ["--json"]):
        r = run_main("rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--out", "-", "--n", "2",
                     "--max-new-tokens", "4", *extra)
        assert r.code == 0, r.err
        lines = r.out.splitlines()
        assert len(lines) == 8
        records = [json.loads(line) for line in lines]  # nothing but records: the summary went to stderr
        assert all(len(rec["responses"]) == 2 for rec in records)
        assert "generated" in r.err


def _count_lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _start_until_lines(args: list[str], out, lines: int, log_path, env) -> subprocess.Popen:
    """Start ``rlhfctl ARGS`` in a subprocess (output to ``log_path``) and return it once ``out`` holds ``lines`` lines;
    a run that ends or writes nothing for 240 s fails the test (and is killed)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlhfctl", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while _count_lines(out) < lines:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.005)
    except BaseException:
        proc.kill()
        proc.wait(timeout=60)
        raise
    return proc


def test_rollout_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path, cli_env, run_main):
    """SIGKILL a rollout once a few prompts are on disk, tear its last line, rerun the same command (in this
    process, to spare a second interpreter start-up): every prompt exactly once, as an unbroken run gives it."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    out = tmp_path / "rollouts.jsonl"
    args = ["rollout", str(tmp_path / "prompts.jsonl"), "--model", "toy:tiny", "--out", str(out), "--n", "2",
            "--batch-size", "2", "--max-new-tokens", "16", "--seed", "0"]
    proc = _start_until_lines(args, out, 3, tmp_path / "first.log", cli_env)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _count_lines(out)
    assert 3 <= done_at_kill < 40, "the run was not killed mid-way"
    kept = read_jsonl(out)[:done_at_kill]
    # a kill in the middle of a write leaves a torn line, here for the next prompt in order
    missing = [p for p in prompts if p["id"] not in {r["id"] for r in kept}]
    with open(out, "a") as f:
        f.write(json.dumps({"id": missing[0]["id"], "prompt": missing[0]["prompt"], "responses": ["tor"]})[:-7])

    again = run_main(*args, "--json")
    assert again.code == 0, again.err
    summary = json.loads(again.out)
    assert (summary["already_done"], summary["generated"]) == (done_at_kill, 40 - done_at_kill)

    records = read_records(out, ROLLOUTS)  # parses every line and rejects duplicate ids
    assert sorted(r["id"] for r in records) == sorted(p["id"] for p in prompts)
    assert records[:done_at_kill] == kept  # what was on disk stays as it was
    # nothing was lost or changed by the kill: the same records as an unbroken run
    reference = tmp_path / "reference.jsonl"
    run(RolloutConfig(str(tmp_path / "prompts.jsonl"), "toy:tiny", str(reference),
                      SamplingParams(n=2, temperature=1.0, max_new_tokens=16, batch_size=2, seed=0)))
    assert {r["id"]: r for r in records} == {r["id"]: r for r in read_records(reference, ROLLOUTS)}


def test_resume_cut_mid_batch_and_other_batch_sizes_give_the_same_file(tmp_path):
    """Each prompt samples from its own seed: a run cut between two lines of one batch and resumed, or run with
    another --batch-size, writes the bytes of an unbroken run."""
    write_prompts(tmp_path / "prompts.jsonl", 40)

    def rollout(name: str, batch_size: int) -> bytes:
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, batch_size=batch_size, seed=3)
        run(RolloutConfig(str(tmp_path / "prompts.jsonl"), "toy:tiny", str(tmp_path / name), params))
        return (tmp_path / name).read_bytes()

    unbroken = rollout("unbroken.jsonl", 16)  # 8 prompts a batch
    lines = unbroken.splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:11]) + lines[11][:30])  # killed mid-way through the second batch, mid-write
    assert rollout("cut.jsonl", 16) == unbroken
    assert rollout("other.jsonl", 6) == unbroken
    assert rollout("one.jsonl", 1) == unbroken


def _one_line_error(result, pattern):
    import re

    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), result.err


@pytest.mark.parametrize("content", [b"my notes on the run\n", b"my notes, no newline", b"{\n  \"a\": 1\n}\n",
                                     b'{"prompt": "Compute 1+2.\\n", "answer": "3"}\n', b""])
def test_an_out_that_is_not_a_rollout_file_is_refused_and_kept(toy_dir, tmp_path, run_main, content):
    """User notes, a JSON document, a prompts file: refused in one line, byte for byte as they were.
    An empty file holds nothing to lose, so a rollout fills it."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    r = run_main("rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--out", out, "--n", "1", "--max-new-tokens", "4")
    if not content:
        assert r.code == 0, r.err
        assert len(read_records(out, ROLLOUTS)) == 8
        return
    _one_line_error(r, rf"^error: {out}:1: .*pass another --out, or delete the file to start over$")
    assert out.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


@pytest.mark.parametrize("flag,old,new", [("--n", "1", "2"), ("--model", "toy:tiny", "toy:small"), ("--seed", "0", "1"),
                                          ("--max-new-tokens", "4", "5"), ("--temperature", "1.0", "0.5")])
def test_resuming_with_other_settings_is_refused(toy_dir, tmp_path, run_main, flag, old, new):
    out = tmp_path / "out.jsonl"
    base = {"--model": "toy:tiny", "--n": "1", "--max-new-tokens": "4", "--seed": "0", "--temperature": "1.0"}
    args = lambda settings: [x for kv in settings.items() for x in kv]  # noqa: E731
    r = run_main("rollout", toy_dir / "test.jsonl", "--out", out, *args(base))
    assert r.code == 0, r.err
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]) + lines[3][:20])  # killed mid-run: a resumable file
    before = out.read_bytes()
    r = run_main("rollout", toy_dir / "test.jsonl", "--out", out, *args({**base, flag: new}))
    _one_line_error(r, rf"^error: {out}:1: written with {flag} {old}, this run has {flag} {new} "
                       r"\(rerun with the same settings to resume\); pass another --out, or delete the file to start over$")
    assert out.read_bytes() == before
    r = run_main("rollout", toy_dir / "test.jsonl", "--out", out, *args(base), "--batch-size", "3")  # the same settings
    assert r.code == 0, r.err
    assert len(read_records(out, ROLLOUTS)) == 8


def test_a_second_rollout_on_one_out_is_refused_and_a_killed_ones_lock_taken_over(tmp_path, cli_env, run_main):
    """A rollout starts (and is paused, so it cannot finish first); a second one on its --out is refused naming
    it (exit 2, one line). The first is then killed, leaving its lock: the rerun takes it over and the file ends
    with each prompt once."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    out = tmp_path / "rollouts.jsonl"
    args = ["rollout", str(tmp_path / "prompts.jsonl"), "--model", "toy:tiny", "--out", str(out), "--n", "2",
            "--batch-size", "2", "--max-new-tokens", "16"]
    first = _start_until_lines(args, out, 2, tmp_path / "first.log", cli_env)
    try:
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before it was paused"
        second = run_main(*args)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=60)
    assert second.code == 2, second.err
    assert second.err.strip().splitlines() == [
        f"error: {out}: another run is writing it (pid {first.pid}, since {json.loads((tmp_path / 'rollouts.jsonl.lock').read_text())['since']}); "
        "wait for it to finish or pass another --out"]
    again = run_main(*args)
    assert again.code == 0, again.err
    assert f"{out}: took over the lock of a run that is gone (pid {first.pid}, since " in again.err
    records = read_records(out, ROLLOUTS)  # rejects an id written twice
    assert sorted(r["id"] for r in records) == sorted(p["id"] for p in prompts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log", "prompts.jsonl", "rollouts.jsonl"]


def test_prompts_longer_than_the_context_are_skipped_and_counted(tmp_path, run_main):
    """toy:tiny reads 512 tokens, one a character plus <bos>: with 16 new tokens a prompt may have 495 characters.
    A 1 MB prompt is skipped at once, without tokenising all of it; the others are sampled."""
    import time as clock

    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    edge = [{"id": "fits", "prompt": "x" * 495}, {"id": "over", "prompt": "y" * 496}, {"id": "huge", "prompt": "z" * 1_000_000}]
    with open(tmp_path / "prompts.jsonl", "a") as f:
        f.writelines(json.dumps(p) + "\n" for p in edge)
    tic = clock.perf_counter()
    r = run_main("rollout", tmp_path / "prompts.jsonl", "--model", "toy:tiny", "--out", tmp_path / "r.jsonl", "--n", "1",
                 "--max-new-tokens", "16", "--json")
    assert r.code == 0, r.err
    assert clock.perf_counter() - tic < 30
    assert "skipped 2 prompts longer than the model's context (496 tokens: 512 less --max-new-tokens 16)" in r.err
    summary = json.loads(r.out)
    assert (summary["prompts"], summary["generated"], summary["skipped_too_long"]) == (6, 4, 2)
    assert [x["id"] for x in read_records(tmp_path / "r.jsonl", ROLLOUTS)] == [p["id"] for p in prompts] + ["fits"]
    r = run_main("rollout", tmp_path / "prompts.jsonl", "--model", "toy:tiny", "--out", tmp_path / "r600.jsonl", "--n", "1",
                 "--max-new-tokens", "600")
    assert not (tmp_path / "r600.jsonl").exists()
    assert r.code == 2 and "--max-new-tokens 600 leaves no room for a prompt in the model's context (512 tokens)" in r.err


class _WordTokenizer:
    """One token a whitespace-separated word; remembers the longest text it was given."""

    def __init__(self):
        self.longest = 0

    def __call__(self, text, add_special_tokens=True):
        self.longest = max(self.longest, len(text))
        return {"input_ids": [0] * len(text.split())}


@pytest.mark.parametrize("word", [1, 50])
def test_too_long_counts_tokens_and_reads_only_what_it_needs(word):
    """Tokens, not characters, decide, also where a token spans many characters (50 here, past the first
    look's 8 a token); a text far past the limit is decided from its start."""
    from rlhfctl.generation.rollout import too_long

    tok = _WordTokenizer()
    text = lambda words: ("a" * word + " ") * words  # noqa: E731
    assert not too_long(text(100), tok, 100)
    assert too_long(text(101), tok, 100)
    huge = text(1_000_000)
    tok.longest = 0
    assert too_long(huge, tok, 100)
    assert tok.longest < 50 * 101 * 8 < len(huge)


def test_chat_prompts_render_through_the_chat_template(tmp_path):
    """A chat prompt samples what its rendered text would, and keeps its message list in the record."""
    chat = [{"role": "user", "content": "Compute 12+30."}]
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "chat", "prompt": chat}) + "\n"
                                      + json.dumps({"id": "text", "prompt": "Compute 12+30.\n"}) + "\n")
    params = SamplingParams(n=2, temperature=0, max_new_tokens=8)
    summary = run(RolloutConfig(str(tmp_path / "p.jsonl"), "toy:tiny", str(tmp_path / "r.jsonl"), params))
    assert "accuracy" not in summary  # nothing to grade
    chat_rec, text_rec = read_records(tmp_path / "r.jsonl", ROLLOUTS)
    assert chat_rec["prompt"] == chat and "correct" not in chat_rec
    assert chat_rec["responses"] == text_rec["responses"]


def test_prompts_from_stdin(toy_dir, tmp_path, run_main, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO((toy_dir / "test.jsonl").read_text()))
    r = run_main("rollout", "-", "--model", "toy:tiny", "--out", tmp_path / "r.jsonl", "--n", "1", "--max-new-tokens", "4",
                 "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["generated"] == 8 and len(read_records(tmp_path / "r.jsonl", ROLLOUTS)) == 8
