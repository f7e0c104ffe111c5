"""Run an untrusted program with limits, so that grading it cannot harm the host.

Each run gets a fresh temporary work folder and a process of its own,
started by `confine.py`, which confines itself before it execs the program
(see its docstring for the order of the steps). What a run gets on a Linux
machine where rlhfctl runs as root (this one):

- its own cgroups (v1 ``pids``, ``memory``, ``cpu``): at most
  `Limits.processes` processes, `Limits.memory_mb` of memory for all of them
  together, `Limits.cpus` CPUs of time, and fair CPU sharing with the runs
  next to it;
- new network, mount and pid namespaces: no network at all (not even the
  host's loopback), every mount read-only, the work folder a tmpfs capped at
  `Limits.disk_mb`, and nothing left running once the program exits;
- a uid of its own (random, unused by any account), so RLIMIT_NPROC binds,
  the work folders of other runs are unreadable, and setuid binaries do
  nothing (no_new_privs);
- rlimits: CPU seconds, address space, file size, open files, processes;
- from here: the wall-clock limit and the output cap, enforced by having
  the launcher kill the program's process group (and by killing whatever is
  still in the run's cgroups).

As an ordinary user the namespaces come from a user namespace where the
kernel allows one; without them, the weaker fallback is rlimits, a fresh
work folder and the process-group kill only (docs/graders.md).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

from rlhfctl.errors import ConfigError, RlhfctlError

CONFINE = str(Path(__file__).with_name("confine.py"))
# Sandbox uids are drawn from a block no distribution hands out, so that each
# run has a uid with no files and no other processes (RLIMIT_NPROC is per uid).
SANDBOX_UID_RANGE = (2_100_000_000, 2_140_000_000)
# The program's results channel: a pipe to us, open in the program as this fd
# (the code grader's assert reports). Counted in the output cap.
RESULTS_FD = 3
CGROUP_ROOT = "/sys/fs/cgroup"
_READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class Limits:
    """What one run may use; every run gets its own budget."""

    cpu_s: float = 2.0  # CPU time of the program (each process); SIGKILL when spent
    wall_s: float = 6.0  # wall clock, start to end, for the whole run
    memory_mb: int = 512  # address space per process, and all processes together (cgroup)
    processes: int = 32  # processes and threads at once
    output_bytes: int = 1 << 20  # stdout + stderr kept; the run is killed past it
    file_bytes: int = 16 << 20  # largest file it may write
    disk_mb: int = 64  # its tmpfs work folder
    open_files: int = 256
    cpus: float = 1.0  # CPU bandwidth of the whole run (cgroup quota)

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, each overridden by ``RLHFCTL_SANDBOX_<FIELD>`` (``RLHFCTL_SANDBOX_WALL_S=20``).

        An environment variable, not a flag, because every command that
        grades (rollout, eval, best-of-n, label-prm, train-policy) would need it.
        """
        values = {}
        for f in fields(cls):
            name = f"RLHFCTL_SANDBOX_{f.name.upper()}"
            raw = os.environ.get(name)
            if raw:
                try:
                    values[f.name] = type(f.default)(raw)
                except ValueError:
                    kind = "a whole number" if isinstance(f.default, int) else "a number"
                    raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
                if values[f.name] <= 0:
                    raise ConfigError(f"{name} must be positive, got {raw!r}")
        return cls(**values)


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    `status` is ``ok`` (exit 0), ``exit`` (another exit code), ``signal``
    (killed by a signal: the CPU limit, the memory cgroup, a crash),
    ``timeout`` (the wall clock ran out), ``output-limit`` (it printed more
    than `Limits.output_bytes`) or ``setup-error`` (the sandbox could not
    start it: `error` says why). `enforced` lists the measures that were in
    force, as `confine.py` reported them. `results` is what the program
    wrote on `RESULTS_FD`.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    enforced: tuple[str, ...] = ()
    error: str | None = None
    results: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Job:
    """One program run: `files` written into the work folder, then `args` run there with `stdin`."""

    files: dict[str, str]
    args: tuple[str, ...]
    stdin: str = ""
    limits: Limits = field(default_factory=Limits)


def python_job(source: str, stdin: str = "", limits: Limits = Limits()) -> Job:
    """A Job that runs `source` as ``main.py`` with the sandbox's Python (isolated mode, UTF-8)."""
    return Job({"main.py": source}, (program_python(), "-I", "-B", "-X", "utf8", "main.py"), stdin, limits)


def run(job: Job) -> RunResult:
    """Run `job` confined; always cleans up its folder, cgroups and processes."""
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rlhfctl-sandbox-")
    cgroups = _Cgroups.create(Path(workdir).name, job.limits)
    report_r, report_w = os.pipe()
    results_r, results_w = os.pipe()
    proc = None
    try:
        spec_path = _write_spec(job, workdir, cgroups, results_w)
        proc = subprocess.Popen([sys.executable, "-I", "-S", CONFINE, spec_path, str(report_w)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(report_w, results_w), start_new_session=True, cwd="/", env=_launcher_env())
        os.close(report_w)
        os.close(results_w)
        report_w = results_w = None
        streams, killed = _collect(proc, report_r, results_r, job.limits)
    finally:
        for fd in (report_w, results_w, report_r, results_r):
            if fd is not None:
                os.close(fd)
        if proc is not None:
            _end(proc)
        cgroups.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(proc.returncode, streams, killed, time.monotonic() - start)


def run_many(jobs: list[Job], workers: int | None = None) -> list[RunResult]:
    """Run `jobs` at most `workers` at a time (default: `default_workers()`); results in order."""
    workers = max(1, min(workers or default_workers(), len(jobs) or 1))
    if workers == 1:
        return [run(j) for j in jobs]
    with ThreadPoolExecutor(workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(run, jobs))


def default_workers() -> int:
    """``RLHFCTL_SANDBOX_WORKERS``, else the number of CPUs this process may use."""
    value = os.environ.get("RLHFCTL_SANDBOX_WORKERS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ConfigError(f"RLHFCTL_SANDBOX_WORKERS must be a whole number, got {value!r}") from None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@lru_cache(maxsize=1)
def probe() -> RunResult:
    """One trivial run, to fail before generation if programs cannot run at all.

    Its `enforced` says which measures this machine allows.
    """
    return run(python_job("print('ok')"))


def ensure_working() -> tuple[str, ...]:
    """The measures in force here; RlhfctlError if the sandbox cannot run a program."""
    if not sys.platform.startswith("linux"):
        raise RlhfctlError(f"the code sandbox needs Linux (this is {sys.platform})")
    result = probe()
    if not result.ok or result.stdout.strip() != "ok":
        lines = result.stderr.strip().splitlines()
        why = result.error or (lines[-1] if lines else result.status)
        raise RlhfctlError(f"the code sandbox cannot run a program here: {why}")
    return result.enforced


# --- choosing the program's interpreter and uid ------------------------------------

@lru_cache(maxsize=1)
def program_python() -> str:
    """The Python that runs programs: ``RLHFCTL_SANDBOX_PYTHON``, else this one, else python3.

    As root, programs run under a fresh uid, which must be able to reach the
    interpreter and its standard library: a Python installed under /root
    (pyenv) is not, so the system's python3 is used instead.
    """
    override = os.environ.get("RLHFCTL_SANDBOX_PYTHON")
    if override:
        found = shutil.which(override)
        if found is None:
            raise ConfigError(f"RLHFCTL_SANDBOX_PYTHON={override!r} is not an executable")
        return os.path.abspath(found)
    if os.geteuid() != 0 or (_others_can_reach(sys.executable) and _others_can_reach(os.path.dirname(os.__file__))):
        return sys.executable
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if system and _others_can_reach(system):
        return system
    raise ConfigError("the code sandbox runs programs as an unprivileged uid, which cannot reach this Python "
                      f"({sys.executable}) and finds no python3 it can: set RLHFCTL_SANDBOX_PYTHON")


def _others_can_reach(path: str) -> bool:
    """Whether a user with no privileges can open `path` (every folder above it searchable)."""
    real = Path(os.path.realpath(path))
    try:
        for folder in real.parents:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(real).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IROTH and mode & stat.S_IXOTH)


def _sandbox_uid() -> int | None:
    """A random uid that no account has, for one run (as root); None when we cannot change uid.

    Inside a user namespace (a rootless container) only the mapped uids
    exist; if uid 0 is all there is, there is nothing to drop to.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    mapped = [(max(lo, 1), hi) for lo, hi in _mapped_uids() if hi > max(lo, 1)]
    preferred = [(max(lo, SANDBOX_UID_RANGE[0]), min(hi, SANDBOX_UID_RANGE[1])) for lo, hi in mapped]
    ranges = [(lo, hi) for lo, hi in preferred if hi > lo] or mapped
    if not ranges:
        raise ConfigError("the code sandbox cannot drop root: this user namespace maps no uid but 0; "
                          "run rlhfctl as an ordinary user")
    rng = random.SystemRandom()
    for _ in range(1000):
        uid = rng.randrange(*rng.choice(ranges))
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise ConfigError("the code sandbox found no uid without an account to run programs as")


@lru_cache(maxsize=1)
def _mapped_uids() -> list[tuple[int, int]]:
    """[lo, hi) ranges of the uids that exist in this process's user namespace."""
    try:
        lines = Path("/proc/self/uid_map").read_text().splitlines()
    except OSError:
        return [(0, 2**32 - 1)]
    return [(int(inner), int(inner) + int(count)) for inner, _, count in (line.split() for line in lines)]


def _write_spec(job: Job, workdir: str, cgroups: "_Cgroups", results_fd: int) -> str:
    """The launcher's instructions, in the (root-only) work folder it reads and deletes them from."""
    limits = job.limits
    spec = {"argv": list(job.args), "files": job.files, "stdin": job.stdin, "workdir": workdir,
            "uid": _sandbox_uid(), "cgroups": cgroups.paths,
            "results_fd": results_fd, "results_as": RESULTS_FD, "visible": _visible_tops(job.args[0]),
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"},
            "limits": {"cpu_s": limits.cpu_s, "memory_bytes": limits.memory_mb << 20, "processes": limits.processes,
                       "file_bytes": limits.file_bytes, "disk_bytes": limits.disk_mb << 20,
                       "open_files": limits.open_files}}
    path = os.path.join(workdir, ".spec.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    return path


# Top-level folders a program sees; the others are hidden behind empty mounts.
SYSTEM_TOPS = ("bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys", "usr")


@lru_cache(maxsize=8)
def _visible_tops(executable: str) -> list[str]:
    """`SYSTEM_TOPS` and the top-level folders that hold `executable` and its installation (a venv's base)."""
    paths = [os.path.realpath(executable)] if os.path.isabs(executable) else []
    venv = Path(executable).parent.parent / "pyvenv.cfg"
    if paths and venv.is_file():
        for line in venv.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                paths.append(os.path.realpath(value.strip()))
        paths.append(os.path.abspath(executable))
    return sorted(set(SYSTEM_TOPS) | {p.strip("/").split("/")[0] for p in paths if p.strip("/")})


def _launcher_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


# --- watching a run -----------------------------------------------------------------

def _collect(proc: subprocess.Popen, report_fd: int, results_fd: int,
             limits: Limits) -> tuple[dict[str, bytes], str | None]:
    """Read stdout, stderr, the results channel and the launcher's report until all close, or until a limit.

    Returns the bytes read per stream and why the run was killed (None if it
    was not). Once the launcher has exited, stragglers that still hold the
    pipes (possible only without a pid namespace) get a short grace time.
    """
    deadline = time.monotonic() + limits.wall_s
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", report_fd: "report",
             results_fd: "results"}
    data = {name: bytearray() for name in names.values()}
    with selectors.DefaultSelector() as selector:
        for fd in names:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:  # the wall clock ran out, or the grace time after the launcher exited
                return data, "timeout" if proc.poll() is None else None
            for key, _ in selector.select(min(remaining, 0.1)):
                chunk = os.read(key.fd, _READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                data[names[key.fd]] += chunk
                if len(data["stdout"]) + len(data["stderr"]) + len(data["results"]) > limits.output_bytes:
                    return data, "output-limit"
            if proc.poll() is not None:
                deadline = min(deadline, time.monotonic() + 0.5)
    return data, None


def _end(proc: subprocess.Popen) -> None:
    """Stop the run, done or not: the launcher kills and reaps the program's
    process group on SIGTERM; if it does not exit at once, it is killed, and
    the program dies with it (parent-death signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        stream.close()


def _result(returncode: int, streams: dict[str, bytes], killed: str | None, wall_s: float) -> RunResult:
    report = _parse_report(bytes(streams["report"]))
    stdout, stderr, results = (bytes(streams[s]).decode("utf-8", "replace") for s in ("stdout", "stderr", "results"))
    if killed is not None:
        status = killed
    elif "error" in report or "enforced" not in report:
        status = "setup-error"
    else:
        status = "ok" if returncode == 0 else "exit" if returncode > 0 else "signal"
    error = report.get("error") or (None if "enforced" in report else "the launcher stopped before the program ran")
    return RunResult(status, returncode, stdout, stderr, round(wall_s, 4), tuple(report.get("enforced", ())),
                     error if status == "setup-error" else None, results)


def _parse_report(raw: bytes) -> dict:
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {"error": f"unreadable launcher report: {lines[-1][:200]!r}"}


# --- cgroups ------------------------------------------------------------------------

class _Cgroups:
    """Per-run cgroup v1 groups (pids, memory, cpu) below this process's own groups.

    Created only where this process may (root, or a delegated hierarchy);
    each controller that cannot be set up is left out, and the run goes on
    with the rlimits. cgroup v2-only machines get none of them here.
    """

    CONTROLLERS = ("pids", "memory", "cpu")

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    @classmethod
    def create(cls, name: str, limits: Limits) -> "_Cgroups":
        settings = {"pids": {"pids.max": limits.processes},
                    "memory": {"memory.limit_in_bytes": limits.memory_mb << 20},
                    "cpu": {"cpu.cfs_period_us": 100_000, "cpu.cfs_quota_us": int(limits.cpus * 100_000)}}
        paths = {}
        for controller, parent in _own_cgroups().items():
            path = os.path.join(parent, name)
            try:
                os.mkdir(path)
            except OSError:
                continue
            try:
                for key, value in settings[controller].items():
                    Path(path, key).write_text(str(value))
            except OSError:
                os.rmdir(path)
                continue
            paths[controller] = path
        return cls(paths)

    def remove(self) -> None:
        """Kill whatever is still inside (race-free, through pidfds), then delete the groups."""
        for path in self.paths.values():
            for _ in range(100):
                pids = _read_pids(path)
                for pid in pids:
                    _kill_if_member(pid, path)
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.01)


@lru_cache(maxsize=1)
def _own_cgroups() -> dict[str, str]:
    """Controller -> the v1 folder of this process's own group, for the controllers mounted."""
    found = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in _Cgroups.CONTROLLERS:
                mount = os.path.realpath(os.path.join(CGROUP_ROOT, controller))
                folder = os.path.join(mount, path.lstrip("/"))
                if os.path.isfile(os.path.join(folder, "cgroup.procs")):
                    found[controller] = folder
    return found


def _read_pids(path: str) -> list[int]:
    try:
        return [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _kill_if_member(pid: int, path: str) -> None:
    """SIGKILL `pid` if it is still in the group at `path` (a pidfd pins it, so no reused pid is hit)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if pid in _read_pids(path):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)
