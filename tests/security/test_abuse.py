"""Resource abuse: what the caller sees when code attacks its own limits, and that the host
does not notice. Every test runs in the "tight" sandbox (0.5 core, 512 MiB, 64 pids, 64 KiB of
output per stream, 8 MiB /tmp and home) and only after `verified_sandbox` has checked it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.isolation.watch import Trace, assert_cleaned_up, ending, run_watched

pytestmark = pytest.mark.abuse

MIB = 1 << 20


# --- the host's health ---------------------------------------------------------------------


def host_can_fork() -> bool:
    return subprocess.run(["true"], timeout=10, check=False).returncode == 0


def mem_available() -> int:
    return int(re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) * 1024


def disk_free(path: str | Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def agent_memory(field: str) -> int:
    """VmRSS or VmHWM (peak) of this process, which runs the agent, in bytes."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def reset_agent_peak_memory() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


# --- fork bombs ----------------------------------------------------------------------------

PYTHON_FORK_BOMB = """
import json, os, time
deadline = time.monotonic() + 20
report = None
while report is None and time.monotonic() < deadline:
    try:
        pid = os.fork()
    except BlockingIOError as exc:
        report = {"errno": exc.errno, "processes": sum(name.isdigit() for name in os.listdir("/proc"))}
        continue
    if pid == 0:  # every child forks on as well
        while time.monotonic() < deadline:
            try:
                os.fork()
            except BlockingIOError:
                time.sleep(0.01)
        os._exit(0)
print(json.dumps(report), flush=True)
"""
BASH_FORK_BOMB = ":(){ :|:& };:\nend=$((SECONDS + 20)); while ((SECONDS < end)); do true; done"


async def _assert_bomb_contained(trace: Trace, pids_max: int) -> None:
    """The host saw the pids controller refuse forks, never more tasks than allowed, nothing
    of the bomb left afterwards, and can still fork itself."""
    assert trace.growth["pids.events:max"] > 0, "the pids controller never refused a fork"
    assert trace.peaks["pids.current"] <= pids_max
    await assert_cleaned_up(trace)
    assert host_can_fork()


async def test_python_fork_bomb_hits_the_pids_limit(run, verified_sandbox):
    """The code sees EAGAIN once the sandbox has 64 tasks; it reports that and exits."""
    trace = await run_watched(run, PYTHON_FORK_BOMB, sandbox=verified_sandbox, timeout=15)
    outcome = trace.outcome
    assert ending(outcome.result) == (False, 0, None, False), outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["errno"] == errno.EAGAIN
    assert 56 <= report["processes"] <= 64  # pid 1 included; the ceiling counts every task
    await _assert_bomb_contained(trace, run.runtime.configs[verified_sandbox].pids_max)


async def test_bash_fork_bomb_runs_into_the_timeout(run, verified_sandbox):
    """Bash retries a refused fork and says so on stderr; the call ends at its timeout."""
    trace = await run_watched(run, BASH_FORK_BOMB, "bash", sandbox=verified_sandbox, timeout=3)
    outcome = trace.outcome
    assert ending(outcome.result) == (True, 137, None, False)
    assert "fork: retry: Resource temporarily unavailable" in outcome.stderr
    assert outcome.result.duration_ms < 5000
    await _assert_bomb_contained(trace, run.runtime.configs[verified_sandbox].pids_max)


# --- memory bombs --------------------------------------------------------------------------

MEMORY_BOMBS = {
    "python": """
import time
grown = bytearray()
end = time.monotonic() + 20
while len(grown) < (4 << 30) and time.monotonic() < end:
    grown += bytes(32 << 20)
    print(len(grown) >> 20, flush=True)
""",
    "node": """
const kept = [];
const end = Date.now() + 20000;
while (kept.length < 128 && Date.now() < end) {
  kept.push(Buffer.alloc(32 << 20, 1));
  console.log(kept.length * 32);
}
""",
}


@pytest.mark.parametrize("language", MEMORY_BOMBS)
async def test_memory_bomb_is_oom_killed(run, verified_sandbox, language):
    """Growing towards 4 GiB ends in the cgroup's OOM kill at 512 MiB, reported as such.

    Other work on this shared machine moves MemAvailable by a few hundred MiB either way, so
    the host-wide checks only tell a contained bomb from an uncontained one; that the memory
    was given back is read from the sandbox's own cgroup."""
    limit = run.runtime.configs[verified_sandbox].memory_bytes
    before = mem_available()
    lowest = [before]
    trace = await run_watched(
        run, MEMORY_BOMBS[language], language, sandbox=verified_sandbox, timeout=20,
        on_poll=lambda: lowest.append(min(lowest[-1], mem_available())),
    )
    outcome = trace.outcome
    assert ending(outcome.result) == (False, 137, 9, True), outcome.stderr
    reached_mib = int(outcome.stdout.split()[-1])
    assert 256 <= reached_mib < limit // MIB
    assert trace.peak_memory <= limit
    assert lowest[-1] > before - limit - 1024 * MIB, "the host lost far more memory than the sandbox may use"
    await assert_cleaned_up(trace)
    assert trace.memory_now() < 32 * MIB, "the sandbox's memory was not given back"
    assert mem_available() > before - limit, "the host did not get its memory back"


# --- filling the writable places -----------------------------------------------------------

FILL = """
import json, time
block = b"x" * (1 << 20)
report = {}
for directory in ("/tmp", "/home/baponi", "/dev/shm"):
    written, error = 0, None
    try:
        with open(f"{directory}/fill", "wb", buffering=0) as handle:
            while written < (256 << 20):
                written += handle.write(block)
    except OSError as exc:
        error = exc.errno
    report[directory] = [written, error]
print(json.dumps(report))
time.sleep(0.5)  # all three full a while: the watcher samples the charge (they go with the sandbox)
"""


async def test_filling_tmp_home_and_shm_stops_at_their_size(run, verified_sandbox, data_dir):
    """All three are RAM-backed and sized: writes end in ENOSPC, the host's disks see nothing.
    /dev/shm (64 MiB) fills up before memory (512 MiB) runs out, so it is ENOSPC, not OOM."""
    disks = {path: disk_free(path) for path in (data_dir, "/")}
    trace = await run_watched(run, FILL, sandbox=verified_sandbox, timeout=20)
    outcome = trace.outcome
    assert ending(outcome.result) == (False, 0, None, False), outcome.stderr
    report = json.loads(outcome.stdout)
    for directory, size in (("/tmp", 8 * MIB), ("/home/baponi", 8 * MIB), ("/dev/shm", 64 * MIB)):
        written, error = report[directory]
        assert error == errno.ENOSPC, directory
        assert size - 64 * 1024 <= written <= size, directory  # the watcher's marker uses a page of /tmp
    assert trace.peak_memory >= 80 * MIB  # tmpfs pages are charged to the sandbox
    for path, free in disks.items():
        assert abs(disk_free(path) - free) < 4 * MIB, path
    await assert_cleaned_up(trace)


# --- output floods -------------------------------------------------------------------------

FLOODS = {
    "python": ("import sys\nblock = b'x' * (1 << 20)\nfor _ in range(200):\n    sys.stdout.buffer.write(block)", 10),
    "bash": ("timeout 20 yes", 3),
}


@pytest.mark.parametrize("language", FLOODS)
async def test_stdout_flood_is_capped_and_counted(run, verified_sandbox, language):
    """The caller gets exactly the first 64 KiB and the true count; the agent keeps nothing more."""
    code, timeout = FLOODS[language]
    cap = run.runtime.configs[verified_sandbox].output_limit
    rss = agent_memory("VmRSS")
    reset_agent_peak_memory()
    trace = await run_watched(run, code, language, sandbox=verified_sandbox, timeout=timeout)
    growth = agent_memory("VmHWM") - rss
    result = trace.outcome.result
    kept = sum(len(chunk.data) for chunk in trace.outcome.chunks if chunk.stream == "stdout")
    assert result.stdout_truncated and kept == cap
    if language == "python":  # it ends by itself: every byte it wrote is counted
        assert ending(result) == (False, 0, None, False)
        assert result.stdout_bytes == 200 * MIB
    else:  # `yes` never ends: the timeout does
        assert ending(result) == (True, 137, None, False)
        assert result.stdout_bytes > 100 * cap
    assert growth < 50 * MIB
    await assert_cleaned_up(trace)


# --- a daemon that tries to outlive its call -----------------------------------------------

DAEMON = """
import os, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # the daemon: no parent, own session, deaf to the polite signals
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with open("/tmp/daemon.log", "a") as log:
                log.write("alive\\n")
            time.sleep(0.05)
    os._exit(0)
print("daemon started", flush=True)
time.sleep({linger})  # the daemon is up and writing meanwhile
"""


@pytest.mark.parametrize("code_ends_by", ["timeout", "exit"])
async def test_daemon_does_not_outlive_the_call(run, verified_sandbox, code_ends_by):
    """Whether the code times out or exits, its setsid'd, double-forked daemon goes with it."""
    linger, timeout = (30, 2) if code_ends_by == "timeout" else (0.3, 10)
    trace = await run_watched(run, DAEMON.format(linger=linger), sandbox=verified_sandbox, timeout=timeout)
    outcome = trace.outcome
    assert outcome.stdout == "daemon started\n", outcome.stderr
    if code_ends_by == "timeout":
        assert ending(outcome.result) == (True, 137, None, False)
    else:
        assert ending(outcome.result) == (False, 0, None, False)
    assert len(trace.code_processes) >= 2, "the host never saw the daemon"
    await assert_cleaned_up(trace)
