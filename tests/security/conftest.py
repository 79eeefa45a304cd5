"""The abuse tests' gate: they run only in a sandbox whose isolation was just verified.

A fork bomb or memory bomb is harmless only while the sandbox holds: if the posture probe or
the cgroup limits are off, every abuse test errors with the reasons instead of bombing the host.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_asyncio

from nodeagent.runtime import BASE_ENV
from tests.conftest import Runner
from tests.isolation.posture import PROBE, parse, problems
from tests.isolation.watch import limit_problems, run_watched

ABUSE_SANDBOX = "tight"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def verified_sandbox(run: Runner, data_dir: Path) -> str:
    """The name of the abuse sandbox, once its posture and its host-side limits check out."""
    trace = await run_watched(run, PROBE, sandbox=ABUSE_SANDBOX)
    outcome = trace.outcome
    found = limit_problems(trace.limits, run.runtime.configs[ABUSE_SANDBOX])
    try:
        found += problems(parse(outcome.stdout), dict(BASE_ENV), data_dir)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        found.append(f"probe output unusable ({exc!r}): exit {outcome.exit_code}, stderr {outcome.stderr[-2000:]!r}")
    if found:
        pytest.fail(f"sandbox {ABUSE_SANDBOX!r} is not safe to abuse:\n  " + "\n  ".join(found), pytrace=False)
    return ABUSE_SANDBOX
