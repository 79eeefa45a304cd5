"""What one execution is asked to do, and what it reports back.

These types are the node agent's public vocabulary: the gRPC layer translates them to and
from proto messages, the pool and the sandbox handle produce them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class Mount:
    """A host path bound into a sandbox at claim time (storage, credentials)."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ExecutionRequest:
    """One call: the code and what differs per call. Everything else is the sandbox config."""

    code: str
    language: str = "python"
    timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    home: bytes | None = None  # a tar archive /home/baponi starts with
    collect_home: bool = False  # return /home/baponi as a tar archive after the call
    mounts: tuple[Mount, ...] = ()
    execution_id: str = ""


@dataclass(frozen=True)
class OutputChunk:
    """Output as the code produces it."""

    stream: Stream
    data: bytes


@dataclass(frozen=True)
class ExecutionResult:
    """How an execution ended. Timeout, OOM kill and signal are reported apart."""

    exit_code: int
    duration_ms: float
    timed_out: bool = False
    oom_killed: bool = False
    signal: int | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    cold_start: bool = False
    home: bytes | None = None
    error: str | None = None  # the sandbox itself failed (not the code)

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and self.error is None
