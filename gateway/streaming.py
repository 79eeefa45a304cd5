"""NDJSON streaming: one JSON object per line, written as the run produces it.

Lines: `{"type":"started","execution_id":...}`, then `{"type":"stdout"|"stderr","data":...}` as
output arrives (decoded as UTF-8, never splitting a character), then one last line: either
`{"type":"result",...}` with every field of the JSON answer, or `{"type":"error","error":{...}}`
when the execution failed after the stream began (before it, the answer is a plain error).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Request
from pydantic import BaseModel

from .runs import Event, Failed, Finished, Output, Run, Started
from .schema import ErrorDetail, ErrorEvent, ExecuteRequest, OutputEvent, ResultEvent, StartedEvent

NDJSON = "application/x-ndjson"


def wanted(request: Request, body: ExecuteRequest) -> bool:
    """`"stream": true`, or an Accept header naming NDJSON."""
    accepted = (part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(","))
    return body.stream or NDJSON in accepted


def line(event: Event) -> bytes:
    model: BaseModel
    if isinstance(event, Started):
        model = StartedEvent(execution_id=event.execution_id)
    elif isinstance(event, Output):
        model = OutputEvent(type=event.stream, data=event.text)  # type: ignore[arg-type]
    elif isinstance(event, Finished):
        model = ResultEvent(**event.response.model_dump())
    else:
        model = ErrorEvent(error=ErrorDetail(code=event.error.code, message=event.error.message))
    return model.model_dump_json().encode() + b"\n"


async def first_event(run: Run) -> tuple[Event, AsyncIterator[Event]]:
    """The run's first event, so a failure before the code started is answered as a plain error."""
    events = run.events()
    first = await anext(events)
    if isinstance(first, Failed):
        raise first.error
    return first, events


async def lines(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """The NDJSON body; closing it early (the client went away) cancels the run."""
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        yield line(first)
        async for event in rest:
            yield line(event)
