"""The full description of one sandbox, as the agent hands it to the spawner.

It is plain data (JSON on the wire) so the spawner, a separate single-threaded process, needs
nothing of the agent's state to build a sandbox.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..images import Image
from .cgroups import Limits
from .rlimits import Rlimits

Mode = Literal["warm", "exec"]

SANDBOX_UID = 1000
SANDBOX_GID = 1000
HOME = "/home/baponi"
MIB = 1 << 20


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that differs between sandboxes before a call claims one.

    `mode` "warm" starts the language's interpreter ahead, waiting for the request;
    "exec" waits in a tiny pre-exec stage and starts the interpreter with the code itself
    (bash, cold starts, and calls whose environment changes how an interpreter starts).
    """

    sandbox_id: str
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

    def to_json(self) -> str:
        """JSON for the wire; /etc file contents travel as latin-1 strings."""
        return json.dumps(asdict(self), default=_encode_bytes)

    @classmethod
    def from_json(cls, raw: str | bytes) -> SandboxSpec:
        data: dict[str, Any] = json.loads(raw)
        image = data.pop("image")
        image["binds"] = tuple(tuple(pair) for pair in image["binds"])
        image["symlinks"] = tuple(tuple(pair) for pair in image["symlinks"])
        image["etc_files"] = {k: v.encode("latin-1") for k, v in image["etc_files"].items()}
        return cls(
            image=Image(**image),
            limits=Limits(**data.pop("limits")),
            rlimits=Rlimits(**data.pop("rlimits")),
            **data,
        )


def _encode_bytes(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("latin-1")
    raise TypeError(f"cannot encode {type(obj).__name__}")

