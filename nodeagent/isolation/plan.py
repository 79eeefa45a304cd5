"""The plan: what the native launcher (launcher.c) does inside a sandbox, record by record.

Policy lives here, in Python: which mounts, which limits, which filter, which interpreter.
The launcher only carries the records out, in order, so a sandbox costs three small native
processes instead of three forks of Python. Records before `code` run in the sandbox's pid 1
(the filesystem, hostname, loopback); the rest run in the code's process up to its exec.

Wire format: each record is a netstring of netstrings (`<len>:<bytes>,`), the first one
naming the record; numbers are decimal. Netstrings need no escaping, so paths and /etc
contents travel as they are.
"""

from __future__ import annotations

import os

from . import mounts
from .layout import HOME, SANDBOX_GID, SANDBOX_UID
from .spec import SandboxSpec

Field = str | bytes | int


def _netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def _field(value: Field) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return b"%d" % value
    return os.fsencode(value)


class Plan:
    """Records in the order the launcher runs them."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, ...]] = []

    def add(self, op: str, *fields: Field) -> None:
        self.records.append(tuple(_field(f) for f in (op, *fields)))

    def encode(self) -> bytes:
        return b"".join(_netstring(b"".join(_netstring(f) for f in record)) for record in self.records)


def exec_argv(language: str, interpreter: str) -> list[str]:
    """The command line, without the code itself, that runs code the way `python3 -c`,
    `node -e` and `bash -c` do."""
    flag = {"python": ["-u", "-c"], "node": ["-e"], "bash": ["-c"]}[language]
    return [interpreter, *flag]


def sandbox_plan(spec: SandboxSpec, bpf: bytes) -> bytes:
    """Everything one sandbox does between its namespaces and its interpreter."""
    plan = Plan()
    mounts.build_root(plan, spec)
    plan.add("hostname", spec.hostname)
    plan.add("domainname", "(none)")
    plan.add("loopback")
    plan.add("code", spec.language)
    plan.add("setsid")
    for resource, value in spec.rlimits.items():
        plan.add("rlimit", resource, value)
    plan.add("drop_privileges", SANDBOX_UID, SANDBOX_GID)
    plan.add("umask", 0o022)
    plan.add("chdir", HOME)
    plan.add("seccomp", bpf)
    if spec.mode == "warm":
        argv, env = spec.warm_start
        for item in env:
            plan.add("env", item)
        plan.add("exec", *argv)
    else:
        plan.add("exec_request", *exec_argv(spec.language, spec.image.interpreter(spec.language)))
    return plan.encode()
