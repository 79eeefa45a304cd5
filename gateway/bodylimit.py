"""A cap on request bodies, applied before any of the app runs.

The body is read here (at most `limit` bytes are ever held) and replayed to the app, so an
oversized one is refused with our 413 however it arrives: with a Content-Length, or chunked.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyTooLarge


def limit_body(app: ASGIApp, limit: int) -> ASGIApp:
    too_large = BodyTooLarge(f"the request body is over {limit} bytes; the code itself may be at most 1 MiB")

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await too_large.response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await too_large.response()(scope, receive, send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # from here on the app only waits for a disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await app(scope, replay, send)

    return limited
