"""The request a sandbox reads from its stdin: the code and the call's environment.

A format simple enough that the in-sandbox bootstraps (and launcher.c) parse it with plain byte operations
(importing Python's json pulls in `re` and costs ~15 ms of start-up per sandbox):

    <length of the code in bytes, decimal>\n<code, UTF-8><KEY=VALUE\0 for each variable>

Names cannot hold `=` or NUL and values cannot hold NUL (no environment can), so the
environment needs no escaping; the code is length-prefixed and may hold anything.
"""

from __future__ import annotations


class RequestFormatError(ValueError):
    """An environment entry that no process environment can hold."""


def encode(code: str, env: dict[str, str]) -> bytes:
    raw = code.encode()
    parts = [b"%d\n" % len(raw), raw]
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise RequestFormatError(f"environment variable {name!r} cannot be passed to a process")
        parts.append(f"{name}={value}\0".encode())
    return b"".join(parts)


def decode(data: bytes) -> tuple[str, dict[str, str]]:
    newline = data.index(b"\n")
    end = newline + 1 + int(data[:newline])
    env = dict(item.decode().split("=", 1) for item in data[end:].split(b"\0") if item)
    return data[newline + 1 : end].decode(), env
