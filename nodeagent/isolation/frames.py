"""Length-prefixed frames: a JSON header plus an optional binary payload.

Used on the local sockets between the agent, the spawner and each sandbox supervisor; the
header says what happened, the payload carries bulk bytes (home archives) without encoding.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

_PREFIX = struct.Struct("!II")
PREFIX_SIZE = _PREFIX.size
MAX_HEADER = 16 << 20


class FrameError(Exception):
    """The peer sent something that is not a frame, or hung up mid-frame."""


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return _PREFIX.pack(len(raw), len(payload)) + raw + payload


def _decode_header(raw: bytes) -> dict[str, Any]:
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise FrameError("frame header is not an object")
    return header


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise FrameError("peer closed mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def send(sock: socket.socket, header: dict[str, Any], payload: bytes = b"", fds: list[int] | None = None) -> None:
    data = encode(header, payload)
    if fds:
        sent = socket.send_fds(sock, [data[:4096]], fds)
        sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def recv_header(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], int, list[int]] | None:
    """A frame's header, its payload's length and the fds sent with it, leaving the payload
    unread (see recv_payload); None when the peer closed cleanly between frames."""
    fds: list[int] = []
    if max_fds:
        first, fds, _flags, _addr = socket.recv_fds(sock, _PREFIX.size, max_fds)
    else:
        first = sock.recv(_PREFIX.size)
    if not first:
        return None
    prefix = first + _recv_exactly(sock, _PREFIX.size - len(first))
    header_len, payload_len = _PREFIX.unpack(prefix)
    if header_len > MAX_HEADER:
        raise FrameError(f"frame header of {header_len} bytes")
    return _decode_header(_recv_exactly(sock, header_len)), payload_len, fds


def recv_payload(sock: socket.socket, length: int) -> bytes:
    return _recv_exactly(sock, length)


def recv(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], bytes, list[int]] | None:
    """One frame, or None when the peer closed cleanly between frames."""
    received = recv_header(sock, max_fds)
    if received is None:
        return None
    header, payload_len, fds = received
    return header, recv_payload(sock, payload_len), fds


async def read(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes] | None:
    """The asyncio side of `recv`, for the agent's event loop. asyncio is imported here, not
    above: the spawner's memory, which every job process copies, stays without it."""
    import asyncio

    try:
        prefix = await reader.readexactly(_PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("peer closed mid-frame") from exc
        return None
    header_len, payload_len = _PREFIX.unpack(prefix)
    if header_len > MAX_HEADER:
        raise FrameError(f"frame header of {header_len} bytes")
    try:
        header = _decode_header(await reader.readexactly(header_len))
        payload = await reader.readexactly(payload_len)
    except asyncio.IncompleteReadError as exc:
        raise FrameError("peer closed mid-frame") from exc
    return header, payload
