"""The full description of one sandbox, from which the agent writes its plan (plan.py) and
what its supervisor needs to know (`supervision`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..bootstrap import BOOTSTRAPS
from ..images import Image
from .cgroups import Limits
from .rlimits import Rlimits
from .supervisor import Supervision

Mode = Literal["warm", "exec"]

MIB = 1 << 20


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that differs between sandboxes before a call claims one.

    `mode` "warm" starts the language's interpreter ahead, waiting for the request;
    "exec" waits in a tiny pre-exec stage and starts the interpreter with the code itself
    (bash, cold starts, and calls whose environment changes how an interpreter starts).
    """

    image: Image
    language: str
    mode: Mode
    limits: Limits
    stage_dir: str
    uid_base: int = 200_000
    uid_count: int = 65_536
    tmp_bytes: int = 512 * MIB
    home_bytes: int = 512 * MIB
    shm_bytes: int = 64 * MIB
    rlimits: Rlimits = field(default_factory=Rlimits)
    hostname: str = "sandbox"
    base_env: dict[str, str] = field(default_factory=dict)

    @property
    def warm_start(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The argv and environment of the interpreter a warm sandbox starts ahead of the call,
        with Baponi's bootstrap, which then waits for the code."""
        argv = (self.image.interpreter(self.language), {"python": "-c", "node": "-e"}[self.language])
        return (*argv, BOOTSTRAPS[self.language]), tuple(f"{name}={value}" for name, value in self.base_env.items())

    def supervision(self) -> Supervision:
        """What the sandbox's supervisor needs of this spec (the plan carries the rest). Warm
        python sandboxes of an image whose interpreters are the host's are forked from a
        zygote; node's runtime runs threads, which a fork would not carry over."""
        forked = self.mode == "warm" and self.language == "python" and self.image.host_interpreters
        zygote = self.warm_start if forked else None
        return Supervision(self.limits, self.uid_base, self.uid_count, self.home_bytes, zygote)
