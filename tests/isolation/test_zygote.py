"""Warm python sandboxes forked from a zygote (nodeagent/isolation/zygote.py): each must still
be a fresh interpreter of its own, and the zygote must hold nothing of any sandbox and live
exactly as long as the spawner that started it."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path

from nodeagent.config import SandboxConfig
from nodeagent.runtime import Runtime
from tests.conftest import Runner
from tests.isolation.runtimes import (
    COLD_ENV,
    SANDBOX_UIDS,
    WAIT_S,
    alive,
    chain_of,
    in_cgroup_subtree,
    own_runtime,
    processes,
    wait_until,
)

# The blocked, ignored and caught signal masks, of the standard signals (1-31: the host's
# processes inherit dispositions of glibc's own real-time signals from their parents).
FRESH_STATE = (
    "print(*(f'{line.split()[0]} {int(line.split()[1], 16) & 0x7FFFFFFF:x}' for line in open('/proc/self/status')"
    " if line.startswith(('SigBlk', 'SigIgn', 'SigCgt'))))"
)


def _is_python(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/exe").resolve().name.startswith("python3")
    except OSError:  # gone meanwhile
        return False


def _zygotes(runtime: Runtime) -> list[int]:
    """The spawner's children that are python processes of host root: its zygotes."""
    spawner = runtime._spawner._process.pid  # type: ignore[union-attr]  # white-box: whose children
    return [p.pid for p in processes() if p.ppid == spawner and p.uid == 0 and _is_python(p.pid)]


async def test_warm_python_sandboxes_come_from_one_zygote_that_holds_none_of_their_fds():
    async with own_runtime(SandboxConfig(name="forked", warm=3)) as runtime:
        await runtime.wait_warm(WAIT_S)
        [zygote] = _zygotes(runtime)
        fds = {fd: os.readlink(f"/proc/{zygote}/fd/{fd}") for fd in os.listdir(f"/proc/{zygote}/fd")}
        assert {fds[fd] for fd in ("0", "1", "2")} == {os.devnull}
        others = {fd: target for fd, target in fds.items() if fd not in ("0", "1", "2")}
        assert len(others) == 1 and next(iter(others.values())).startswith("socket:"), others
        outcome = await Runner(runtime)("print('forked')", sandbox="forked")
        assert (outcome.stdout, outcome.result.cold_start) == ("forked\n", False)


async def test_a_forked_sandbox_is_cloned_straight_into_its_namespaces_as_init_under_the_spawner():
    """No launcher process (A) between the spawner and a zygote's sandbox: init is the
    spawner's own child, pid 1 of the sandbox, and its code runs as pid 2."""
    async with own_runtime(SandboxConfig(name="direct", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        [sandbox] = runtime.pools[("direct", "python")]._idle  # type: ignore[attr-defined]  # white-box
        assert sandbox.init_pid is not None
        [init] = chain_of(sandbox.init_pid)
        assert init.ppid == runtime._spawner._process.pid  # type: ignore[union-attr]
        outcome = await Runner(runtime)("import os; print(os.getpid(), os.getppid())", sandbox="direct")
    assert (outcome.stdout, outcome.result.cold_start) == ("2 1\n", False), outcome.stderr


async def test_a_forked_sandbox_sees_no_host_path_of_the_agent_in_its_memory_map():
    """The zygote maps the launcher's library: from a copy in memory, not the data dir's file."""
    async with own_runtime(SandboxConfig(name="mapped", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        outcome = await Runner(runtime)("print(open('/proc/self/maps').read())", sandbox="mapped")
    assert "baponi-launch" in outcome.stdout, outcome.stderr  # the library is there...
    assert str(runtime.data_dir) not in outcome.stdout  # ...under no host path
    assert "/memfd:baponi-launch" in outcome.stdout


async def test_a_call_that_finds_no_warm_sandbox_gets_one_forked_for_it_alone():
    """A dry pool (here a pool of none) costs the call a fork of the zygote, not an
    interpreter's start; only a start-up variable still asks for a freshly started one."""
    maps = "print(open('/proc/self/maps').read())"
    async with own_runtime(SandboxConfig(name="dry", warm=0)) as runtime:
        run = Runner(runtime)
        forked = await run(maps, sandbox="dry")
        started = await run(maps, sandbox="dry", env=COLD_ENV["python"])
    assert forked.result.cold_start and "/memfd:baponi-launch" in forked.stdout, forked.stderr
    assert started.result.cold_start and started.exit_code == 0, started.stderr
    assert "baponi-launch" not in started.stdout


def _writable_kib(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        span, perms = line.split()[:2]
        if perms == "rw-p":
            start, end = (int(bound, 16) for bound in span.split("-"))
            total += (end - start) // 1024
    return total


def _private_dirty_kib(smaps_rollup: str) -> int:
    return next(int(line.split()[1]) for line in smaps_rollup.splitlines() if line.startswith("Private_Dirty:"))


def _warm_code_process(runtime: Runtime) -> int:
    """The idle warm python's interpreter: the code's user, not the sandbox's root."""
    [code] = [
        p for p in in_cgroup_subtree(runtime.cgroup_parent)
        if p.uid in SANDBOX_UIDS and p.uid != SANDBOX_UIDS.start and _is_python(p.pid)
    ]
    return code.pid


def _count_page_faults(pid: int) -> int:
    """A software perf counter of `pid`'s page faults (perf_event_open(2)); read it with
    os.read: its count stays readable once the process has exited."""
    perf_event_open, perf_type_software, page_faults, attr_size, fd_cloexec = 298, 1, 2, 64, 8  # x86_64
    attr = ctypes.create_string_buffer(struct.pack("IIQ", perf_type_software, attr_size, page_faults), attr_size)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(perf_event_open), attr, ctypes.c_int(pid), ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(fd_cloexec))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    return fd


async def test_a_warm_sandbox_owns_the_pages_a_run_writes_before_its_call_and_no_more():
    """While idle it copies what the zygote's trial run wrote, so a call's first writes take no
    copy-on-write faults; not the zygote's whole writable memory, which cost a third of the
    CPU of an execution under load (docs/benchmarks.md)."""
    async with own_runtime(SandboxConfig(name="owned", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        [zygote] = _zygotes(runtime)
        writable_kib = _writable_kib(zygote)
        idle_kib = _private_dirty_kib(Path(f"/proc/{_warm_code_process(runtime)}/smaps_rollup").read_text())
        outcome = await Runner(runtime)("print(open('/proc/self/smaps_rollup').read())", sandbox="owned")
    run_kib = _private_dirty_kib(outcome.stdout)
    assert run_kib * 0.8 <= idle_kib <= writable_kib / 2, (idle_kib, run_kib, writable_kib)


async def test_a_trivial_call_takes_few_page_faults_its_end_included():
    """What a run writes after its code, as it ends (its objects released, its output
    flushed), is copied ahead too: left to copy-on-write, a `print(1)` call took ~140 faults
    (~0.5 ms), most of them in the allocator's frees at its end; now ~20, mostly the
    interpreter's own text, mapped at first touch in every fork."""
    async with own_runtime(SandboxConfig(name="faults", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        counter = _count_page_faults(_warm_code_process(runtime))
        try:
            outcome = await Runner(runtime)("print(1)", sandbox="faults")
            assert outcome.stdout == "1\n", outcome.stderr
            faults = struct.unpack("Q", os.read(counter, 8))[0]
        finally:
            os.close(counter)
    assert 0 < faults < 60, faults


async def test_each_forked_interpreter_is_as_fresh_as_a_started_one():
    """Its own randomness, and the signal state `python3 -c` starts with (SIGINT raises
    KeyboardInterrupt, SIGPIPE and SIGXFSZ ignored, nothing blocked)."""
    async with own_runtime(SandboxConfig(name="fresh", warm=2)) as runtime:
        run = Runner(runtime)
        await runtime.wait_warm(WAIT_S)
        draws = [
            (await run("import os, random, uuid; print(random.random(), os.urandom(8).hex(), uuid.uuid4())", sandbox="fresh")).stdout
            for _ in range(3)
        ]
        assert len({value for draw in draws for value in draw.split()}) == 9, draws
        await runtime.wait_warm(WAIT_S)
        forked = await run(FRESH_STATE, sandbox="fresh")
        started = subprocess.run(["python3", "-c", FRESH_STATE], capture_output=True, text=True, check=True)
        assert forked.stdout == started.stdout, (forked.stdout, started.stdout)
        interrupted = await run("import os, signal; os.kill(os.getpid(), signal.SIGINT)", sandbox="fresh")
        assert interrupted.result.exit_code == 130 and "KeyboardInterrupt" in interrupted.stderr, interrupted.stderr


async def test_a_killed_zygote_is_replaced_and_its_sandboxes_live_on():
    """A sandbox's processes are the spawner's, not the zygote's: they outlive it."""
    async with own_runtime(SandboxConfig(name="orphans", warm=2)) as runtime:
        await runtime.wait_warm(WAIT_S)
        [zygote] = _zygotes(runtime)
        os.kill(zygote, signal.SIGKILL)
        run = Runner(runtime)
        for _ in range(4):  # the two warm ones, then ones forked from a new zygote
            outcome = await run("print('on')", sandbox="orphans")
            assert outcome.stdout == "on\n", outcome.stderr
        await runtime.wait_warm(WAIT_S)
        assert len(_zygotes(runtime)) == 1 and _zygotes(runtime) != [zygote]


async def test_the_zygote_ends_with_its_spawner():
    async with own_runtime(SandboxConfig(name="ending", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        [pid] = _zygotes(runtime)
        [zygote] = [p for p in processes() if p.pid == pid]
    await wait_until(lambda: not alive(zygote), "the zygote exited")


async def test_the_zygote_runs_nothing_from_a_host_home_of_the_sandbox_user(tmp_path: Path):
    """The zygote starts as root on the host: a `.pth` file under a host /home/baponi (a
    service user's home, say) must not run there. Sandboxes still get their own ~/.local."""
    home = Path("/home/baponi")
    assert not home.exists(), "this test needs the host to have no /home/baponi"
    version = subprocess.run(
        ["python3", "-c", "import sys; print(f'python{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    user_site = home / ".local" / "lib" / version / "site-packages"
    marker = tmp_path / "ran-as-root"
    try:
        user_site.mkdir(parents=True)
        (user_site / "planted.pth").write_text(f"import os; open({str(marker)!r}, 'w').close()\n")
        async with own_runtime(SandboxConfig(name="homeless", warm=1)) as runtime:
            await runtime.wait_warm(WAIT_S)
            outcome = await Runner(runtime)("import site; print(site.getusersitepackages())", sandbox="homeless")
        assert outcome.stdout == f"/home/baponi/.local/lib/{version}/site-packages\n", outcome.stderr
        assert not marker.exists(), "the zygote ran a .pth file of the host's /home/baponi"
    finally:
        shutil.rmtree(home, ignore_errors=True)
