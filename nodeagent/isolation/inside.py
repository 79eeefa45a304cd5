"""The processes inside a sandbox, from namespace entry to the interpreter's exec.

    A  (host pid ns)  unshare user+mount+uts+ipc+net+pid, wait for the id maps, fork B, exit
    B  (pid 1)        build the filesystem, then stay as init: reap, report C's status, exit
    C  (pid 2)        drop to uid 1000 with no capabilities, rlimits, seccomp, exec

When B exits the kernel kills every other process of the pid namespace, so nothing the code
started (daemons, setsid children) outlives the call.
"""

from __future__ import annotations

import os
import signal
import struct

from ..bootstrap import BOOTSTRAPS
from . import capabilities, mounts, network, request, seccomp
from . import syscalls as sc
from .spec import HOME, SANDBOX_GID, SANDBOX_UID, SandboxSpec

NAMESPACES = sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWPID
STATUS = struct.Struct("!i")
READY = b"R"
MAX_FD = 1 << 20

# fds of the chain, fixed so every stage knows them without bookkeeping.
FD_STDIN, FD_STDOUT, FD_STDERR, FD_READY = 0, 1, 2, 3


def close_fds_except(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def install_fds(stdio: list[int], keep: list[int]) -> list[int]:
    """Put the sandbox's stdin, stdout, stderr and ready pipe on 0-3; keep `keep` above them.

    Returns the new numbers of `keep`, in order. Everything else is closed.
    """
    moved = [os.dup(fd) for fd in stdio + keep]
    for target, fd in enumerate(moved[: len(stdio)]):
        os.dup2(fd, target)
    kept = []
    for fd in moved[len(stdio):]:
        kept.append(os.dup2(fd, 10 + len(kept)))
    close_fds_except(set(range(len(stdio))) | set(kept))
    for fd in kept:
        os.set_inheritable(fd, False)
    return kept


def _die_with_parent() -> None:
    """If the supervisor dies (a crash, a kill), the sandbox must not run on unwatched."""
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)


def stage_a(spec: SandboxSpec, to_parent: int, from_parent: int, status_w: int, bpf: bytes) -> None:
    """Enter the namespaces (the supervisor, still root on the host, writes our id maps),
    then stay as B's parent: B dies with A (parent-death signal), and A with the supervisor."""
    supervisor = os.getppid()
    os.setgroups([])
    sc.unshare(NAMESPACES)
    os.write(to_parent, b"u")
    if os.read(from_parent, 1) != b"m":
        os._exit(111)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    _die_with_parent()  # after setresuid, which clears the parent-death signal
    if os.getppid() != supervisor:
        os._exit(114)  # the supervisor died before we could tie ourselves to it
    sc.unshare(sc.CLONE_NEWCGROUP)  # after the parent moved us into our cgroup
    pid = os.fork()
    if pid == 0:
        os.close(to_parent)
        os.close(from_parent)
        _die_with_parent()  # A lives exactly as long as the supervisor does
        stage_b(spec, status_w, bpf)
    os.write(to_parent, str(pid).encode())
    # A shares B's mount namespace, so B's pivot_root moves A's root too: from then on /proc
    # is the sandbox's, where A has no pid. Nothing here may look at the filesystem.
    os.closerange(0, MAX_FD)
    os.waitpid(pid, 0)
    os._exit(0)


def stage_b(spec: SandboxSpec, status_w: int, bpf: bytes) -> None:
    """pid 1: build the filesystem, start the code's process, reap; when it ends, end the rest.

    B keeps its capabilities in the sandbox's user namespace (none on the host): it needs
    them to kill the code's processes, and it runs nothing the code can influence.
    """
    try:
        mounts.build_root(spec)
        sc.sethostname(spec.hostname)
        sc.setdomainname("(none)")
        network.bring_up_loopback()
    except OSError as exc:
        os.write(FD_STDERR, f"baponi: sandbox setup failed: {exc}\n".encode())
        os._exit(112)
    child = os.fork()
    if child == 0:
        os.close(status_w)
        stage_c(spec, bpf)
    close_fds_except({status_w})
    code_status: int | None = None
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            code_status = status
            try:
                os.kill(-1, signal.SIGKILL)  # the code is done: so is everything it started
            except ProcessLookupError:
                pass  # it started nothing that is still alive
    if code_status is not None:
        os.write(status_w, STATUS.pack(code_status))
    os._exit(0)


def _drop_privileges(spec: SandboxSpec) -> None:
    spec.rlimits.apply()
    capabilities.drop_bounding_set()
    os.setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID)
    os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
    capabilities.clear_sets()


def _read_request() -> tuple[str, dict[str, str]]:
    chunks = []
    while chunk := os.read(FD_STDIN, 1 << 20):
        chunks.append(chunk)
    return request.decode(b"".join(chunks))


def stage_c(spec: SandboxSpec, bpf: bytes) -> None:
    """The code's process: unprivileged, filtered, then the interpreter."""
    try:
        os.setsid()
        _drop_privileges(spec)
        os.umask(0o022)
        os.chdir(HOME)
        seccomp.install(bpf)
        interpreter = spec.image.interpreter(spec.language)
        if spec.mode == "warm":
            argv = warm_argv(spec.language, interpreter)
            os.execve(interpreter, argv, spec.base_env)
        # Decode a request once ahead: the pages that path touches are copied now, not while
        # the caller waits (see Supervisor.rehearse).
        exec_argv(spec.language, interpreter, request.decode(request.encode("", spec.base_env))[0])
        os.write(FD_READY, READY)
        os.close(FD_READY)
        code, env = _read_request()
        os.execve(interpreter, exec_argv(spec.language, interpreter, code), env)
    except BaseException as exc:  # noqa: BLE001 - nothing above may unwind into the spawner's code
        os.write(FD_STDERR, f"baponi: cannot start {spec.language}: {exc}\n".encode())
        os._exit(113)


def exec_argv(language: str, interpreter: str, code: str) -> list[str]:
    """The command line that runs `code` the way `python3 -c`, `node -e` and `bash -c` do."""
    flag = {"python": ["-u", "-c"], "node": ["-e"], "bash": ["-c"]}[language]
    return [interpreter, *flag, code]


def warm_argv(language: str, interpreter: str) -> list[str]:
    """The interpreter started ahead with Baponi's bootstrap, which then waits for the code."""
    return [interpreter, {"python": "-c", "node": "-e"}[language], BOOTSTRAPS[language]]
