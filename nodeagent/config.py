"""Sandbox configuration: what an API key's sandbox allows, checked once when it is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

GIB = 1 << 30
MIB = 1 << 20
NetworkPolicy = Literal["blocked", "unrestricted"]
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A sandbox configuration value is out of range; the message says which and why."""


@dataclass(frozen=True)
class SandboxConfig:
    """One sandbox configuration. Memory follows CPU, 1 GiB per core."""

    name: str = "default"
    image: str = "default"
    cpu: float = 1.0
    pids_max: int = 256
    max_timeout: float = 600.0
    network: NetworkPolicy = "blocked"
    env: dict[str, str] = field(default_factory=dict)
    output_limit: int = 10 * MIB
    tmp_bytes: int = 512 * MIB
    home_bytes: int = 512 * MIB
    warm: int = 2
    max_idle_s: float = 600.0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"sandbox name {self.name!r} must be lowercase letters, digits and '-' (at most 63)")
        if not 0.5 <= self.cpu <= 4:
            raise ConfigError(f"cpu must be between 0.5 and 4 cores, got {self.cpu}")
        if self.network != "blocked":
            raise ConfigError(f"network policy {self.network!r} is not available yet; use 'blocked'")
        for what, value, low in (
            ("pids_max", self.pids_max, 8),
            ("max_timeout", self.max_timeout, 1),
            ("output_limit", self.output_limit, 1024),
            ("tmp_bytes", self.tmp_bytes, MIB),
            ("home_bytes", self.home_bytes, MIB),
            ("warm", self.warm, 0),
            ("max_idle_s", self.max_idle_s, 1),
        ):
            if value < low:
                raise ConfigError(f"{what} must be at least {low}, got {value}")

    @property
    def memory_bytes(self) -> int:
        return int(self.cpu * GIB)
