"""The seccomp policy refuses each attack for the right reason and lets real programs run.

Every attempt runs in a forked child that installs the precompiled filter and reports the
syscall's result (``-errno`` on failure). Where it says something, the same attempt in an
unfiltered child shows the kernel itself would not have answered that way, so the errno
comes from the filter. Destructive calls get arguments that make them harmless even if the
filter let them through (``BAD`` pointers, invalid flags, oversize lengths).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pyseccomp
import pytest

from nodeagent.isolation import seccomp

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="contrasts assume root")

BPF = seccomp.compile_filter()
BAD = 1  # an unmapped address: path and struct arguments fault instead of doing anything

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

def _sys(syscall: str | int, *args: object) -> int:
    """Raw syscall: its result, or -errno. Integers are passed as 64-bit registers as is."""
    nr = syscall if isinstance(syscall, int) else pyseccomp.resolve_syscall(0, syscall)
    assert nr >= 0, f"libseccomp does not know {syscall!r}: pass its number"
    raw = [ctypes.c_ulong(a & (2**64 - 1)) if isinstance(a, int) else a for a in args]
    result = _libc.syscall(ctypes.c_long(nr), *raw)
    return -ctypes.get_errno() if result == -1 else result


def _in_child(attempt: Callable[[], int], *, filtered: bool = True) -> int:
    """Run *attempt* in a forked child, under the filter unless told otherwise."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            os.setsid()  # no controlling terminal: vhangup and TIOCSTI cannot reach the test's
            if filtered:
                seccomp.install(BPF)
            os.write(write_end, struct.pack("q", attempt()))
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0 and len(report) == 8, "child failed"
    return struct.unpack("q", report)[0]


def _run_filtered(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Exec *argv* the way a sandbox does: filter installed right before execve."""
    return subprocess.run(
        argv, preexec_fn=lambda: seccomp.install(BPF), capture_output=True, text=True,
        timeout=30, check=False, **kwargs,  # type: ignore[arg-type]
    )


CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
TIOCSTI, TIOCLINUX, TIOCGWINSZ, FIONREAD = 0x5412, 0x541C, 0x5413, 0x541B
HIGH_BIT = 1 << 32  # ignored by the kernel for 32-bit arguments
AF_ALG, AF_VSOCK = 38, 40
ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC = 0x0040000, 0x0400000
X32_SYSCALL_BIT = 0x40000000

DENIED_ATTEMPTS: dict[str, Callable[[], int]] = {
    "mount": lambda: _sys("mount", BAD, BAD, BAD, 0, 0),
    "umount2": lambda: _sys("umount2", BAD, 0),
    "pivot_root": lambda: _sys("pivot_root", BAD, BAD),
    "chroot": lambda: _sys("chroot", ctypes.c_char_p(b"/")),  # harmless and succeeds as root
    "fsopen": lambda: _sys("fsopen", BAD, 0),
    "fsconfig": lambda: _sys("fsconfig", -1, 0, 0, 0, 0),
    "fsmount": lambda: _sys("fsmount", -1, 0, 0),
    "fspick": lambda: _sys("fspick", -1, BAD, 0),
    "move_mount": lambda: _sys("move_mount", -1, BAD, -1, BAD, 0),
    "open_tree": lambda: _sys("open_tree", -1, BAD, 0),
    "mount_setattr": lambda: _sys("mount_setattr", -1, BAD, 0, 0, 0),
    "swapon": lambda: _sys("swapon", BAD, 0),
    "swapoff": lambda: _sys("swapoff", BAD),
    "quotactl": lambda: _sys("quotactl", 0, 0, 0, 0),
    "quotactl_fd": lambda: _sys("quotactl_fd", -1, 0, 0, 0),
    "unshare": lambda: _sys("unshare", CLONE_NEWUSER),  # succeeds unfiltered as root
    "setns": lambda: _sys("setns", -1, 0),
    "ptrace": lambda: _sys("ptrace", 2, os.getppid(), 0, 0),  # PTRACE_PEEKDATA, not tracing
    "process_vm_readv": lambda: _sys("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0),
    "process_vm_writev": lambda: _sys("process_vm_writev", os.getpid(), 0, 0, 0, 0, 0),
    "process_madvise": lambda: _sys("process_madvise", -1, 0, 0, 0, 0),
    "pidfd_getfd": lambda: _sys("pidfd_getfd", -1, 0, 0),
    "kcmp": lambda: _sys("kcmp", os.getpid(), os.getpid(), 99, 0, 0),
    "keyctl": lambda: _sys("keyctl", -1, 0, 0),
    "add_key": lambda: _sys("add_key", BAD, BAD, 0, 0, 0),
    "request_key": lambda: _sys("request_key", BAD, BAD, 0, 0),
    "bpf": lambda: _sys("bpf", -1, 0, 0),
    "perf_event_open": lambda: _sys("perf_event_open", BAD, 0, -1, -1, 0),
    "userfaultfd": lambda: _sys("userfaultfd", -1),
    "io_uring_setup": lambda: _sys("io_uring_setup", 0, BAD),
    "io_uring_enter": lambda: _sys("io_uring_enter", -1, 0, 0, 0, 0, 0),
    "io_uring_register": lambda: _sys("io_uring_register", -1, 0, 0, 0),
    "fanotify_init": lambda: _sys("fanotify_init", -1, 0),
    "lookup_dcookie": lambda: _sys("lookup_dcookie", 0, 0, 0),
    "nfsservctl": lambda: _sys("nfsservctl", 0, 0, 0),
    "modify_ldt": lambda: _sys("modify_ldt", 0, 0, 0),  # reads zero bytes
    "open_by_handle_at": lambda: _sys("open_by_handle_at", -1, BAD, 0),
    "name_to_handle_at": lambda: _sys("name_to_handle_at", -1, BAD, BAD, BAD, 0),
    "kexec_load": lambda: _sys("kexec_load", 0, 0, 0, -1),
    "kexec_file_load": lambda: _sys("kexec_file_load", -1, -1, 0, 0, -1),
    "init_module": lambda: _sys("init_module", 0, 0, BAD),
    "finit_module": lambda: _sys("finit_module", -1, BAD, 0),
    "delete_module": lambda: _sys("delete_module", BAD, 0),
    "reboot": lambda: _sys("reboot", 0, 0, 0, 0),  # wrong magic
    "acct": lambda: _sys("acct", BAD),
    "settimeofday": lambda: _sys("settimeofday", BAD, 0),
    "clock_settime": lambda: _sys("clock_settime", 0, BAD),
    "adjtimex": lambda: _sys("adjtimex", BAD),
    "clock_adjtime": lambda: _sys("clock_adjtime", 0, BAD),
    "syslog": lambda: _sys("syslog", 10, 0, 0),  # SYSLOG_ACTION_SIZE_BUFFER
    "sethostname": lambda: _sys("sethostname", BAD, 1000),
    "setdomainname": lambda: _sys("setdomainname", BAD, 1000),
    "vhangup": lambda: _sys("vhangup"),  # the child has no controlling terminal
    "iopl": lambda: _sys("iopl", 0),
    "ioperm": lambda: _sys("ioperm", 0, 0, 0),
    "mbind": lambda: _sys("mbind", 0, 0, 0, 0, 0, 0),
    "set_mempolicy": lambda: _sys("set_mempolicy", 0, 0, 0),  # MPOL_DEFAULT
    "get_mempolicy": lambda: _sys("get_mempolicy", 0, 0, 0, 0, 0),
    "migrate_pages": lambda: _sys("migrate_pages", os.getpid(), 0, 0, 0),
    "move_pages": lambda: _sys("move_pages", 0, 0, 0, 0, 0, 0),
}


def test_every_denied_syscall_has_an_attempt() -> None:
    assert sorted(DENIED_ATTEMPTS) == sorted(seccomp.DENIED_SYSCALLS)


@pytest.mark.parametrize("name", seccomp.DENIED_SYSCALLS)
def test_denied_syscall_fails_with_eperm(name: str) -> None:
    attempt = DENIED_ATTEMPTS[name]
    assert _in_child(attempt) == -errno.EPERM
    assert _in_child(attempt, filtered=False) != -errno.EPERM


CLONE_NEWUSER_FLAG = 0x10000000


def test_unshare_user_namespace_works_only_unfiltered() -> None:
    # The unfiltered contrast runs in a fresh process: once other tests have started gRPC
    # threads in this one, the kernel refuses CLONE_NEWUSER in its forks with EINVAL.
    unfiltered = subprocess.run(
        [sys.executable, "-c", f"import ctypes; print(ctypes.CDLL(None).unshare({CLONE_NEWUSER_FLAG}))"],
        capture_output=True, text=True, check=True,
    )
    assert unfiltered.stdout.strip() == "0"
    assert _in_child(DENIED_ATTEMPTS["unshare"]) == -errno.EPERM


def _clone(flags: int) -> int:
    """clone(2) as fork: the new process exits at once, the parent reaps it."""
    pid = _sys("clone", flags, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
    return pid


def test_clone_with_namespace_flag_denied_plain_fork_works() -> None:
    assert _in_child(lambda: _clone(CLONE_NEWUSER | SIGCHLD)) == -errno.EPERM
    assert _in_child(lambda: _clone(CLONE_NEWUSER | SIGCHLD), filtered=False) > 0
    assert _in_child(lambda: _clone(SIGCHLD)) > 0
    assert _in_child(_fork) > 0


def _fork() -> int:
    """os.fork, which glibc implements with clone."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return os.waitpid(pid, 0)[0]


def test_clone3_returns_enosys() -> None:
    assert _in_child(lambda: _sys("clone3", 0, 0)) == -errno.ENOSYS
    assert _in_child(lambda: _sys("clone3", 0, 0), filtered=False) == -errno.EINVAL


def _ioctl_on_pty(cmd: int) -> int:
    """ioctl *cmd* on a fresh pty, with a one-byte argument for TIOCSTI."""
    _, pty = os.openpty()
    buffer = ctypes.create_string_buffer(8)
    return _sys("ioctl", pty, cmd, ctypes.byref(buffer))


@pytest.mark.parametrize("cmd", [TIOCSTI, TIOCSTI | HIGH_BIT, TIOCLINUX, TIOCLINUX | HIGH_BIT])
def test_terminal_injection_ioctls_denied(cmd: int) -> None:
    assert _in_child(lambda: _ioctl_on_pty(cmd)) == -errno.EPERM
    assert _in_child(lambda: _ioctl_on_pty(cmd), filtered=False) != -errno.EPERM


def test_tiocsti_injects_unfiltered_even_with_high_bits() -> None:
    """The high-bit variant really reaches TIOCSTI, so comparing low 32 bits matters."""
    assert _in_child(lambda: _ioctl_on_pty(TIOCSTI | HIGH_BIT), filtered=False) == 0


@pytest.mark.parametrize("cmd", [TIOCGWINSZ, TIOCGWINSZ | HIGH_BIT, FIONREAD, 0x5411, 0x5413])
def test_other_ioctls_allowed(cmd: int) -> None:
    assert _in_child(lambda: _ioctl_on_pty(cmd)) == 0


@pytest.mark.parametrize("syscall", ["socket", "socketpair"])
@pytest.mark.parametrize("family", [AF_ALG, AF_VSOCK, AF_ALG | HIGH_BIT, AF_VSOCK | HIGH_BIT])
def test_alg_and_vsock_sockets_denied(syscall: str, family: int) -> None:
    pair = ctypes.create_string_buffer(8)

    def attempt() -> int:
        return _sys(syscall, family, socket.SOCK_SEQPACKET, 0, ctypes.byref(pair))

    assert _in_child(attempt) == -errno.EPERM
    assert _in_child(attempt, filtered=False) != -errno.EPERM


def test_vsock_socket_opens_unfiltered() -> None:
    assert _in_child(lambda: _sys("socket", AF_VSOCK, socket.SOCK_STREAM, 0), filtered=False) >= 0


def test_unix_and_inet_sockets_allowed() -> None:
    def attempt() -> int:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        left.sendall(b"ok")
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
        return len(right.recv(2))

    assert _in_child(attempt) == 2


@pytest.mark.parametrize("persona", [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF])
def test_allowed_personalities(persona: int) -> None:
    assert _in_child(lambda: _sys("personality", persona)) >= 0


@pytest.mark.parametrize("persona", [ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, 0x1 | HIGH_BIT])
def test_other_personalities_denied(persona: int) -> None:
    assert _in_child(lambda: _sys("personality", persona)) == -errno.EPERM
    assert _in_child(lambda: _sys("personality", persona), filtered=False) >= 0


def test_only_the_native_abi_is_in_the_filter() -> None:
    policy = seccomp.build_filter()
    assert policy.exist_arch(pyseccomp.Arch.X86_64)
    assert not policy.exist_arch(pyseccomp.Arch.X86)
    assert not policy.exist_arch(pyseccomp.Arch.X32)
    assert policy.get_attr(pyseccomp.Attr.ACT_BADARCH) == pyseccomp.ERRNO(errno.EPERM)


def test_x32_syscall_number_refused() -> None:
    getpid_x32 = X32_SYSCALL_BIT | pyseccomp.resolve_syscall(0, "getpid")
    assert _in_child(lambda: _sys(getpid_x32)) == -errno.EPERM
    assert _in_child(lambda: _sys(getpid_x32), filtered=False) == -errno.ENOSYS  # no x32 here


def _i386_getpid() -> int:
    """getpid through int 0x80, i.e. the i386 syscall table: mov eax, 20; int 0x80; ret."""
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(bytes.fromhex("b814000000" "cd80" "c3"))
    function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))
    return function()


def test_i386_abi_refused() -> None:
    assert _in_child(_i386_getpid) == -errno.EPERM
    assert _in_child(_i386_getpid, filtered=False) > 0


_BUF = ctypes.create_string_buffer(512)
NEWER_ALLOWED: dict[str, Callable[[], int]] = {
    "statx": lambda: _sys("statx", -100, ctypes.c_char_p(b"/"), 0, 0, ctypes.byref(_BUF)),
    "faccessat2": lambda: _sys("faccessat2", -100, ctypes.c_char_p(b"/"), 0, 0),
    "fchmodat2": lambda: _sys("fchmodat2", -100, BAD, 0, 0),
    "openat2": lambda: _sys("openat2", -100, ctypes.c_char_p(b"/"), ctypes.byref(_BUF), 24),
    "close_range": lambda: _sys("close_range", 1000, 1001, 0),
    "getrandom": lambda: _sys("getrandom", ctypes.byref(_BUF), 8, 0),
    "memfd_create": lambda: _sys("memfd_create", ctypes.c_char_p(b"x"), 0),
    "copy_file_range": lambda: _sys("copy_file_range", -1, 0, -1, 0, 1, 0),
    "epoll_pwait2": lambda: _sys("epoll_pwait2", -1, 0, 1, 0, 0, 0),
    "futex_waitv": lambda: _sys("futex_waitv", 0, 0, 0, 0, 0),
    "pidfd_open": lambda: _sys("pidfd_open", os.getpid(), 0),
    "pidfd_send_signal": lambda: _sys("pidfd_send_signal", -1, 0, 0, 0),
    "cachestat": lambda: _sys("cachestat", -1, 0, 0, 0),
    "mseal": lambda: _sys(462, 0, 0, 0),  # numbered: unknown to libseccomp 2.5.4
    "statmount": lambda: _sys(457, BAD, BAD, 0, 0),
    "landlock_create_ruleset": lambda: _sys("landlock_create_ruleset", 0, 0, 1),  # ABI version
    "seccomp": lambda: _sys("seccomp", 2, 0, ctypes.byref(_BUF)),  # SECCOMP_GET_ACTION_AVAIL
}


@pytest.mark.parametrize("name", NEWER_ALLOWED)
def test_newer_syscalls_reach_the_kernel(name: str) -> None:
    assert _in_child(NEWER_ALLOWED[name]) != -errno.EPERM


def test_filters_stack_and_no_new_privs_is_set() -> None:
    def install_again() -> int:
        seccomp.install(BPF)  # a sandboxed program may add filters of its own
        return _libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS

    assert _in_child(install_again) == 1


@pytest.mark.parametrize("bpf", [b"", BPF[:-1], bytes(8 * 4097)])
def test_install_rejects_malformed_programs(bpf: bytes) -> None:
    with pytest.raises(ValueError):
        seccomp.install(bpf)


PYTHON_WORKLOAD = """
import multiprocessing, socket, sqlite3, subprocess, threading
out = []
thread = threading.Thread(target=out.append, args=("thread",))
thread.start(); thread.join()
out.append(subprocess.check_output(["echo", "sub"], text=True).strip())
db = sqlite3.connect(":memory:")
db.execute("create table t (x)"); db.execute("insert into t values ('sqlite')")
out.append(db.execute("select x from t").fetchone()[0])
left, right = socket.socketpair(); left.sendall(b"pair"); out.append(right.recv(4).decode())
with multiprocessing.Pool(2) as pool: out.append(str(sum(pool.map(abs, [-1, -2]))))
out.append(open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
print(" ".join(out))
"""


def test_python_runs_under_the_filter() -> None:
    result = _run_filtered(["/usr/bin/python3", "-c", PYTHON_WORKLOAD])
    assert (result.returncode, result.stdout) == (0, "thread sub sqlite pair 3 2\n"), result.stderr


def test_pip_runs_under_the_filter() -> None:
    result = _run_filtered(["/usr/bin/python3", "-m", "pip", "--version"])
    assert result.returncode == 0 and result.stdout.startswith("pip "), result.stderr


NODE_WORKLOAD = """
const fs = require('fs'); const cp = require('child_process');
fs.writeFileSync(process.env.FILE, 'fs');
const out = [fs.readFileSync(process.env.FILE, 'utf8'), cp.execSync('echo hi').toString().trim()];
fs.promises.readFile(process.env.FILE, 'utf8')
  .then(text => new Promise(resolve => setTimeout(() => resolve(text + '-promise'), 10)))
  .then(text => {
    out.push(text, /Seccomp:\\t(\\d)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]);
    console.log(out.join(' '));
  });
"""


def test_node_runs_under_the_filter_with_io_uring_denied(tmp_path: Path) -> None:
    # UV_USE_IO_URING=1 makes libuv try io_uring_setup first; EPERM must send it to the
    # thread pool instead of failing.
    env = {"PATH": "/usr/bin:/bin", "FILE": str(tmp_path / "f"), "UV_USE_IO_URING": "1"}
    result = _run_filtered(["/usr/bin/node", "-e", NODE_WORKLOAD], env=env)
    assert (result.returncode, result.stdout) == (0, "fs hi fs-promise 2\n"), result.stderr


BASH_WORKLOAD = r"""
set -euo pipefail
[ "$(ls /usr/bin | wc -l)" -gt 10 ]
printf 'b\na\nc\n' | sort | sed 's/a/A/' | tr '\n' ' '
sed -n 's/^Seccomp:\t//p' /proc/self/status
"""


def test_bash_pipeline_runs_under_the_filter() -> None:
    result = _run_filtered(["/usr/bin/bash", "-c", BASH_WORKLOAD])
    assert (result.returncode, result.stdout) == (0, "A b c 2\n"), result.stderr
