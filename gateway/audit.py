"""The audit log: one record per execution that reached the executor, and reading it back.

A record says who ran what where and how it ended (ids, language, thread, `metadata`, exit
code, duration, output sizes, times), never the code or its output: the store's `code`,
`stdout` and `stderr` stay None until a sandbox setting asks to keep them (not there yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from nodeagent.execution import ExecutionResult

from .errors import ApiError, InvalidRequest
from .schema import ExecutionList, ExecutionRecord, Metadata
from .store import Execution

if TYPE_CHECKING:
    from .runs import Run

METADATA_PARAM = "metadata."
_METADATA: TypeAdapter[dict[str, str]] = TypeAdapter(Metadata)


def record(
    run: Run,
    result: ExecutionResult | None,
    error: ApiError | None,
    sizes: Mapping[str, int],
    started_at: datetime,
    seconds: float,
) -> Execution:
    return Execution(
        id=run.execution_id,
        key_id=run.key.id,
        sandbox=run.key.sandbox,
        language=run.request.language,
        thread_id=run.body.thread_id,
        metadata=run.body.metadata,
        exit_code=result.exit_code if result else None,
        success=bool(result and result.success),
        duration_ms=result.duration_ms if result else seconds * 1000,
        stdout_bytes=result.stdout_bytes if result else sizes["stdout"],
        stderr_bytes=result.stderr_bytes if result else sizes["stderr"],
        timed_out=bool(result and result.timed_out),
        oom_killed=bool(result and result.oom_killed),
        error=(result.error if result else f"{error.code}: {error.message}" if error else None),
        started_at=started_at,
        finished_at=started_at + timedelta(seconds=seconds),
    )


def metadata_filter(params: Mapping[str, str]) -> dict[str, str]:
    """The `metadata.<key>=<value>` query parameters, checked as strictly as request metadata."""
    wanted = {name[len(METADATA_PARAM) :]: value for name, value in params.items() if name.startswith(METADATA_PARAM)}
    try:
        return _METADATA.validate_python(wanted)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"] if part != "[key]")
        raise InvalidRequest(f"{METADATA_PARAM}{where or '*'}: {problem['msg']}") from None


def page(executions: list[Execution], limit: int) -> ExecutionList:
    return ExecutionList(
        executions=[ExecutionRecord.model_validate(execution, from_attributes=True) for execution in executions],
        next_before=executions[-1].id if len(executions) == limit else None,
    )
