"""Resource limits the kernel enforces per process, on top of the cgroup's limits."""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class Rlimits:
    """Per-process ceilings: no core dumps, bounded open files and file size."""

    nofile: int = 1024
    fsize_bytes: int = 1 << 30
    core: int = 0

    def items(self) -> tuple[tuple[int, int], ...]:
        """(resource, limit) pairs, soft and hard alike, as setrlimit(2) takes them."""
        return (
            (resource.RLIMIT_CORE, self.core),
            (resource.RLIMIT_NOFILE, self.nofile),
            (resource.RLIMIT_FSIZE, self.fsize_bytes),
        )
