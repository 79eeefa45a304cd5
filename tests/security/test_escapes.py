"""Escape attempts: untrusted code trying to reach the host from inside a sandbox.

Each test is one class of attack, run for real through the session's runtime. A test asserts
the attempt fails *for the reason the defence gives* (an errno, an error message, an exit
status), and where that says something, shows the contrast that proves the test could fail:
the same read works on the host, the same syscall gets another answer from the kernel when it
runs unfiltered on the host as the sandbox's own host uid, the port is reachable from the test
process itself.

Snippets run inside the sandbox (and, for contrasts, on the host) with PRELUDE, which reports
an outcome as "ok" or the errno's name, so expectations read like the man pages.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import nodeagent
from nodeagent.execution import ExecutionRequest, ExecutionResult, OutputChunk
from nodeagent.images.default import default_image
from nodeagent.runtime import BASE_ENV
from nodeagent.sandbox import SandboxError
from tests.isolation.runtimes import wait_until
from tests.isolation.watch import doomed

SANDBOX_UID = 1000
HOST_UID = 200_000 + SANDBOX_UID  # what the code's uid 1000 is on the host
HOST_PYTHON = "/usr/bin/python3"  # the interpreter the sandbox runs, from the same /usr
BAPONI_ETC = default_image().etc_files

# --- helpers --------------------------------------------------------------------------------

PRELUDE = r'''
import ctypes, errno, json, os, socket, struct, sys, time

def attempt(fn, *args):
    """The call's value ("ok" for None), or the name of the errno it failed with."""
    try:
        value = fn(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok" if value is None else value

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def syscall(number, *args):
    """A raw syscall: "ok", or the errno's name. Integers go in as 64-bit registers."""
    raw = [ctypes.c_ulong(a % 2**64) if isinstance(a, int) else a for a in args]
    if libc.syscall(ctypes.c_long(number), *raw) == -1:
        return errno.errorcode[ctypes.get_errno()]
    return "ok"

def in_child(fn):
    """fn() (a string) computed in a forked child: for calls that change the caller for good."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, fn().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        result = reader.read().decode()
    os.waitpid(pid, 0)
    return result
'''


def _data(name: str, value: object) -> str:
    """A line of Python that binds `name` to `value` in a snippet."""
    return f"{name} = {value!r}\n"


async def sandbox_outcome(run, body: str, language: str = "python", **fields):  # noqa: ANN001, ANN201
    """Run `body` (after PRELUDE, for python) in a sandbox; it must exit 0."""
    code = PRELUDE + body if language == "python" else body
    outcome = await run(code, language, **fields)
    assert outcome.exit_code == 0 and outcome.result.error is None, (outcome.result, outcome.stderr)
    return outcome


async def in_sandbox(run, body: str, language: str = "python", **fields) -> str:  # noqa: ANN001
    return (await sandbox_outcome(run, body, language, **fields)).stdout


async def sandbox_json(run, body: str, **fields):  # noqa: ANN001, ANN201
    return json.loads(await in_sandbox(run, body, **fields))


def on_host(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv on the host as the sandbox's host uid: same uid, no capabilities, but no
    namespaces, no seccomp filter and no no_new_privs. What the kernel alone would answer."""
    return subprocess.run(
        argv, user=HOST_UID, group=HOST_UID, extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True, text=True, timeout=30, check=False,
    )


def host_json(body: str):  # noqa: ANN201
    done = on_host([HOST_PYTHON, "-c", PRELUDE + body])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def host_markers(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Host paths no sandbox may learn: the agent's data dir and code, its python, /root, pytest's tmp."""
    return [
        str(data_dir), str(data_dir.resolve()), str(Path(nodeagent.__file__).resolve().parents[1]),
        sys.prefix, sys.base_prefix, "/root", str(tmp_path_factory.getbasetemp()),
    ]


def leaked(text: str, markers: list[str]) -> list[str]:
    return [marker for marker in markers if marker in text]


@pytest.fixture(scope="module")
def secret(data_dir: Path) -> Iterator[tuple[Path, str]]:
    """A world-readable file in the agent's data dir: only isolation, not permissions, guards it."""
    token = f"agent-secret-{uuid.uuid4().hex}"
    path = data_dir / "secret.txt"
    path.write_text(token)
    path.chmod(0o644)
    yield path, token
    path.unlink()


# --- reading host files ---------------------------------------------------------------------


async def test_host_files_do_not_exist_inside(run, secret, data_dir):
    """The root is a fresh tmpfs with the host's /usr and Baponi's own /etc: the agent's data
    dir (and a secret in it), its code, /etc/shadow, /root and the host's sockets are not there
    to be read, even though every one of them is readable on the host by this test."""
    secret_path, token = secret
    targets = [
        str(secret_path), str(data_dir), str(data_dir / "stage"), "/etc/shadow", "/root",
        nodeagent.__file__, sys.executable, "/var/run/postgresql/.s.PGSQL.5432",
    ]
    assert secret_path.read_text() == token
    assert all(os.path.lexists(p) for p in targets), "contrast: each target exists on the host"

    inside = await sandbox_json(run, _data("TARGETS", targets) + r'''
print(json.dumps({
    "stat": {p: attempt(lambda: os.stat(p) and None) for p in TARGETS},
    "etc": sorted(os.listdir("/etc")),
    "passwd": open("/etc/passwd").read(),
}))
''')
    assert inside["stat"] == dict.fromkeys(targets, "ENOENT")
    assert inside["etc"] == sorted([*BAPONI_ETC, "alternatives"]), "no shadow, no host /etc: only Baponi's own files"
    assert inside["passwd"] == BAPONI_ETC["passwd"].decode() != Path("/etc/passwd").read_text()


async def test_pid1_is_the_sandbox_init_and_unreadable(run):
    """Inside, pid 1 is the sandbox's own init (started moments ago, root of the sandbox's
    user namespace), not the host's; uid 1000 may not read its environment, memory, fds,
    root, cwd or executable (ptrace access checks: EACCES)."""
    inside = await sandbox_json(run, r'''
status = dict(line.split(":\t", 1) for line in open("/proc/1/status").read().splitlines())
print(json.dumps({
    "uid": status["Uid"].split(), "ppid": status["PPid"].strip(),
    "started": int(open("/proc/1/stat").read().rsplit(")", 1)[1].split()[19]),
    "uptime": float(open("/proc/uptime").read().split()[0]),
    "cmdline": open("/proc/1/cmdline").read(),
    "reads": {p: attempt(lambda: open(f"/proc/1/{p}", "rb").read(1) and None) for p in ("environ", "mem", "maps", "auxv")},
    "links": {p: attempt(os.readlink, f"/proc/1/{p}") for p in ("root", "cwd", "exe", "ns/mnt", "ns/user")},
    "fds": attempt(os.listdir, "/proc/1/fd"),
}))
''')
    ticks = os.sysconf("SC_CLK_TCK")
    host_init_started = int(Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert inside["uid"] == ["0"] * 4 and inside["ppid"] == "0"
    assert inside["started"] > host_init_started, "the host's init started at boot"
    assert inside["uptime"] * ticks - inside["started"] < 1200 * ticks, "the sandbox's init is at most minutes old"
    assert inside["cmdline"] != Path("/proc/1/cmdline").read_text()
    assert inside["reads"] == dict.fromkeys(("environ", "mem", "maps", "auxv"), "EACCES")
    assert inside["links"] == dict.fromkeys(("root", "cwd", "exe", "ns/mnt", "ns/user"), "EACCES")
    assert inside["fds"] == "EACCES"


async def test_pid1_command_line_reveals_no_host_paths(run, data_dir, tmp_path_factory):
    """pid 1's command line is world-readable inside: it must not tell the code where the
    agent lives on the host (its install path, python, data dir)."""
    cmdline = await in_sandbox(run, "print(open('/proc/1/cmdline').read().replace('\\0', ' '))")
    assert leaked(cmdline, host_markers(data_dir, tmp_path_factory)) == [], f"/proc/1/cmdline is {cmdline!r}"


async def test_mountinfo_and_cgroups_reveal_no_host_paths(run, data_dir, tmp_path_factory):
    """mountinfo names every mount's source and root, /proc/self/cgroup the agent's cgroup
    hierarchy: neither may name the data dir (where roots are staged), /root, pytest's tmp or the agent's
    code; the cgroup namespace shows the sandbox's cgroup as "/". And no sandbox mount
    propagates back to the host."""
    inside = await sandbox_json(run, r'''
print(json.dumps({name: open(f"/proc/self/{name}").read() for name in ("mountinfo", "mounts", "cgroup")}))
''')
    markers = host_markers(data_dir, tmp_path_factory)
    for name, text in inside.items():
        assert leaked(text, markers) == [], f"/proc/self/{name} names host paths:\n{text}"
    points = {line.split()[4] for line in inside["mountinfo"].splitlines()}
    assert {"/", "/usr", "/home/baponi", "/tmp", "/proc", "/dev"} <= points, "contrast: the table is the real one"
    assert {line.rsplit(":", 1)[1] for line in inside["cgroup"].splitlines()} == {"/"}
    assert leaked(Path("/proc/self/mountinfo").read_text(), [str(data_dir)]) == [], "sandbox mounts leaked to the host"


# --- kernel attack surface (seccomp) --------------------------------------------------------

# Each call gets arguments the kernel itself would answer differently (success, EFAULT,
# EINVAL, ENOKEY): EPERM inside can then only come from the filter.
FILTERED_SYSCALLS = r'''
BAD = 1  # an unmapped address: the kernel faults on it instead of doing anything
CLONE_NEWUSER, SIGCHLD, PTRACE_TRACEME, PTRACE_ATTACH, KEY_SPEC_PROCESS_KEYRING = 0x10000000, 17, 0, 16, -2
NR = dict(clone=56, ptrace=101, mount=165, umount2=166, unshare=272, setns=308, keyctl=250, add_key=248,
          bpf=321, perf_event_open=298, io_uring_setup=425, process_vm_readv=310)

def clone_new_user():
    child = libc.syscall(ctypes.c_long(NR["clone"]), ctypes.c_ulong(CLONE_NEWUSER | SIGCHLD), *[ctypes.c_ulong(0)] * 4)
    if child == 0:
        os._exit(0)  # the raw clone's child: leave at once
    if child > 0:
        os.waitpid(child, 0)
        return "ok"
    return errno.errorcode[ctypes.get_errno()]

def attach_own_child():
    victim = os.fork()
    if victim == 0:
        time.sleep(30)
        os._exit(0)
    try:
        return syscall(NR["ptrace"], PTRACE_ATTACH, victim, 0, 0)
    finally:
        os.kill(victim, 9)
        os.waitpid(victim, 0)

print(json.dumps({
    "ptrace(PTRACE_TRACEME)": in_child(lambda: syscall(NR["ptrace"], PTRACE_TRACEME, 0, 0, 0)),
    "ptrace(PTRACE_ATTACH, own child)": attach_own_child(),
    "mount(BAD, BAD, BAD)": syscall(NR["mount"], BAD, BAD, BAD, 0, 0),
    "umount2(BAD, bad flags)": syscall(NR["umount2"], BAD, 0xFFFF),
    "unshare(CLONE_NEWUSER)": in_child(lambda: syscall(NR["unshare"], CLONE_NEWUSER)),
    "clone(CLONE_NEWUSER)": clone_new_user(),
    "setns(own user ns)": syscall(NR["setns"], os.open("/proc/self/ns/user", os.O_RDONLY), CLONE_NEWUSER),
    "keyctl(GET_KEYRING_ID)": syscall(NR["keyctl"], 0, KEY_SPEC_PROCESS_KEYRING, 0),
    "add_key(user)": in_child(lambda: syscall(NR["add_key"], b"user", b"baponi", b"x", 1, KEY_SPEC_PROCESS_KEYRING)),
    "bpf(bad cmd)": syscall(NR["bpf"], 0xFFFF, 0, 0),
    "perf_event_open(BAD)": syscall(NR["perf_event_open"], BAD, 0, -1, -1, 0),
    "io_uring_setup(1, BAD)": syscall(NR["io_uring_setup"], 1, BAD),
    "process_vm_readv(self)": syscall(NR["process_vm_readv"], os.getpid(), 0, 0, 0, 0, 0),
}))
'''


async def test_dangerous_syscalls_are_refused_by_the_filter(run):
    """ptrace, mount, umount, new user namespaces (unshare or clone), setns, the keyring, bpf, perf, io_uring and
    cross-process memory access are refused with EPERM inside, while the very same calls,
    run unfiltered on the host as the same host uid, get the kernel's own answer."""
    inside = await sandbox_json(run, FILTERED_SYSCALLS)
    kernel = host_json(FILTERED_SYSCALLS)
    assert inside == dict.fromkeys(kernel, "EPERM")
    assert [call for call, answer in kernel.items() if answer == "EPERM"] == [], f"contrast: the kernel's answers {kernel}"


async def test_real_escape_syscalls_are_refused(run):
    """The same attacks with real arguments: attach to pid 1, mount over /tmp, detach /proc,
    a new mount namespace, enter pid 1's namespaces. The filter and the missing capabilities
    both refuse; /proc/1/ns is not even openable."""
    inside = await sandbox_json(run, r'''
print(json.dumps({
    "ptrace(PTRACE_ATTACH, 1)": syscall(101, 16, 1, 0, 0),
    "mount(tmpfs on /tmp)": syscall(165, b"none", b"/tmp", b"tmpfs", 0, 0),
    "umount2(/proc, MNT_DETACH)": syscall(166, b"/proc", 2),
    "unshare(CLONE_NEWNS)": syscall(272, 0x20000),
    "open(/proc/1/ns/mnt)": attempt(os.open, "/proc/1/ns/mnt", os.O_RDONLY),
    "setns(own uts ns)": syscall(308, os.open("/proc/self/ns/uts", os.O_RDONLY), 0x04000000),
}))
''')
    assert inside == {
        "ptrace(PTRACE_ATTACH, 1)": "EPERM", "mount(tmpfs on /tmp)": "EPERM", "umount2(/proc, MNT_DETACH)": "EPERM",
        "unshare(CLONE_NEWNS)": "EPERM", "open(/proc/1/ns/mnt)": "EACCES", "setns(own uts ns)": "EPERM",
    }


async def test_unshare_and_mount_commands_fail_in_bash(run):
    """The same from the shell: util-linux `unshare` reports the kernel's EPERM; `mount`, setuid
    root on the host but not in here, refuses as the unprivileged user it runs as; /tmp stays
    the same filesystem. (Each command's exit status and first line of error.)"""
    script = r'''
stat -c %d /tmp
for cmd in "unshare -U true" "unshare -m true" "mount -t tmpfs none /tmp"; do
  out=$($cmd 2>&1); echo "$cmd|$?|${out%%$'\n'*}"
done
stat -c %d /tmp
'''
    lines = (await in_sandbox(run, script, "bash")).splitlines()
    assert lines[1:-1] == [
        "unshare -U true|1|unshare: unshare failed: Operation not permitted",
        "unshare -m true|1|unshare: unshare failed: Operation not permitted",
        "mount -t tmpfs none /tmp|32|mount: /tmp: must be superuser to use mount.",
    ]
    assert lines[0] == lines[-1], "/tmp was not replaced"


# --- setuid binaries ------------------------------------------------------------------------

SETUID_PROBE = r'''
for b in /usr/bin/su /usr/bin/passwd /usr/bin/mount; do
  echo "$b $(stat -c %A $b) $(LD_SHOW_AUXV=1 $b --help </dev/null 2>/dev/null | grep -E '^AT_(EUID|SECURE):' | tr -s ' ' | paste -sd' ')"
done
'''


async def test_setuid_binaries_gain_nothing(run):
    """/usr/bin/su, passwd and mount are setuid root on the host, and their bit is visible
    inside; but /usr is mounted nosuid and the code has no_new_privs, so exec keeps euid 1000
    (the loader's AT_EUID) and is no secure exec (AT_SECURE 0). On the host the same binaries,
    run as the same uid, do get root: the loader then ignores LD_SHOW_AUXV."""
    setuid = [Path(p) for p in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount")]
    assert all(p.stat().st_mode & stat.S_ISUID and p.stat().st_uid == 0 for p in setuid)
    host = on_host(["/bin/bash", "-c", SETUID_PROBE])
    assert host.stdout.splitlines() == [f"{p} -rwsr-xr-x " for p in setuid], "contrast: setuid works on the host"

    probe = SETUID_PROBE + "grep NoNewPrivs /proc/self/status\ngrep -E '^([^ ]+ ){4}/usr ' /proc/self/mountinfo | cut -d' ' -f6\n"
    lines = (await in_sandbox(run, probe, "bash")).splitlines()
    assert lines[:3] == [f"{p} -rwsr-xr-x AT_EUID: {SANDBOX_UID} AT_SECURE: 0" for p in setuid]
    assert lines[3] == "NoNewPrivs:\t1"
    assert "nosuid" in lines[4].split(",")


# --- network ------------------------------------------------------------------------------


def _reachable(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def postgres() -> tuple[str, int]:
    """The host's PostgreSQL on 127.0.0.1:5432, started if it is down."""
    address = ("127.0.0.1", 5432)
    if not _reachable(address):
        versions = os.listdir("/etc/postgresql")
        for version in versions:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False, timeout=60)
    assert _reachable(address), "contrast: the host's PostgreSQL must be reachable from the test process"
    return address


def _host_addresses() -> list[str]:
    shown = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return [a["local"] for link in json.loads(shown) for a in link.get("addr_info", []) if a["local"] != "127.0.0.1"]


NETWORK = r'''
EAI = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}

def connect(family, address):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return attempt(s.connect, address)

def resolve(name):
    try:
        return socket.getaddrinfo(name, 80) and "ok"
    except socket.gaierror as exc:
        return EAI.get(exc.errno, str(exc.errno))

with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    dns = attempt(udp.sendto, b"\0", ("8.8.8.8", 53))
print(json.dumps({
    "interfaces": [name for _, name in socket.if_nameindex()],
    "routes": open("/proc/net/route").read().splitlines()[1:],
    "loopback": {f"{h}:{p}": connect(socket.AF_INET, (h, p)) for h, p in LOOPBACK},
    "elsewhere": {h: connect(socket.AF_INET, (h, 5432)) for h in ELSEWHERE},
    "udp 8.8.8.8:53": dns,
    "resolve": resolve("example.com"),
    "abstract": connect(socket.AF_UNIX, ABSTRACT),
}))
'''


async def test_network_is_loopback_only(run, postgres):
    """A blocked sandbox has its own network namespace with only `lo`: the host's PostgreSQL
    on 127.0.0.1:5432 is refused (that loopback is the sandbox's own, nothing listens), the
    host's own addresses and the outside world have no route (ENETUNREACH), DNS cannot be
    asked, and the host's abstract unix sockets (per network namespace) are not there. The
    port and the abstract socket both answer the test process (no traffic is sent off the
    machine: inside there is no route, outside nothing but loopback is dialled)."""
    abstract = f"\0baponi-escape-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(abstract)
        listener.listen()
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(abstract)  # contrast: it answers on the host
        elsewhere = [*_host_addresses(), "10.0.0.1", "8.8.8.8"]
        body = _data("LOOPBACK", [postgres]) + _data("ELSEWHERE", elsewhere) + _data("ABSTRACT", abstract) + NETWORK
        inside = await sandbox_json(run, body)
    assert inside == {
        "interfaces": ["lo"],
        "routes": [],
        "loopback": {"127.0.0.1:5432": "ECONNREFUSED"},
        "elsewhere": dict.fromkeys(elsewhere, "ENETUNREACH"),
        "udp 8.8.8.8:53": "ENETUNREACH",
        "resolve": "EAI_AGAIN",
        "abstract": "ECONNREFUSED",
    }


SOCKET_FAMILIES = r'''
NR_SOCKET, AF_ALG, AF_VSOCK, HIGH = 41, 38, 40, 1 << 32
print(json.dumps({
    "AF_VSOCK": syscall(NR_SOCKET, AF_VSOCK, socket.SOCK_STREAM, 0),
    "AF_VSOCK|high": syscall(NR_SOCKET, AF_VSOCK | HIGH, socket.SOCK_STREAM, 0),
    "AF_ALG": syscall(NR_SOCKET, AF_ALG, socket.SOCK_SEQPACKET, 0),
    "AF_ALG|high": syscall(NR_SOCKET, AF_ALG | HIGH, socket.SOCK_SEQPACKET, 0),
}))
'''


async def test_sockets_that_bypass_the_network_namespace_are_refused(run):
    """AF_VSOCK talks to the hypervisor (this very host is a VM whose agent listens on vsock),
    past any network namespace; AF_ALG exposes the kernel crypto API. Creating either is
    refused by the filter (EPERM), also with junk in the family's high 32 bits, while the
    same uid on the host gets the kernel's answer (a socket, or EAFNOSUPPORT where the
    family is not built in). No socket is connected: nothing is sent anywhere."""
    inside = await sandbox_json(run, SOCKET_FAMILIES)
    kernel = host_json(SOCKET_FAMILIES)
    assert inside == dict.fromkeys(kernel, "EPERM")
    assert [family for family, answer in kernel.items() if answer == "EPERM"] == [], f"contrast: {kernel}"


# --- host processes -------------------------------------------------------------------------


def _host_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:  # the process is gone, or a kernel thread
        return b""


def _status(pid: int) -> dict[str, str]:
    lines = _read(f"/proc/{pid}/status").decode().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _uid_of(pid: int) -> int | None:
    uid = _status(pid).get("Uid")
    return int(uid.split()[0]) if uid else None


def _ns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def _pids_in(pid_ns: str) -> list[int]:
    """Host processes in the pid namespace `pid_ns` (as /proc/<pid>/ns/pid names it)."""
    return [pid for pid in _host_pids() if _ns_of(pid) == pid_ns]


@pytest.fixture
def host_sleeper() -> Iterator[subprocess.Popen]:
    """A host process of the sandbox's own host uid: only the pid namespace keeps code away."""
    sleeper = subprocess.Popen(["sleep", "60"], user=HOST_UID, group=HOST_UID, extra_groups=[], cwd="/")
    yield sleeper
    sleeper.kill()
    sleeper.wait()


async def test_host_processes_cannot_be_seen_signalled_or_read(run, runtime, host_sleeper):
    """The sandbox has its own pid namespace: /proc lists only its init and the code, and the
    test process, the spawner, the sandboxes' launchers and even a host process of the same
    host uid as the code are invisible: no /proc entry, ESRCH for kill and pidfd_open, EPERM (filter)
    for process_vm_readv; kill(-1) finds no one to kill. All of them are alive on the host."""
    spawner = runtime._spawner._process.pid
    launchers = [int(c) for task in os.listdir(f"/proc/{spawner}/task")
                 for c in _read(f"/proc/{spawner}/task/{task}/children").split()]
    agent = [os.getpid(), spawner, *launchers]
    assert launchers and _uid_of(host_sleeper.pid) == HOST_UID
    assert on_host(["kill", "-0", str(host_sleeper.pid)]).returncode == 0, "contrast: the same uid reaches it on the host"
    inside = await sandbox_json(run, _data("AGENT", agent) + _data("SLEEPER", host_sleeper.pid) + r'''
import signal
def reach(pid, sig):
    return [os.path.exists(f"/proc/{pid}"), attempt(os.kill, pid, sig), attempt(os.pidfd_open, pid),
            syscall(310, pid, 0, 0, 0, 0, 0)]
print(json.dumps({
    "proc": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "agent": [reach(pid, 0) for pid in AGENT],
    "sleeper": reach(SLEEPER, signal.SIGKILL),
    "kill(-1)": attempt(os.kill, -1, signal.SIGKILL),
}))
''')
    unreachable = [False, "ESRCH", "ESRCH", "EPERM"]
    assert inside == {"proc": [1, 2], "agent": [unreachable] * len(agent), "sleeper": unreachable, "kill(-1)": "ESRCH"}
    assert host_sleeper.poll() is None, "the same-uid host process survived"
    # Alive all along (launchers come and go with their sandboxes, the probe's own among them).
    assert all(os.path.exists(f"/proc/{pid}") for pid in (os.getpid(), spawner))


DAEMON = r'''
import os, signal, time
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "300"])
    os._exit(0)
os.wait()

def daemons():
    return [p for p in os.listdir("/proc") if p.isdigit() and open(f"/proc/{p}/cmdline").read() == "sleep\x00300\x00"]

deadline = time.monotonic() + 10
while not daemons() and time.monotonic() < deadline:
    time.sleep(0.005)
print("daemon", daemons(), flush=True)
signal.sigtimedwait([signal.SIGUSR1], 10)  # the host has seen the daemon: end, leaving it behind
'''
# Two ways to end: exit (init then kills what is left), or tell the end on fd 3 and go on
# running (only the supervisor's kills then stop the code and the daemon).
ENDINGS = {"exit": "", "forged": "import sys\nos.write(3, (1 << 32).to_bytes(8, sys.byteorder))\ntime.sleep(30)\n"}


@pytest.mark.parametrize("ending", ENDINGS)
async def test_daemon_dies_with_the_call(runtime, ending):
    """Code that setsid()s and double-forks a `sleep 300` daemon (reparented to the sandbox's
    init) and then ends: the daemon is seen on the host while the call runs; when the call
    returns, none of the code's processes can run any more, and soon none is left of its pid
    namespace, nor any carrying its marker."""
    marker = f"BAPONI_DAEMON={uuid.uuid4().hex}".encode()

    def daemons() -> list[int]:
        return [pid for pid in _host_pids() if marker in _read(f"/proc/{pid}/environ").split(b"\0")]

    request = ExecutionRequest(code=DAEMON + ENDINGS[ending], env=dict([marker.decode().split("=")]), timeout=30)
    seen: list[int] = []
    pid_ns = ""
    result = None
    async for event in runtime.execute("default", request):
        if isinstance(event, OutputChunk) and event.data.startswith(b"daemon") and not seen:
            assert event.data.strip() != b"daemon []", "the daemon never started"
            seen = [pid for pid in daemons() if _read(f"/proc/{pid}/cmdline") == b"sleep\x00300\x00"]
            assert len(seen) == 1 and _uid_of(seen[0]) == HOST_UID, "contrast: the daemon is visible on the host"
            pid_ns = _ns_of(seen[0])
            code = [pid for pid in _pids_in(pid_ns) if _status(pid).get("NSpid", "").split()[-1:] == ["2"]]
            os.kill(code[0], signal.SIGUSR1)  # the code (pid 2 inside) may exit now
        elif not isinstance(event, OutputChunk):
            result = event
    assert result is not None and result.exit_code == 0 and seen, result
    # The answer comes once each of the code's processes has been killed: none runs code any
    # more, and the kernel finishes their exits (and the sandbox's init's) moments later.
    code_left = [pid for pid in _pids_in(pid_ns) if _uid_of(pid) == HOST_UID]
    assert all(map(doomed, code_left)), f"still running in the call's pid namespace: {code_left}"
    await wait_until(lambda: not _pids_in(pid_ns), "the call's pid namespace is empty", timeout=5)
    assert daemons() == [], "the daemon outlived the call"


# --- terminals ------------------------------------------------------------------------------

TTY_INJECTION = r'''
import fcntl, termios, tty
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
TIOCSTI, TIOCLINUX, HIGH = 0x5412, 0x541C, 0xDEAD << 32

def ioctl(fd, request, buffer):
    return "ok" if libc.ioctl(fd, request, ctypes.addressof(buffer)) == 0 else errno.errorcode[ctypes.get_errno()]

def on_own_controlling_tty():
    os.setsid()
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    tty.setraw(slave)
    byte, winsize = ctypes.c_char(b"x"), ctypes.create_string_buffer(8)
    result = {
        "ttyname": os.ttyname(slave),
        "controlling": os.tcgetpgrp(slave) == os.getpid(),
        "TIOCGWINSZ": ioctl(slave, termios.TIOCGWINSZ, winsize),
        "TIOCSTI": ioctl(slave, TIOCSTI, byte),
        "TIOCSTI|high": ioctl(slave, TIOCSTI | HIGH, byte),
        "TIOCLINUX": ioctl(slave, TIOCLINUX, byte),
        "TIOCLINUX|high": ioctl(slave, TIOCLINUX | HIGH, byte),
    }
    os.set_blocking(slave, False)
    result["input queue"] = attempt(lambda: os.read(slave, 16).decode())
    return json.dumps(result)

print(in_child(on_own_controlling_tty))
'''


async def test_tty_injection_ioctls_are_refused(run):
    """TIOCSTI pushes keystrokes into a terminal's input, TIOCLINUX pastes on a console. On a
    pty the code opened and made its controlling terminal (where the kernel itself would let
    it inject), both are refused with EPERM, also with junk in the high 32 bits of the request
    (which the kernel ignores), and nothing reaches the input queue. Unfiltered on the host,
    the same uid injects for real."""
    inside = await sandbox_json(run, TTY_INJECTION)
    assert inside == {
        "ttyname": "/dev/pts/0", "controlling": True, "TIOCGWINSZ": "ok",
        "TIOCSTI": "EPERM", "TIOCSTI|high": "EPERM", "TIOCLINUX": "EPERM", "TIOCLINUX|high": "EPERM",
        "input queue": "EAGAIN",
    }
    # Kernels with dev.tty.legacy_tiocsti=0 refuse TIOCSTI themselves, with EIO.
    legacy = Path("/proc/sys/dev/tty/legacy_tiocsti").read_text().strip() == "1"
    host = host_json(TTY_INJECTION)
    injected = {"TIOCSTI": "ok", "TIOCSTI|high": "ok", "input queue": "xx"} if legacy else \
        {"TIOCSTI": "EIO", "TIOCSTI|high": "EIO", "input queue": "EAGAIN"}
    assert {key: host[key] for key in injected} == injected, f"contrast: {host}"
    assert host["TIOCLINUX"] == "ENOTTY", "the kernel's answer on a pty: not a console"


# --- writing to the system -----------------------------------------------------------------


async def test_system_directories_are_read_only(run):
    """/, /usr, /etc and /dev are read-only mounts (EROFS for new files, directories and
    overwrites); /sys is an empty directory of the read-only root, no sysfs; /proc/sys is a
    read-only bind (EROFS on truncate, EACCES to uid 1000 on plain write), and sethostname
    is refused (EPERM), so the hostname stays "sandbox"."""
    new = ["/escape", "/usr/escape", "/etc/escape", "/sys/escape", "/dev/escape"]
    inside = await sandbox_json(run, _data("NEW", new) + r'''
print(json.dumps({
    "create": {p: attempt(lambda: open(p, "w").close()) for p in NEW},
    "mkdir": {p: attempt(os.mkdir, p) for p in NEW},
    "overwrite /etc/passwd": attempt(lambda: open("/etc/passwd", "w").close()),
    "/sys": [os.listdir("/sys"), os.stat("/sys").st_dev == os.stat("/").st_dev],
    "hostname truncate": attempt(lambda: open("/proc/sys/kernel/hostname", "w").close()),
    "hostname write": attempt(os.open, "/proc/sys/kernel/hostname", os.O_WRONLY),
    "sethostname": attempt(socket.sethostname, "pwned"),
    "hostname": [open("/proc/sys/kernel/hostname").read(), os.uname().nodename],
}))
''')
    assert inside == {
        "create": dict.fromkeys(new, "EROFS"),
        "mkdir": dict.fromkeys(new, "EROFS"),
        "overwrite /etc/passwd": "EROFS",
        "/sys": [[], True],
        "hostname truncate": "EROFS",
        "hostname write": "EACCES",
        "sethostname": "EPERM",
        "hostname": ["sandbox\n", "sandbox"],
    }


async def test_dev_is_minimal_and_mknod_fails(run):
    """/dev holds only the harmless devices, the pty multiplexer and stdio links; /dev/pts is a
    private instance (no host terminals). Device nodes cannot be made (EPERM: no CAP_MKNOD in
    a user namespace), though mknod itself is allowed: a FIFO is made fine."""
    inside = await sandbox_json(run, r'''
import stat
print(json.dumps({
    "dev": sorted(os.listdir("/dev")), "pts": os.listdir("/dev/pts"),
    "char 1:1 (/dev/mem)": attempt(os.mknod, "/tmp/mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1)),
    "block 254:0 (host disk)": attempt(os.mknod, "/tmp/disk", 0o600 | stat.S_IFBLK, os.makedev(254, 0)),
    "fifo": attempt(os.mkfifo, "/tmp/fifo"),
    "/dev/tty": attempt(os.open, "/dev/tty", os.O_RDWR),
}))
''')
    assert inside == {
        "dev": sorted(["null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "fd", "stdin", "stdout", "stderr", "ptmx"]),
        "pts": ["ptmx"],
        "char 1:1 (/dev/mem)": "EPERM", "block 254:0 (host disk)": "EPERM", "fifo": "ok",
        "/dev/tty": "ENXIO",
    }


# --- home archives --------------------------------------------------------------------------


def tar_of(*members: tuple[str, str, object]) -> bytes:
    """A tar archive of (name, kind, detail): file (bytes, or (bytes, mode)), symlink and
    hardlink (link target), chardev ((major, minor))."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, detail in members:
            info = tarfile.TarInfo(name)
            content = None
            if kind == "file":
                content, info.mode = detail if isinstance(detail, tuple) else (detail, 0o644)
                info.size = len(content)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = detail
            elif kind == "chardev":
                info.type, (info.devmajor, info.devminor) = tarfile.CHRTYPE, detail
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


# (archive, what the runtime does with it). "refused: <text>" is the error the call fails
# with; otherwise the tree /home/baponi holds afterwards (path: kind and mode or target).
HOME_ARCHIVES = {
    "dotdot-path": (
        [("kept", "file", b"1"), ("../../../../tmp/{tok}", "file", b"x")], "refused: outside the destination"),
    "symlink-then-through-it": (
        [("out", "symlink", "/tmp"), ("out/{tok}", "file", b"x")], "refused: outside the destination"),
    "write-through-planted-symlink": (
        [("secret", "symlink", "{secret}"), ("secret", "file", b"overwritten")], "refused: outside the destination"),
    "device-node": ([("mem", "chardev", (1, 1))], "refused: Operation not permitted"),
    "absolute-paths": (
        [("/etc/{tok}", "file", b"x"), ("/tmp/{tok}", "file", b"x")],
        {"etc": "dir 755", "etc/{tok}": "file 644", "tmp": "dir 755", "tmp/{tok}": "file 644"}),
    "absolute-symlink": ([("passwd", "symlink", "/etc/passwd")], {"passwd": "link /etc/passwd"}),
    "hardlink-to-host-file": ([("h", "hardlink", "/etc/passwd")], {}),
    "setuid-file": ([("s", "file", (b"#!/bin/sh\n", 0o4755))], {"s": "file 755"}),
}

HOME_TREE = r'''
import stat

def describe(path):
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return "link " + os.readlink(path)
    return ("dir " if stat.S_ISDIR(mode) else "file ") + format(stat.S_IMODE(mode), "o")

tree, through_links = {}, {}
for top, dirs, files in os.walk("/home/baponi"):
    for name in dirs + files:
        path = os.path.join(top, name)
        tree[os.path.relpath(path, "/home/baponi")] = describe(path)
        if os.path.islink(path) and os.path.isfile(path):
            through_links[name] = open(path).read()
print(json.dumps({"tree": tree, "through links": through_links,
                  "escaped": [p for p in ESCAPES if os.path.lexists(p)]}))
'''


@pytest.mark.parametrize("case", HOME_ARCHIVES, ids=list(HOME_ARCHIVES))
async def test_home_archive_cannot_write_outside_home(run, data_dir, secret, case):
    """A home archive given at claim time is unpacked as uid 1000 inside the sandbox's own
    namespaces, with tarfile's "tar" filter: paths that climb out or run through a symlink
    are refused (the call fails with the filter's error), absolute names are made relative,
    device nodes cannot be made, setuid bits are dropped, links are kept as links. Whatever
    the archive holds, nothing appears on the host and the agent's secret is untouched."""
    tok = f"baponi-escape-{uuid.uuid4().hex}"
    secret_path, token = secret
    members, expected = HOME_ARCHIVES[case]
    fill = {"tok": tok, "secret": secret_path}
    members = [(name.format(**fill), kind, detail.format(**fill) if isinstance(detail, str) else detail)
               for name, kind, detail in members]
    escapes = [f"/tmp/{tok}", f"/etc/{tok}", f"/{tok}"]
    body = _data("ESCAPES", escapes) + HOME_TREE
    if isinstance(expected, str):
        with pytest.raises(SandboxError, match=re.escape(expected.removeprefix("refused: "))):
            await run(PRELUDE + body, home=tar_of(*members))
    else:
        inside = await sandbox_json(run, body, home=tar_of(*members))
        links = {name: BAPONI_ETC["passwd"].decode() for name, what in expected.items() if what == "link /etc/passwd"}
        assert inside == {
            "tree": {path.format(tok=tok): what for path, what in expected.items()},
            "through links": links,  # a link to /etc/passwd reads Baponi's passwd, not the host's
            "escaped": [],
        }
    assert [p for p in escapes if os.path.lexists(p)] == []
    assert list(data_dir.rglob(f"*{tok}*")) == [] and secret_path.read_text() == token


async def test_collected_home_keeps_symlinks_as_symlinks(run, secret):
    """Code plants links in its home to the host's sensitive files (by the host's paths), to
    /, and to pid 1's root; the home archive handed back holds each as a symlink with the
    code's target, never any content behind it (archiving follows no link). A hard link
    cannot even be made (EXDEV: home is its own filesystem)."""
    secret_path, token = secret
    links = {"passwd": "/etc/passwd", "shadow": "/etc/shadow", "secret": str(secret_path), "rootdir": "/",
             "up": "../../../../etc/passwd", "init_root": "/proc/1/root"}
    outcome = await sandbox_outcome(run, _data("LINKS", links) + r'''
for name, target in LINKS.items():
    os.symlink(target, name)
open("plain", "w").write("collected")
print(attempt(os.link, "/etc/passwd", "hard"))
''', collect_home=True)
    assert outcome.stdout == "EXDEV\n"
    archive = outcome.result.home
    assert archive and token.encode() not in archive and Path("/etc/shadow").read_bytes() not in archive
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("plain").read() == b"collected", "contrast: content is collected"
    assert sorted(members) == sorted([*links, "plain"])
    assert {name: (m.issym(), m.linkname) for name, m in members.items() if name != "plain"} == {
        name: (True, target) for name, target in links.items()
    }


async def test_collected_home_cannot_outgrow_the_home_size(run, runtime):
    """The home archive is packed outside the sandbox's cgroup (by a helper of the host-side
    supervisor), in memory, and the supervisor and the agent then hold it again. Sparse files
    take no room in the home tmpfs but archive at their full length, so code must not be
    able to make that archive, host memory, larger than its home could ever hold: bounded by
    the home's size plus tar's headers, or the call fails."""
    home_bytes = runtime.configs["tight"].home_bytes
    # Not sandbox_outcome: a result that reports an error is a fine answer here.
    outcome = await run(PRELUDE + _data("SIZE", 2 * home_bytes) + r'''
for i in range(4):
    with open(f"sparse{i}", "wb") as f:
        f.truncate(SIZE)
st = os.statvfs("/home/baponi")
print((st.f_blocks - st.f_bfree) * st.f_frsize)
''', sandbox="tight", collect_home=True)
    assert outcome.exit_code == 0, outcome.stderr
    assert int(outcome.stdout) < 64 * 1024, "contrast: the sparse files take (almost) no room in the home"
    bound = home_bytes + 512 * (4 + 2) + tarfile.RECORDSIZE
    archived, error = len(outcome.result.home or b""), outcome.result.error
    assert error is not None or archived <= bound, (
        f"a {home_bytes >> 20} MiB home came back as a {archived >> 20} MiB archive, built in host memory"
    )


# Homes the host-side archiver cannot walk: tarfile recurses once per directory level, and
# the paths it builds outgrow PATH_MAX long before the tmpfs minds.
UNWALKABLE_HOMES = {
    "deeper-than-python-recursion": "for _ in range(1200):\n    os.mkdir('d'); os.chdir('d')\n",
    "longer-than-PATH_MAX": "for _ in range(20):\n    os.mkdir('x' * 255); os.chdir('x' * 255)\n",
}


@pytest.mark.parametrize("shape", UNWALKABLE_HOMES, ids=list(UNWALKABLE_HOMES))
async def test_home_the_archiver_cannot_walk_still_ends_the_call(runtime, shape):
    """Code shapes its home so that packing it (collect_home) fails on the host side. The
    call must still end with a result (the code's exit status, plus an error or a partial
    archive), not with the supervisor crashing; and nothing of the sandbox may survive."""
    code = "import os\nprint(os.readlink('/proc/self/ns/pid'), flush=True)\n" + UNWALKABLE_HOMES[shape]
    chunks: list[OutputChunk] = []
    ending: object = None
    try:
        async for event in runtime.execute("default", ExecutionRequest(code=code, collect_home=True, timeout=30)):
            if isinstance(event, OutputChunk):
                chunks.append(event)
            else:
                ending = event
    except SandboxError as exc:
        ending = exc
    pid_ns = chunks[0].data.decode().strip()
    for _ in range(100):  # whatever is left dies with its parent: give the kernel a moment
        if not _pids_in(pid_ns):
            break
        await asyncio.sleep(0.02)
    assert _pids_in(pid_ns) == [], "sandbox processes outlived the call"
    assert isinstance(ending, ExecutionResult) and ending.exit_code == 0, f"the call ended with {ending!r}"


# --- leaked fds, environment, cwd (runc CVE-2024-21626 style) ------------------------------

SELF_REPORT = {
    "python": r'''
fds = {fd: attempt(os.readlink, f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
print(json.dumps({"cwd": os.readlink("/proc/self/cwd"), "fds": fds, "env": dict(os.environ),
                  "fstat 3..20": {fd: attempt(os.fstat, fd) for fd in range(3, 21)},
                  "open /proc/self/fd/3..20": {fd: attempt(os.open, f"/proc/self/fd/{fd}", os.O_RDONLY) for fd in range(3, 21)}}))
''',
    "node": r'''
const fs = require("fs");
const fds = {};
for (const fd of fs.readdirSync("/proc/self/fd")) {
  try { fds[fd] = fs.readlinkSync(`/proc/self/fd/${fd}`); } catch (e) { /* the listing's own fd */ }
}
console.log(JSON.stringify({cwd: fs.readlinkSync("/proc/self/cwd"), fds, env: process.env}));
''',
    # Read by bash's children, with no pipe open in bash while its fds are listed.
    "bash": r'''
echo "cwd $(readlink /proc/$$/cwd)"
find /proc/$$/fd -mindepth 1 -printf 'fd %f %l\n'
tr '\0' '\n' < /proc/$$/environ | sed 's/^/env /'
''',
}


# Each language as the pool starts it (warm when one is idle), and python forced cold too
# (a startup variable makes it an exec start).
STARTS = {"python": ("python", {}), "python-cold": ("python", {"PYTHONDONTWRITEBYTECODE": "1"}),
          "node": ("node", {}), "bash": ("bash", {})}


async def self_report(run, start: str, env: dict[str, str]) -> dict:  # noqa: ANN001
    """What the code sees of its cwd, fds and environment, started as `start` says."""
    language, start_env = STARTS[start]
    outcome = await sandbox_outcome(run, SELF_REPORT[language], language, env=start_env | env)
    assert outcome.result.cold_start or not start_env, "a startup variable forces a cold start"
    out = outcome.stdout
    if language != "bash":
        return json.loads(out)
    lines = [line.split(" ", 1) for line in out.splitlines()]
    return {"cwd": next(rest for kind, rest in lines if kind == "cwd"),
            "fds": dict(rest.split(" ", 1) for kind, rest in lines if kind == "fd"),
            "env": dict(rest.split("=", 1) for kind, rest in lines if kind == "env")}


CALL_ENV = {"BAPONI_CALL": "only-this", "API_TOKEN": "given-by-the-call"}


@pytest.mark.parametrize("start", STARTS)
async def test_environment_is_exactly_the_calls(run, start):
    """The code sees the base environment and what its call passed, nothing of the agent's
    own environment (this test process's variables, the spawner's PATH)."""
    report = await self_report(run, start, CALL_ENV)
    assert report["env"] == BASE_ENV | STARTS[start][1] | CALL_ENV


@pytest.mark.parametrize("start", STARTS)
async def test_cwd_and_fds_reference_nothing_of_the_host(run, start):
    """runc CVE-2024-21626 leaked a host directory fd into the container (and so a host cwd).
    Here the code starts in /home/baponi and its fds are stdio pipes plus, for node, libuv's
    own pipes, eventfds, epoll instances and the sandbox's /dev/null: nothing of the host.
    Python sees exactly 0, 1, 2 (and the fd its listing holds), and when warm fd 3: the ready
    eventfd, on which the bootstrap tells the supervisor how the code ended (an anonymous
    inode: nothing of a filesystem, nor can it be opened again through /proc); every other fd
    up to 20 is closed (EBADF)."""
    language = STARTS[start][0]
    report = await self_report(run, start, {})
    assert report["cwd"] == "/home/baponi"
    stdio = {fd: report["fds"][fd] for fd in ("0", "1", "2")}
    assert all(re.fullmatch(r"pipe:\[\d+\]", target) for target in stdio.values()), stdio
    others = {fd: t for fd, t in report["fds"].items() if fd not in stdio}
    if language == "python":
        closed = 3
        if start == "python":  # warm: the bootstrap's ready eventfd
            assert others.pop("3") == "anon_inode:[eventfd]", report["fds"]
            assert report["open /proc/self/fd/3..20"].pop("3") == "EACCES", "the eventfd cannot be reopened"
            assert isinstance(report["fstat 3..20"].pop("3"), list), "open"
            closed = 4
        assert others == {str(closed): "ENOENT"}, "only the listing's own fd, closed once listed"
        assert report["fstat 3..20"] == {str(fd): "EBADF" for fd in range(closed, 21)}
        assert report["open /proc/self/fd/3..20"] == {str(fd): "ENOENT" for fd in range(closed, 21)}
    elif language == "node":
        # libuv also keeps the sandbox's own /dev/null open in reserve once a stream exists,
        # as a plain `node -e` does after its first console.log.
        allowed = r"pipe:\[\d+\]|anon_inode:\[(eventfd|eventpoll)\]|/dev/null"
        assert all(re.fullmatch(allowed, t) for t in others.values()), others
    else:
        assert others == {}, "bash holds only stdio"



