"""The committed stubs in nodeagent/proto/ are what scripts/gen_protos.py makes of proto/."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from .conftest import ROOT

STUBS = ROOT / "nodeagent" / "proto"


def _stubs(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.glob("*_pb2*")) if p.is_file()}


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh, committed = _stubs(tmp_path), _stubs(STUBS)
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, (
        f"nodeagent/proto is stale ({', '.join(stale)}): run scripts/gen_protos.py "
        f"(with the grpcio-tools version pyproject.toml pins; this one is {version('grpcio-tools')})"
    )
