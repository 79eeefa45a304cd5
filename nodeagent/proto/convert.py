"""Proto messages ⇄ nodeagent.execution types, both directions, so agent and gateway agree.

Hand-written (not generated): the only code in this package that scripts/gen_protos.py does
not write.
"""

from __future__ import annotations

import dataclasses

from ..execution import ExecutionRequest, ExecutionResult, Mount, OutputChunk, Stream
from . import agent_pb2 as pb

STARTED = pb.ExecuteEvent(started=pb.Started())
_STREAMS: dict[Stream, int] = {"stdout": pb.Output.STDOUT, "stderr": pb.Output.STDERR}
_STREAM_NAMES = {number: name for name, number in _STREAMS.items()}
# Finished carries every ExecutionResult field under the same name; None is an absent optional.
_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(ExecutionResult))
_OPTIONAL_RESULT_FIELDS = ("signal", "home", "error")


def request_to_proto(sandbox: str, request: ExecutionRequest) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        execution_id=request.execution_id,
        sandbox=sandbox,
        code=request.code,
        language=request.language,
        timeout_seconds=request.timeout,
        env=request.env,
        home=request.home or b"",
        collect_home=request.collect_home,
        mounts=[pb.Mount(source=m.source, target=m.target, read_only=m.read_only) for m in request.mounts],
    )


def request_from_proto(message: pb.ExecuteRequest) -> tuple[str, ExecutionRequest]:
    """The sandbox configuration name and the request."""
    request = ExecutionRequest(
        code=message.code,
        language=message.language,
        timeout=message.timeout_seconds,
        env=dict(message.env),
        home=message.home or None,
        collect_home=message.collect_home,
        mounts=tuple(Mount(m.source, m.target, m.read_only) for m in message.mounts),
        execution_id=message.execution_id,
    )
    return message.sandbox, request


def event_to_proto(event: OutputChunk | ExecutionResult) -> pb.ExecuteEvent:
    if isinstance(event, OutputChunk):
        return pb.ExecuteEvent(output=pb.Output(stream=_STREAMS[event.stream], data=event.data))
    values = {name: getattr(event, name) for name in _RESULT_FIELDS}
    return pb.ExecuteEvent(finished=pb.Finished(**{k: v for k, v in values.items() if v is not None}))


def event_from_proto(event: pb.ExecuteEvent) -> OutputChunk | ExecutionResult | None:
    """The event as the runtime yields it; None for Started (the runtime yields no such event)
    and for kinds a newer agent may send that this version does not know."""
    kind = event.WhichOneof("event")
    if kind == "output":
        return OutputChunk(_STREAM_NAMES[event.output.stream], event.output.data)
    if kind == "finished":
        finished = event.finished
        values = {name: getattr(finished, name) for name in _RESULT_FIELDS}
        values.update({name: None for name in _OPTIONAL_RESULT_FIELDS if not finished.HasField(name)})
        return ExecutionResult(**values)
    return None
