"""The code sandbox against hostile programs: each is stopped, and the host and
the runs beside it are unharmed.

Safe on a shared 2-core machine even if the sandbox were broken: every hostile
program here bounds itself (the fork bomb makes at most 2**8 sleeping
processes, the memory hog stops at 4 GB, the printer at 2 GB), so the worst
case is a short, bounded load, not a dead machine. Limits are tight (1 s CPU,
2 s wall) so the whole file runs in about 15 seconds.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from rlhfctl.errors import ConfigError
from rlhfctl.grading import sandbox
from rlhfctl.grading.sandbox import Limits, python_job

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the sandbox needs Linux")

TIGHT = Limits(cpu_s=1, wall_s=2, memory_mb=256, processes=16, output_bytes=1 << 16)

FORK_BOMB = """
import os, time
failed = 0
for _ in range(8):  # doubling, like a fork bomb, but at most 2**8 processes
    try:
        os.fork()
    except OSError:
        failed += 1
print("alive", failed, flush=True)
time.sleep(30)
"""
MEMORY_HOG = """
chunks = []
for _ in range(400):  # 4 GB at most
    chunks.append(bytearray(10**7))
print("allocated everything")
"""
PRINTER = """
import sys
for _ in range(2**15):  # 2 GB at most
    sys.stdout.write("x" * 2**16)
"""
ESCAPE_SETSID = """
import os, time
if os.fork() == 0:
    os.setsid()  # leave the process group, to outlive the run
    time.sleep(30)
print("parent done")
"""


def _processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _run_uid(result: sandbox.RunResult) -> int | None:
    return next((int(e.split(":")[1]) for e in result.enforced if e.startswith("uid:")), None)


def _assert_nothing_left(result: sandbox.RunResult) -> None:
    """No process of the run survives it (checked by its uid, where it had one of its own)."""
    uid = _run_uid(result)
    if uid is not None:
        assert _processes_of_uid(uid) == []


def test_an_honest_program_runs_with_stdin_in_a_fresh_folder():
    source = "import os, sys\nprint(sys.stdin.read().upper(), end='')\nprint(sorted(os.listdir('.')))"
    result = sandbox.run(python_job(source, "hello\n", TIGHT))
    assert result.status == "ok" and result.returncode == 0
    assert result.stdout == "HELLO\n['main.py']\n"
    assert "rlimits" in result.enforced


def test_what_this_machine_enforces_is_reported():
    enforced = sandbox.ensure_working()
    assert "rlimits" in enforced and "no-new-privs" in enforced
    if os.geteuid() == 0:
        assert any(e.startswith("uid:") for e in enforced)


def test_an_endless_loop_is_killed_at_the_cpu_limit():
    result = sandbox.run(python_job("while True:\n    pass", "", TIGHT))
    assert result.status in ("signal", "timeout") and not result.ok
    assert result.wall_s < TIGHT.wall_s + 1


def test_a_sleeping_program_is_killed_at_the_wall_limit():
    result = sandbox.run(python_job("import time\nprint('started', flush=True)\ntime.sleep(60)", "", TIGHT))
    assert result.status == "timeout" and result.stdout == "started\n"
    assert TIGHT.wall_s <= result.wall_s < TIGHT.wall_s + 1
    _assert_nothing_left(result)


def test_a_fork_bomb_is_capped_and_killed():
    result = sandbox.run(python_job(FORK_BOMB, "", TIGHT))
    assert not result.ok
    survivors = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("alive")]
    assert 1 <= len(survivors) <= TIGHT.processes, result.stdout
    assert sum(survivors) > 0  # forks were refused, not just slow
    _assert_nothing_left(result)


def test_unbounded_allocation_fails_at_the_memory_limit():
    result = sandbox.run(python_job(MEMORY_HOG, "", TIGHT))
    assert not result.ok and "allocated everything" not in result.stdout
    assert result.status in ("exit", "signal")  # MemoryError (RLIMIT_AS) or the cgroup's OOM kill


def test_writes_outside_the_work_folder_do_not_happen():
    # A world-writable folder: only the sandbox (not file permissions) can keep the program out.
    target_dir = Path(tempfile.mkdtemp(prefix="rlhfctl-test-open-"))
    target_dir.chmod(0o1777)
    marker = f"escape-{uuid.uuid4().hex}"
    outside_existed = os.path.exists("/tmp/outside")
    targets = ["/tmp/outside", f"/tmp/{marker}", str(target_dir / marker), f"../{marker}", "/dev/shm/" + marker]
    source = (f"targets = {targets!r}\n"
              "for path in targets:\n"
              "    try:\n"
              "        open(path, 'w').write('x')\n"
              "        print('WROTE', path)\n"
              "    except OSError as e:\n"
              "        print('blocked', path, e.errno)\n"
              "open('inside.txt', 'w').write('fine')\n"
              "print(open('inside.txt').read())\n")
    try:
        result = sandbox.run(python_job(source, "", TIGHT))
        assert result.status == "ok", result.stderr
        assert "WROTE" not in result.stdout and result.stdout.count("blocked") == len(targets)
        assert result.stdout.rstrip().endswith("fine")  # its own folder is writable
        assert not (target_dir / marker).exists() and not Path("/tmp", marker).exists()
        assert not Path("/dev/shm", marker).exists()
        if not outside_existed:
            assert not os.path.exists("/tmp/outside")
    finally:
        for path in (target_dir / marker, Path("/tmp", marker), Path("/dev/shm", marker)):
            path.unlink(missing_ok=True)
        target_dir.rmdir()


def test_no_network_not_even_the_hosts_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        source = ("import socket\n"
                  "for host in ('127.0.0.1', '1.1.1.1'):\n"
                  "    try:\n"
                  f"        socket.create_connection((host, {port}), timeout=1).sendall(b'hi')\n"
                  "        print('CONNECTED', host)\n"
                  "    except OSError as e:\n"
                  "        print('refused', host, e.errno)\n")
        result = sandbox.run(python_job(source, "", TIGHT))
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # the kernel would have queued any connection made
            server.accept()
    assert result.status == "ok", result.stderr
    assert "CONNECTED" not in result.stdout and result.stdout.count("refused") == 2


def test_printing_gigabytes_is_cut_off():
    tic = time.monotonic()
    result = sandbox.run(python_job(PRINTER, "", TIGHT))
    assert result.status == "output-limit" and not result.ok
    assert len(result.stdout) <= TIGHT.output_bytes + (1 << 16)
    assert time.monotonic() - tic < TIGHT.wall_s


def test_a_child_that_leaves_the_process_group_dies_with_the_run():
    result = sandbox.run(python_job(ESCAPE_SETSID, "", TIGHT))
    assert result.stdout == "parent done\n"
    assert result.wall_s < TIGHT.wall_s  # the straggler did not hold the run open
    _assert_nothing_left(result)


def test_hostile_programs_in_parallel_do_not_harm_honest_ones():
    honest = [python_job("print(int(input()) * 2)", f"{i}\n", TIGHT) for i in range(4)]
    hostile = [python_job(src, "", TIGHT) for src in (FORK_BOMB, MEMORY_HOG, PRINTER, "while True:\n    pass")]
    results = sandbox.run_many([j for pair in zip(hostile, honest) for j in pair], workers=4)
    for i, result in enumerate(results[1::2]):
        assert result.status == "ok" and result.stdout == f"{2 * i}\n", result
    assert not any(r.ok for r in results[0::2])


def test_work_folders_and_cgroups_are_removed(monkeypatch):
    folders, groups = [], []
    make_folder, make_groups = tempfile.mkdtemp, sandbox._Cgroups.create
    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", lambda **kw: folders.append(make_folder(**kw)) or folders[-1])
    monkeypatch.setattr(sandbox._Cgroups, "create", lambda *a: groups.append(make_groups(*a)) or groups[-1])
    result = sandbox.run(python_job("open('big', 'w').write('x' * 1000)\nimport time\ntime.sleep(60)", "", TIGHT))
    assert result.status == "timeout" and len(folders) == 1
    assert not os.path.exists(folders[0])
    assert all(not os.path.exists(path) for path in groups[0].paths.values())


def test_an_interpreter_that_cannot_start_is_a_setup_error():
    job = sandbox.Job({"main.py": "print(1)"}, ("/nonexistent/python",), "", TIGHT)
    result = sandbox.run(job)
    assert result.status == "setup-error" and "nonexistent" in result.error


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("RLHFCTL_SANDBOX_WALL_S", "20")
    monkeypatch.setenv("RLHFCTL_SANDBOX_MEMORY_MB", "1024")
    assert Limits.from_env() == Limits(wall_s=20.0, memory_mb=1024)
    monkeypatch.setenv("RLHFCTL_SANDBOX_PROCESSES", "many")
    with pytest.raises(ConfigError, match="RLHFCTL_SANDBOX_PROCESSES must be a whole number, got 'many'"):
        Limits.from_env()
    monkeypatch.setenv("RLHFCTL_SANDBOX_PROCESSES", "0")
    with pytest.raises(ConfigError, match="must be positive"):
        Limits.from_env()
