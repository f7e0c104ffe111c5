import json
import os
import re
import socket
import subprocess
import sys

import pytest

from rlhfctl.locks import OutputLocked, lock_path, locked


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid now (barring reuse within the test)


def test_a_file_is_locked_beside_it_and_the_lock_goes_at_exit(tmp_path):
    out = tmp_path / "r.jsonl"
    with locked(out) as where:
        assert where == tmp_path / "r.jsonl.lock" == lock_path(out)
        owner = json.loads(where.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["since"]
    assert not where.exists() and not out.exists()


def test_the_lock_goes_when_the_run_fails_and_made_folders_too(tmp_path):
    out = tmp_path / "a" / "b" / "r.jsonl"
    with pytest.raises(RuntimeError):
        with locked(out):
            assert (tmp_path / "a" / "b" / "r.jsonl.lock").exists()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_locked_inside_it(tmp_path):
    assert lock_path(tmp_path) == tmp_path / ".lock"
    assert lock_path(tmp_path / "run", folder=True) == tmp_path / "run" / ".lock"
    with locked(tmp_path / "run", folder=True) as where:
        assert where == tmp_path / "run" / ".lock" and where.exists()
    assert not (tmp_path / "run").exists()


def test_stdout_needs_no_lock(tmp_path):
    with locked("-") as where:
        assert where is None


def test_a_second_run_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "r.jsonl"
    with locked(out) as where:
        since = json.loads(where.read_text())["since"]
        with pytest.raises(OutputLocked, match=rf"^{out}: another run is writing it \(pid {os.getpid()}, since {re.escape(since)}\)"):
            with locked(out):
                pass
        assert where.exists()  # the refused run leaves the first one's lock alone
    assert not where.exists()


def test_the_stale_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    dead = _dead_pid()
    (tmp_path / "r.jsonl.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "since": "2024-01-01T00:00:00"}))
    with locked(out) as where:
        assert json.loads(where.read_text())["pid"] == os.getpid()
    assert not where.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{out}: took over the lock of a run that is gone (pid {dead}, since 2024-01-01T00:00:00)"]


def test_a_lock_from_another_host_is_not_guessed_stale(tmp_path):
    out = tmp_path / "r.jsonl"
    lock = tmp_path / "r.jsonl.lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.example", "since": "2024-01-01T00:00:00"}))
    with pytest.raises(OutputLocked, match=r"on elsewhere\.example, since 2024-01-01T00:00:00"):
        with locked(out):
            pass
    assert lock.exists()  # not ours to remove


def test_an_unreadable_lock_is_refused_with_its_path(tmp_path):
    lock = tmp_path / "r.jsonl.lock"
    lock.write_text("garbage")
    with pytest.raises(OutputLocked, match=rf"lock file {lock}, owner unreadable\); wait for it, or delete {lock}"):
        with locked(tmp_path / "r.jsonl"):
            pass
