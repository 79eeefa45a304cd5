"""Limits a call runs under, as the caller sees them and as the host enforces them (through
the host's view of each call, tests/isolation/watch.py)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest

from tests.conftest import Runner
from tests.isolation.watch import Trace, assert_cleaned_up, ending, limit_problems, run_watched

# --- timeouts and signals ------------------------------------------------------------------

# Bounded far beyond every timeout used: only the timeout can end them early.
SPIN = {
    "python": "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass",
    "bash": "end=$((SECONDS + 60)); while ((SECONDS < end)); do :; done",
    "node": "const end = Date.now() + 60000; while (Date.now() < end) {}",
}
OWN_SIGTERM = {
    "python": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "bash": "kill -TERM $$",
    "node": "process.kill(process.pid, 'SIGTERM')",
}


@pytest.mark.parametrize("language", SPIN)
async def test_timeout_is_reported_as_timeout_not_signal(run, language):
    """Killed at the deadline: exit 137 as for SIGKILL, yet no signal of the code's own (and an
    OOM kill is a third, distinct ending: tests/security/test_abuse.py)."""
    outcome = await run(SPIN[language], language, timeout=1)
    assert ending(outcome.result) == (True, 137, None, False)
    assert 1000 <= outcome.result.duration_ms < 3000


@pytest.mark.parametrize("language", OWN_SIGTERM)
async def test_code_killed_by_its_own_signal_is_reported_as_signal(run, language):
    """The code's process died of a signal: 128 + 15, with the signal, and no timeout."""
    outcome = await run(OWN_SIGTERM[language], language, timeout=10)
    assert ending(outcome.result) == (False, 143, 15, False), outcome.stderr


# --- nothing outlives a call ---------------------------------------------------------------

FORGED_END = (
    "import os, subprocess, sys, time\n"
    "subprocess.Popen(['sleep', '30'])\n"
    "print('hi', flush=True)\n"
    "os.write(3, (1 << 32 | 7 << 8).to_bytes(8, sys.byteorder))\n"
    "time.sleep(30)\n"
)

CALLS = {
    "python-warm": ("print('hi')", "python", {}),
    "python-cold": ("print('hi')", "python", {"env": {"PYTHONDONTWRITEBYTECODE": "1"}}),
    "bash": ("echo hi", "bash", {}),
    "node-warm": ("console.log('hi')", "node", {}),
    "python-tight": ("print('hi')", "python", {"sandbox": "tight"}),
    # A child the code leaves running, and one that outlives the code by a timeout.
    "bash-background-child": ("sleep 30 & echo hi", "bash", {}),
    # Code telling a false end on fd 3 while its child runs; code that closed fd 3, whose end
    # init reports.
    "python-forged-end": (FORGED_END, "python", {}),
    "python-closed-fd3": ("import os\nos.close(3)\nprint('hi')", "python", {}),
    "python-timeout-with-child": (
        "import subprocess, time\nsubprocess.Popen(['sleep', '30'])\nprint('hi', flush=True)\ntime.sleep(30)",
        "python", {"timeout": 1},
    ),
}


async def test_code_that_tells_a_false_end_only_ends_its_own_call(run):
    """fd 3 is the bootstrap's, but the code can write it: then its call ends at once with
    the exit code it chose (as os._exit would), and nothing it left running survives."""
    started = time.monotonic()
    outcome = await run(FORGED_END, "python", timeout=20)
    assert (outcome.stdout, outcome.exit_code, outcome.result.timed_out) == ("hi\n", 7, False)
    assert time.monotonic() - started < 10, "the call waited for its timeout"


@pytest.mark.parametrize("name", CALLS)
async def test_no_process_or_cgroup_outlives_a_call(run, name):
    """Warm, cold, exec and tight sandboxes alike, also with children left behind."""
    code, language, fields = CALLS[name]
    trace = await run_watched(run, code, language, **fields)
    assert trace.outcome.stdout == "hi\n", trace.outcome.stderr
    await assert_cleaned_up(trace)


# --- CPU -----------------------------------------------------------------------------------

CPU_SHARE = """
import time
start_wall, start_cpu = time.monotonic(), time.process_time()
while time.monotonic() - start_wall < 1.0:
    pass
print((time.process_time() - start_cpu) / (time.monotonic() - start_wall))
"""


def throttled_periods(trace: Trace) -> tuple[int, int]:
    """(periods throttled, periods run) of the CPU quota during the call. Counted in periods:
    this kernel's cpu.stat throttled_time covers only a fraction of the time spent throttled."""
    return trace.growth.get("cpu.stat:nr_throttled", 0), trace.growth.get("cpu.stat:nr_periods", 0)


async def _cpu_shares(run: Runner, sandbox: str) -> tuple[float, float, Trace]:
    """The sandbox's CPU share in a 1 s busy loop, and that of an unconfined host process running
    the same loop at the same time: this 2-core machine is shared, and its load is not the
    sandbox's limit. Pools are full first, so no sandbox start competes with the two loops."""
    await run.runtime.wait_warm()
    host = await asyncio.create_subprocess_exec(sys.executable, "-c", CPU_SHARE, stdout=asyncio.subprocess.PIPE)
    trace = await run_watched(run, CPU_SHARE, sandbox=sandbox, timeout=10)
    host_share = float((await host.communicate())[0])
    assert trace.outcome.exit_code == 0, trace.outcome.stderr
    return float(trace.outcome.stdout), host_share, trace


async def test_half_a_core_gets_half_the_cpu_time(run):
    """The quota is a ceiling; below it the sandbox gets what the machine can give."""
    share, host_share, _ = await _cpu_shares(run, "tight")
    assert 0.4 * min(0.5, host_share) < share < 0.8, f"host share {host_share}"


async def test_one_core_runs_a_busy_loop_unthrottled(run):
    """One thread never exceeds a 1-core quota: it runs as fast as the host lets it. The
    quota's own record (no throttled period) is the proof; the share only rules out a
    half-core limit, with room for the agent's refills sharing these two cores."""
    share, host_share, trace = await _cpu_shares(run, "default")
    assert share > 0.6 * min(1.0, host_share), f"host share {host_share}"
    throttled, periods = throttled_periods(trace)
    assert periods >= 8 and throttled <= 1, trace.growth


# --- rlimits -------------------------------------------------------------------------------

RLIMITS = """
import errno, json, os, resource
report = {name: resource.getrlimit(getattr(resource, name)) for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_FSIZE")}
fds = []
try:
    for _ in range(2000):
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    report["nofile"] = [len(fds), errno.errorcode[exc.errno]]
for fd in fds:
    os.close(fd)
limit = report["RLIMIT_FSIZE"][0]
fd = os.open("/tmp/sparse", os.O_WRONLY | os.O_CREAT)
os.pwrite(fd, b"x", limit - 1)  # the last byte allowed: sparse, so it costs one page of tmpfs
try:
    os.pwrite(fd, b"x", limit)
    report["fsize"] = "written"
except OSError as exc:
    report["fsize"] = errno.errorcode[exc.errno]
report["size"] = os.fstat(fd).st_size
print(json.dumps(report))
"""


async def test_rlimits_bound_core_files_and_file_size(run):
    """No core dumps, 1024 fds (EMFILE after), files up to 1 GiB: a sparse write past it
    reaches RLIMIT_FSIZE (EFBIG) without needing 1 GiB of tmpfs."""
    outcome = await run(RLIMITS)
    assert outcome.exit_code == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["RLIMIT_CORE"] == [0, 0]
    assert report["RLIMIT_NOFILE"] == [1024, 1024]
    opened, error = report["nofile"]
    assert error == "EMFILE" and 1000 < opened < 1024  # 0-2 and the interpreter's own fds are open
    assert report["RLIMIT_FSIZE"] == [1 << 30, 1 << 30]
    assert report["fsize"] == "EFBIG" and report["size"] == 1 << 30  # Python ignores SIGXFSZ


# --- cgroup limits as the host wrote them --------------------------------------------------


@pytest.mark.parametrize("sandbox", ["default", "tight"])
async def test_cgroup_limits_follow_the_config(run, sandbox):
    """Memory is cpu x 1 GiB with no swap on top; the pids ceiling and CPU quota are the config's."""
    trace = await run_watched(run, "print('hi')", sandbox=sandbox)
    assert trace.outcome.exit_code == 0, trace.outcome.stderr
    assert limit_problems(trace.limits, run.runtime.configs[sandbox]) == []
