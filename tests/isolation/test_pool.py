"""Warm pools: a call claims a started sandbox, which serves it alone and is then destroyed;
the pool refills behind it, replaces sandboxes idle too long, and a closed runtime leaves
no process or cgroup behind."""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import os
import shutil
import signal
import time

import pytest

from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionRequest
from nodeagent.runtime import BASE_ENV, DataDirInUse, Runtime
from nodeagent.sandbox import SandboxError
from tests.conftest import Runner

from tests.isolation.runtimes import (
    SANDBOX_UIDS,
    WAIT_S,
    alive,
    chain_of,
    in_cgroup_subtree,
    own_runtime,
    processes,
    python_pool,
    still_there,
    supervisor_of,
    wait_until,
)


# --- claiming -------------------------------------------------------------------------


async def test_claim_from_a_full_pool_is_warm(run, runtime):
    pool = python_pool(runtime)
    await pool.wait_full(WAIT_S)
    claims, misses = pool.claims, pool.misses
    outcome = await run("print('warm')")
    assert (outcome.stdout, outcome.exit_code) == ("warm\n", 0)
    assert outcome.result.cold_start is False
    assert (pool.claims, pool.misses) == (claims + 1, misses)


# What identifies one sandbox from inside it: its namespaces, and a file it leaves in /tmp.
IDENTITY = """
import json, os, socket
found = os.path.exists('/tmp/left-behind')
open('/tmp/left-behind', 'w').write('x')
print(json.dumps({'ns': {n: os.readlink(f'/proc/self/ns/{n}') for n in ('pid', 'mnt', 'net', 'uts', 'ipc', 'user')},
                  'pid': os.getpid(), 'hostname': socket.gethostname(), 'found': found}))
"""


async def test_each_call_gets_a_fresh_sandbox(run, runtime):
    reports = []
    for _ in range(2):
        await python_pool(runtime).wait_full(WAIT_S)
        outcome = await run(IDENTITY)
        assert outcome.exit_code == 0 and outcome.result.cold_start is False, outcome.stderr
        reports.append(json.loads(outcome.stdout))
    first, second = reports
    assert not first["found"] and not second["found"], "a file from the previous call is still in /tmp"
    assert {n for n in first["ns"] if first["ns"][n] == second["ns"][n]} == set(), "namespaces reused"
    assert first["pid"] == second["pid"] == 2  # the interpreter is always pid 2 of its own pid namespace
    assert first["hostname"] == second["hostname"] == "sandbox"


async def collect(events) -> list:  # noqa: ANN001
    return [event async for event in events]


async def test_a_sandbox_refuses_a_second_run(runtime):
    """The Sandbox handle itself enforces one execution: prepare once, run once."""
    pool = python_pool(runtime)
    await pool.wait_full(WAIT_S)
    sandbox = pool.claim()
    assert sandbox is not None
    request = ExecutionRequest(code="print('once')", env=dict(BASE_ENV), timeout=30)
    try:
        chain = chain_of(sandbox.init_pid)  # type: ignore[arg-type]
        await sandbox.prepare(request)
        events = await collect(sandbox.run(request))
        assert events[-1] == dataclasses.replace(events[-1], exit_code=0, error=None), events[-1]
        assert b"".join(e.data for e in events[:-1]) == b"once\n"
        with pytest.raises(SandboxError):
            await collect(sandbox.run(request))
        with pytest.raises(SandboxError, match="one execution"):
            await sandbox.prepare(request)
        await wait_until(lambda: not any(map(alive, chain)), "the finished sandbox's init and launcher exited")
    finally:
        await sandbox.destroy()
    assert sandbox.closed


async def test_a_fault_in_one_sandboxs_supervision_ends_only_that_sandbox(run, runtime):
    """The spawner supervises every sandbox: a control frame it cannot take (a timeout that is
    not a number) ends that sandbox with an error, and the next call runs as usual."""
    pool = python_pool(runtime)
    await pool.wait_full(WAIT_S)
    sandbox = pool.claim()
    assert sandbox is not None
    try:
        chain = chain_of(sandbox.init_pid)  # type: ignore[arg-type]
        await sandbox._send({"op": "run", "timeout": "soon"})  # white-box: no caller can send this
        header, _ = await sandbox._frame()
        assert header["event"] == "exited" and "sandbox supervision failed" in header["error"], header
        await wait_until(lambda: not any(map(alive, chain)), "the broken sandbox's processes exited")
    finally:
        await sandbox.destroy()
    outcome = await run("print('unaffected')")
    assert (outcome.stdout, outcome.exit_code) == ("unaffected\n", 0), outcome.stderr


async def test_pool_refills_in_the_background_after_a_claim(runtime):
    pool = python_pool(runtime)
    await pool.wait_full(WAIT_S)
    sandbox = pool.claim()
    assert sandbox is not None and pool.idle == pool.target - 1
    await sandbox.destroy()
    await pool.wait_full(WAIT_S)
    assert pool.idle == pool.target
    assert runtime.status()["pools"]["default/python"]["idle"] == pool.target


async def test_a_burst_bigger_than_the_pool_all_succeeds(run, runtime):
    """Claims never wait: what the pool cannot serve gets a cold start, isolated the same."""
    pool = python_pool(runtime)
    await pool.wait_full(WAIT_S)
    burst = 4 * pool.target
    outcomes = await asyncio.gather(*(run(f"import os; print({i} * 7, os.getpid())") for i in range(burst)))
    assert [(o.stdout, o.exit_code) for o in outcomes] == [(f"{i * 7} 2\n", 0) for i in range(burst)]
    cold = [o.result.cold_start for o in outcomes]
    assert 1 <= cold.count(False) <= pool.target, cold
    await pool.wait_full(WAIT_S)


# --- recycling, status, shutdown (runtimes of their own) --------------------------------


async def test_idle_sandboxes_are_recycled_after_max_idle():
    async with own_runtime(SandboxConfig(name="recycle", warm=1, max_idle_s=1)) as runtime:
        pool = python_pool(runtime, "recycle")
        await pool.wait_full(WAIT_S)
        [old] = list(pool._idle)  # white-box: which sandbox is idle is the point of this test
        chain = chain_of(old.init_pid)  # type: ignore[arg-type]
        await asyncio.sleep(pool.max_idle_s + 0.2)
        pool.recycle()
        assert old not in pool._idle
        await wait_until(lambda: old.closed and not any(map(alive, chain)), "the recycled sandbox's processes exited")
        await pool.wait_full(WAIT_S)
        [fresh] = list(pool._idle)
        assert fresh is not old and fresh.init_pid != old.init_pid

        # A claim never hands out a sandbox past its age, whether or not recycling ran since.
        await asyncio.sleep(pool.max_idle_s + 0.2)
        claimed = pool.claim()
        try:
            assert claimed is not fresh
            assert claimed is None or time.monotonic() - claimed.created < pool.max_idle_s
        finally:
            if claimed is not None:
                await claimed.destroy()
        outcome = await Runner(runtime)("print('still serving')", sandbox="recycle")
        assert outcome.stdout == "still serving\n"


async def test_status_reflects_pools_and_running_calls():
    async with own_runtime(SandboxConfig(name="counted", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        fresh = {"idle": 1, "target": 1, "claims": 0, "misses": 0}
        assert runtime.status() == {"running": 0, "pools": {f"counted/{lang}": fresh for lang in ("python", "node", "bash")}}

        request = ExecutionRequest(code="print('started', flush=True); import time; time.sleep(0.5)", timeout=30)
        events = runtime.execute("counted", request)
        await anext(events)  # the code is running
        during = runtime.status()
        await collect(events)
        assert during["running"] == 1
        assert during["pools"]["counted/python"]["claims"] == 1
        assert runtime.status()["running"] == 0

        pool = python_pool(runtime, "counted")
        await pool.wait_full(WAIT_S)
        first, second = pool.claim(), pool.claim()  # no await between: the refill cannot land
        for sandbox in (first, second):
            if sandbox is not None:
                await sandbox.destroy()
        assert first is not None and second is None
        assert runtime.status()["pools"]["counted/python"] == {"idle": 0, "target": 1, "claims": 3, "misses": 1}


async def test_an_empty_pool_hands_a_call_the_sandbox_being_started():
    """With no idle sandbox but one being started that no other call waits for, the call
    takes that one once it is ready (no cold start); a second call finds none to wait for."""
    async with own_runtime(SandboxConfig(name="pending", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        pool = python_pool(runtime, "pending")
        held = pool.claim()
        assert held is not None
        try:
            pool.refill()  # one start in flight, promised to nobody
            first = asyncio.ensure_future(pool.take())
            await asyncio.sleep(0)  # the first call now waits for the start
            second = await pool.take()  # the one start is the first call's
            taken = await first
            try:
                assert second is None
                assert taken is not None and taken is not held and not taken.closed
                assert pool.idle == 0 and (pool.claims, pool.misses) == (3, 1)
                outcome = await Runner(runtime)("print('served warm')", sandbox="pending")
                assert outcome.stdout == "served warm\n"
            finally:
                if taken is not None:
                    await taken.destroy()
        finally:
            await held.destroy()


async def test_a_dead_spawner_is_replaced_and_its_pools_refilled():
    """Every sandbox dies with its spawner (parent-death signals). The next call finds it gone,
    starts a new one and succeeds; the pools refill from the new one."""
    async with own_runtime(SandboxConfig(name="respawn", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        old = runtime._spawner._process.pid  # type: ignore[union-attr]  # white-box: the process to kill
        chains = [chain_of(s.init_pid) for pool in runtime.pools.values() for s in pool._idle]  # type: ignore[arg-type]
        os.kill(old, signal.SIGKILL)
        await wait_until(lambda: not any(alive(p) for chain in chains for p in chain), "its sandboxes died with it")
        outcome = await Runner(runtime)("print('after')", sandbox="respawn")
        assert (outcome.stdout, outcome.exit_code) == ("after\n", 0), outcome.stderr
        assert runtime._spawner._process.pid != old  # type: ignore[union-attr]
        await runtime.wait_warm(WAIT_S)
        fresh = [chain_of(s.init_pid) for pool in runtime.pools.values() for s in pool._idle]  # type: ignore[arg-type]
        assert all(supervisor_of(chain[0].pid).pid == runtime._spawner._process.pid for chain in fresh)  # type: ignore[union-attr]


async def test_a_sandbox_whose_spawner_died_fails_with_what_broke():
    """Its control socket is gone: the run says so (not a fault of its own clean-up)."""
    async with own_runtime(SandboxConfig(name="orphaned", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        sandbox = runtime.pools[("orphaned", "python")].claim()
        assert sandbox is not None
        chain = chain_of(sandbox.init_pid)  # type: ignore[arg-type]
        os.kill(runtime._spawner._process.pid, signal.SIGKILL)  # type: ignore[union-attr]  # white-box
        await wait_until(lambda: not any(alive(p) for p in chain), "the sandbox died with its spawner")
        request = ExecutionRequest("print(1)", timeout=10)
        await sandbox.prepare(request)
        with pytest.raises(ConnectionError):
            async for _ in sandbox.run(request):
                pass
        await sandbox.destroy()


async def test_a_second_agent_on_the_same_data_dir_is_refused_and_harms_nothing():
    """Sandbox cgroups are named after the data directory: a second agent there would clear
    the first one's as leftovers of a crash. It refuses to start instead, and once the first
    has closed, an agent starts there again."""
    async with own_runtime(SandboxConfig(name="first", warm=1)) as runtime:
        await runtime.wait_warm(WAIT_S)
        second = Runtime(runtime.data_dir, [SandboxConfig(name="first", warm=1)])
        with pytest.raises(DataDirInUse, match="another node agent is running on"):
            await second.start()
        await second.close()
        outcome = await Runner(runtime)("print('unharmed')", sandbox="first")
        assert (outcome.stdout, outcome.result.cold_start) == ("unharmed\n", False)
        data_dir = runtime.data_dir
    again = Runtime(data_dir, [SandboxConfig(name="first", warm=0)])
    try:
        await again.start()
    finally:
        await again.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_close_leaves_no_process_or_cgroup_behind():
    async with own_runtime(SandboxConfig(name="closing", warm=2)) as runtime:
        await runtime.wait_warm(WAIT_S)
        outcome = await Runner(runtime)("print('done')", sandbox="closing")
        assert outcome.stdout == "done\n"
        await runtime.wait_warm(WAIT_S)
        parent = runtime.cgroup_parent
        sandboxed = in_cgroup_subtree(parent)
        pids = {p.pid for p in sandboxed}
        launchers = [p for p in sandboxed if p.ppid not in pids]
        supervisors = {supervisor_of(p.pid) for p in launchers}
        # At least the six idle sandboxes (three languages, two each), all supervised by the
        # spawner; each runs its code's process as uid 1000, host uid 201000.
        assert len(launchers) >= 6 and sum(p.uid == 201_000 for p in sandboxed) >= 6, sandboxed
        assert [p.pid for p in supervisors] == [runtime._spawner._process.pid]
        assert glob.glob(f"/sys/fs/cgroup/*/{parent}")
    # Checked right as close() returns: nothing may be left to finish in the background.
    # A zombie counts: left unreaped it is a process entry of the sandbox's that someone
    # else (the host's pid 1, once its parent is gone) has to clean up.
    left = [(p.pid, p.state, p.ppid, p.uid) for p in map(still_there, sandboxed + list(supervisors)) if p]
    assert left == [], "processes (pid, state, ppid, host uid) still there after close()"
    assert [p for p in processes() if p.uid in SANDBOX_UIDS and f"/{parent}/" in p.cgroups] == []
    assert glob.glob(f"/sys/fs/cgroup/*/{parent}") == [], "the agent's cgroup subtree is left"
