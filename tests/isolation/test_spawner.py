"""The spawner's memory is what every job process it forks copies at fork and frees at exit."""

from __future__ import annotations

import json
import subprocess
import sys

# Agent-side modules: each would put megabytes into every job process's page tables.
AGENT_ONLY = ("asyncio", "nodeagent.isolation.plan", "nodeagent.isolation.seccomp", "nodeagent.images", "grpc")


def test_the_spawner_imports_nothing_of_the_agent_side() -> None:
    loaded = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys, nodeagent.isolation.spawner; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout)
    assert "nodeagent.isolation.supervisor" in loaded
    assert [name for name in AGENT_ONLY if name in loaded] == []
