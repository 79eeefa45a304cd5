"""Proto ⇄ execution types: every field survives the trip, absent optionals stay None."""

from __future__ import annotations

import pytest

from nodeagent.execution import ExecutionRequest, ExecutionResult, Mount, OutputChunk
from nodeagent.proto.convert import event_from_proto, event_to_proto, request_from_proto, request_to_proto

REQUEST = ExecutionRequest(
    code="print(1)", language="node", timeout=2.5, env={"A": "1"}, home=b"tar", collect_home=True,
    mounts=(Mount("/srv/a", "/data/a", read_only=False),), execution_id="e-1",
)
RESULTS = [
    ExecutionResult(exit_code=0, duration_ms=1.5),
    ExecutionResult(
        exit_code=137, duration_ms=9.0, timed_out=True, oom_killed=True, signal=9, stdout_truncated=True,
        stderr_truncated=True, stdout_bytes=1 << 33, stderr_bytes=3, cold_start=True, home=b"", error="boom",
    ),
]


def test_request_round_trip() -> None:
    assert request_from_proto(request_to_proto("small", REQUEST)) == ("small", REQUEST)


@pytest.mark.parametrize("event", [OutputChunk("stdout", b"a"), OutputChunk("stderr", b""), *RESULTS])
def test_event_round_trip(event: OutputChunk | ExecutionResult) -> None:
    assert event_from_proto(event_to_proto(event)) == event
