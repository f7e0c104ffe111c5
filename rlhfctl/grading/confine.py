"""The inside of the code sandbox: confine this process, then exec the program.

`rlhfctl.grading.sandbox` runs this file as a script,
``python -I -S confine.py SPEC_FILE REPORT_FD``, and never imports it: it
uses the standard library only, so it starts fast under any interpreter.

Two processes do the work:

- the launcher (this script's own process) joins the run's cgroups,
  unshares the network, mount and pid namespaces (inside a new user
  namespace when it is not root), forks, waits for its child, kills the
  child's process group (on SIGTERM from the parent, or when the child is
  done), reaps, and then dies the way the child died, so the parent sees the
  program's own exit status and no process is left a zombie;
- the child, pid 1 of the new pid namespace, makes every mount read-only,
  mounts a size-capped tmpfs on the work folder and a fresh /proc, sets the
  rlimits, drops to the sandbox uid, writes the program's files, arranges to
  be killed when the launcher dies, opens the results pipe as fd 3 (the
  program's channel to the grader), reports what it enforced on REPORT_FD
  (closed by the exec, so the parent reads EOF once the program runs) and
  execs the program.

When pid 1 of a pid namespace exits, the kernel kills every process left in
it, so nothing the program started outlives it: not a background child, not
one that called setsid() to leave the process group. The program is that
pid 1; one quirk follows: a signal it sends itself is ignored unless it has
a handler for it (the kernel's kills, such as the CPU limit, still work).

Each measure is tried on its own; what failed is left out of the report and
the run goes on with what remains (the weaker fallbacks are in docs/graders.md).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_PRIVATE = 1 << 18
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a post-5.0 syscall)
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _call(result: int, what: str) -> None:
    """Raise OSError with errno for a failed libc call (ctypes does not)."""
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str, flags: int, data: str | None = None) -> None:
    _call(_libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                      None if data is None else data.encode()), f"mount {fstype} on {target}")


def _attempt(done: list[str], name: str, action, *args) -> bool:
    """Run one isolation step; on success record `name` in the report."""
    try:
        action(*args)
    except OSError:
        return False
    done.append(name)
    return True


# --- the launcher ----------------------------------------------------------------

def _join_cgroup(path: str) -> None:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def _unshare_as_root() -> None:
    _call(_libc.unshare(ctypes.c_int(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID)), "unshare")


def _unshare_as_user() -> None:
    """A user namespace in which this (unprivileged) user may make the others.

    Only our own uid and gid are mapped, so files keep their owners, and the
    program, which does not run as uid 0 inside, loses every capability at exec.
    """
    uid, gid = os.getuid(), os.getgid()
    _call(_libc.unshare(ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID)), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def launch(spec: dict, report_fd: int) -> None:
    """The launcher: namespaces, then fork the confined child and mirror its end."""
    done: list[str] = []
    for controller, path in spec["cgroups"].items():
        _attempt(done, f"cgroup-{controller}", _join_cgroup, path)
    unshare = _unshare_as_root if os.geteuid() == 0 else _unshare_as_user
    own_userns = _attempt(done, "namespaces:net,mount,pid", unshare) and os.geteuid() != 0
    if own_userns:
        done.append("userns")
    _call(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        _confined_child(spec, report_fd, done, own_userns)
    try:
        os.setpgid(child, child)  # both sides set it, so neither can signal the group before it exists
    except OSError:  # the child got there first and has exec'd, or is already gone
        pass
    os.close(report_fd)
    os.close(spec["results_fd"])  # the program's alone: the parent reads EOF when it is done
    signal.signal(signal.SIGTERM, lambda *_: _kill_group(child))  # how the parent stops a run
    os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
    _kill_group(child)  # stragglers; while the child is an unreaped zombie its group id cannot be reused
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _, status = os.waitpid(child, 0)
    _reap_orphans()
    _die_like(status)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap_orphans() -> None:
    """Collect the program's dead orphans (they came to us as subreaper), so none is left a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _die_like(status: int) -> None:
    """Exit with the child's code, or die by the child's signal (no core file)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


# --- the confined child -----------------------------------------------------------

def _confined_child(spec: dict, report_fd: int, done: list[str], own_userns: bool) -> None:
    """Confine, report, exec; never returns. A setup failure is reported, exit 127."""
    try:
        _die_with_parent()  # the launcher may be killed while we set up
        in_namespaces = any(d.startswith("namespaces") for d in done)
        if in_namespaces:
            _confine_filesystem(spec, done)
        _stdin_from(spec["stdin"])  # before the file-size limit: test inputs are trusted data
        _set_rlimits(spec["limits"], own_userns, done)
        _drop_privileges(spec, in_namespaces, done)
        os.chdir(spec["workdir"])
        for name, text in spec["files"].items():
            with open(name, "w", encoding="utf-8") as f:
                f.write(text)
        _die_with_parent()  # a change of uid cleared it
        report_fd = _results_channel(spec, report_fd)
        os.write(report_fd, (json.dumps({"enforced": done}) + "\n").encode())
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - anything here is a setup failure to report
        os.write(report_fd, (json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
    os._exit(127)


def _results_channel(spec: dict, report_fd: int) -> int:
    """Open the results pipe as fd ``results_as`` in the program; returns the report fd (moved if it was there)."""
    target = spec["results_as"]
    if report_fd == target:
        report_fd = os.dup(report_fd)  # not inheritable: still closed by the exec
    if spec["results_fd"] != target:
        os.dup2(spec["results_fd"], target)
        os.close(spec["results_fd"])
    return report_fd


def _die_with_parent() -> None:
    """SIGKILL this process when its parent (the launcher) dies."""
    _call(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _confine_filesystem(spec: dict, done: list[str]) -> None:
    """Everything read-only and private to us; the host's data hidden; a fresh tmpfs work folder and /proc.

    Private propagation comes first in the same call, so that nothing mounted
    here shows up in the host's mount table.
    """
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, propagation=MS_PRIVATE)
    result = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/",
                           ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if result == 0:
        done.append("read-only-root")
    else:  # an old kernel: at least keep our mounts out of the host's table
        _attempt(done, "private-mounts", _mount, "none", "/", "none", 0x4000 | MS_PRIVATE)
    holder = _attempt(done, "host-data-hidden", _hide_host, spec)
    limits, uid = spec["limits"], spec["uid"] if spec["uid"] is not None else os.getuid()
    options = f"size={limits['disk_bytes']},mode=0700,uid={uid},gid={uid}"
    _attempt(done, "tmpfs-workdir", _mount, "tmpfs", spec["workdir"], "tmpfs", MS_NOSUID | MS_NODEV, options)
    if holder:  # the empty folder that holds the work folder's mount point: read-only from now on
        _attempt(done, "read-only-hiding", _read_only, "/" + spec["workdir"].strip("/").split("/")[0])
    _attempt(done, "proc", _mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _hide_host(spec: dict) -> None:
    """An empty tmpfs over every top-level folder the interpreter does not need, and over /dev/shm.

    So a program finds no data file, no test and no other run's files on the
    host; the folder that holds the work folder gets its mount point made.
    """
    keep = set(spec["visible"])
    tops = [os.path.join("/", name) for name in os.listdir("/") if name not in keep]
    for path in [*tops, "/dev/shm"]:
        if os.path.isdir(path) and not os.path.islink(path):
            holds_workdir = spec["workdir"].startswith(path.rstrip("/") + "/")
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | (0 if holds_workdir else MS_RDONLY),
                   "size=64k,mode=0755")
            if holds_workdir:
                os.makedirs(spec["workdir"], mode=0o700)


def _read_only(path: str) -> None:
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    result = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                           ctypes.c_uint(0), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _call(0 if result == 0 else -1, f"mount_setattr {path}")


def _set_rlimits(limits: dict, own_userns: bool, done: list[str]) -> None:
    """CPU seconds (soft = hard: pid 1 ignores SIGXCPU, so the kill is SIGKILL),
    address space, file size, no core files, open files, processes."""
    cpu = int(limits["cpu_s"]) + (limits["cpu_s"] % 1 > 0)
    for name, value in (("CPU", cpu), ("AS", limits["memory_bytes"]), ("FSIZE", limits["file_bytes"]), ("CORE", 0),
                        ("NOFILE", limits["open_files"]), ("NPROC", _nproc_limit(limits, own_userns))):
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
    done.append("rlimits")


def _nproc_limit(limits: dict, own_userns: bool) -> int:
    """RLIMIT_NPROC counts every process of the real uid (within its user namespace).

    A fresh sandbox uid (as root) or a fresh user namespace starts at zero,
    so the limit is the budget itself. Running as our own uid in no new
    namespace, the count includes this user's other processes: the budget
    goes on top of them.
    """
    if os.getuid() == 0 or own_userns:
        return limits["processes"]
    return limits["processes"] + _count_processes_of(os.getuid())


def _count_processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _drop_privileges(spec: dict, in_namespaces: bool, done: list[str]) -> None:
    """Become the sandbox uid (as root), and never gain privileges through exec."""
    uid = spec["uid"]
    if uid is not None and os.getuid() == 0:
        if not in_namespaces:  # no tmpfs: the host work folder must be ours
            os.chown(spec["workdir"], uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        done.append(f"uid:{uid}")
    _call(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    done.append("no-new-privs")


def _stdin_from(text: str) -> None:
    """The program's stdin: an anonymous in-memory file holding `text`."""
    fd = os.memfd_create("stdin")
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data):]
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)


def main(argv: list[str]) -> None:
    spec_path, report_fd = argv[1], int(argv[2])
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    os.unlink(spec_path)
    os.set_inheritable(report_fd, False)  # closed by the exec: EOF tells the parent the program runs
    launch(spec, report_fd)


if __name__ == "__main__":
    main(sys.argv)
