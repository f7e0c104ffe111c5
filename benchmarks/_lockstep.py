"""Lock-step interleaving of two benchmark subprocesses (shared by the benchmarks).

On a noisy shared CPU, timing side A for a minute and then side B for a
minute compares two different machines. Here both sides run at once, each in
its own process (so start-up is excluded and peak RSS is its own), but only
one of them works at a time: after every unit of work (an optimiser step, a
generation batch) a worker reports to the driver and blocks until released,
and the driver releases the two workers alternately, A B B A A B ... Each
worker times a unit from its release to the end of that unit, so waiting is
never counted and adjacent units of A and B see the same load.

Worker side::

    gate = Gate.from_arg(args.gate)   # "GO_FD,DONE_FD"
    ... after each unit: gate.unit_done()
    gate.durations                    # seconds per gated unit (all but the first)

Driver side::

    a, b = Worker(cmd_a), Worker(cmd_b)
    lockstep([a, b], units)           # units = how many times each calls unit_done
    a.result(), b.result()            # the JSON each wrote to its --result file
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


class Gate:
    def __init__(self, go_fd: int | None, done_fd: int | None):
        self.go_fd, self.done_fd = go_fd, done_fd
        self.durations: list[float] = []
        self._released: float | None = None

    @classmethod
    def from_arg(cls, arg: str | None) -> "Gate":
        if not arg:
            return cls(None, None)  # ungated: every unit timed back to back
        go, done = (int(x) for x in arg.split(","))
        return cls(go, done)

    def unit_done(self) -> None:
        now = time.perf_counter()
        if self._released is not None:
            self.durations.append(now - self._released)
        if self.done_fd is not None:
            os.write(self.done_fd, b"d")
            if os.read(self.go_fd, 1) != b"g":
                raise SystemExit("benchmark driver went away")
        self._released = time.perf_counter()


class Worker:
    """A worker subprocess; ``cmd`` gets ``--gate GO,DONE --result PATH`` appended."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None):
        self.name = name
        self._dir = tempfile.TemporaryDirectory(prefix=f"bench_{name}_")
        self.result_path = Path(self._dir.name) / "result.json"
        self.log_path = Path(self._dir.name) / "log.txt"
        go_r, self._go_w = os.pipe()
        self._done_r, done_w = os.pipe()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd + ["--gate", f"{go_r},{done_w}", "--result", str(self.result_path)],
            pass_fds=(go_r, done_w), stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        os.close(go_r)
        os.close(done_w)

    def wait_done(self) -> None:
        if os.read(self._done_r, 1) != b"d":
            self.proc.wait()
            raise SystemExit(f"{self.name} worker failed (exit {self.proc.returncode}):\n{self.log_tail()}")

    def go(self) -> None:
        os.write(self._go_w, b"g")

    def result(self) -> dict:
        rc = self.proc.wait()
        self._log.close()
        if rc != 0 or not self.result_path.exists():
            raise SystemExit(f"{self.name} worker failed (exit {rc}):\n{self.log_tail()}")
        result = json.loads(self.result_path.read_text())
        os.close(self._go_w)
        os.close(self._done_r)
        self._dir.cleanup()
        return result

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def lockstep(workers: list[Worker], units: int) -> None:
    """Release the workers alternately for ``units`` units each.

    The first unit of every worker runs unsynchronised (it overlaps the other
    worker's start-up, and is never timed); units 2..``units`` run one worker
    at a time, the order flipping every unit (A B, B A, A B, ...).
    """
    try:
        for w in workers:
            w.wait_done()
        for k in range(1, units):
            for w in (workers if k % 2 else workers[::-1]):
                w.go()
                w.wait_done()
        for w in workers:
            w.go()  # let each finish (save, write its result)
    except BaseException:
        for w in workers:
            w.kill()
        raise
