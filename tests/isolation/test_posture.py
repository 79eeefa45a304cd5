"""The whole sandbox posture at once, for every kind of sandbox start."""

from __future__ import annotations

import pytest

from nodeagent.runtime import BASE_ENV

from .posture import PROBE, parse, problems

CALL_ENV = {"GREETING": "hello"}


@pytest.mark.parametrize("env", [CALL_ENV, {"PYTHONDONTWRITEBYTECODE": "1"}], ids=["warm", "cold"])
async def test_posture_holds_for_python(run, data_dir, env):
    outcome = await run(PROBE, env=env)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.result.cold_start == ("PYTHONDONTWRITEBYTECODE" in env)
    assert problems(parse(outcome.stdout), {**BASE_ENV, **env}, data_dir) == []


async def test_bash_runs_with_same_credentials_and_filter(run):
    outcome = await run("id -u; id -g; grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status; ls /proc/self/fd", "bash")
    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.split("\n")
    assert lines[:2] == ["1000", "1000"]
    assert "Seccomp:\t2" in lines and "NoNewPrivs:\t1" in lines
    assert "CapEff:\t0000000000000000" in lines and "CapBnd:\t0000000000000000" in lines


async def test_node_runs_unprivileged_and_filtered(run):
    code = "const s=require('fs').readFileSync('/proc/self/status','utf8'); console.log(process.getuid(), /Seccomp:\\t2/.test(s), /CapEff:\\t0{16}/.test(s))"
    outcome = await run(code, "node")
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout == "1000 true true\n"
