"""Request and response bodies of the HTTP API, and the limits they enforce.

Limits (also in docs/design.md):
- `code`: 1 byte to 1 MiB of UTF-8; larger is 413 `code_too_large`.
- `metadata`: at most 10 pairs; keys `[A-Za-z0-9_.:-]{1,64}` (so they can be named in a
  `metadata.<key>=` filter), values at most 512 characters.
- `env_vars`: at most 64, names `[A-Za-z_][A-Za-z0-9_]*`, values at most 32 KiB, 128 KiB in
  all; names starting with `BAPONI_` are the platform's and refused. `PATH`, `HOME` and the like
  may be set: the code could set them itself anyway.
- Every text must be valid Unicode (pydantic refuses unpaired surrogates) without NUL characters
  (a process environment and the database cannot hold NUL); only `code` may hold NUL, which
  the interpreter then reports.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nodeagent.execution import ExecutionResult

KIB = 1024
MAX_CODE_BYTES = 1024 * KIB
MAX_METADATA = 10
MAX_ENV_VARS = 64
MAX_ENV_VALUE = 32 * KIB
MAX_ENV_TOTAL = 128 * KIB
RESERVED_ENV_PREFIX = "BAPONI_"
THREAD_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

Language = Literal["python", "node", "bash"]


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _utc(value: datetime) -> datetime:
    """Naive times are taken as UTC."""
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is out of range") from None


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
MetadataKey = Annotated[str, Field(pattern=METADATA_KEY_PATTERN)]
MetadataValue = Annotated[str, Field(max_length=512), AfterValidator(_text)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN, max_length=256)]
EnvValue = Annotated[str, Field(max_length=MAX_ENV_VALUE), AfterValidator(_text)]


class ExecuteRequest(BaseModel):
    """One execution. Everything else (image, CPU, network, mounts) comes from the key's sandbox."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        min_length=1,
        description="The code to run: 1 byte to 1 MiB of UTF-8 (larger is 413 code_too_large).",
        json_schema_extra={"maxLength": MAX_CODE_BYTES},
    )
    language: Language = "python"
    timeout: StrictFloat | StrictInt | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Seconds, from 1 to the sandbox's maximum; by default 60 or that maximum if smaller.",
        json_schema_extra={"minimum": 1},
    )
    thread_id: str | None = Field(
        default=None,
        pattern=THREAD_ID_PATTERN,
        description="One execution per thread at a time: a second concurrent call gets 409 thread_busy.",
    )
    metadata: Metadata = Field(
        default_factory=dict,
        description="Audit only: kept with the execution record, never visible inside the sandbox.",
    )
    env_vars: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        max_length=MAX_ENV_VARS,
        description="Environment for this call; overrides the key's, which overrides the sandbox's.",
    )
    stream: StrictBool = Field(default=False, description="Answer with NDJSON lines as output is produced.")
    webhook_url: HttpUrl | None = Field(
        default=None,
        description="Answer 202 at once and POST the result, signed (Baponi-Signature), to this URL.",
    )

    @field_validator("code")
    @classmethod
    def _code_size(cls, code: str) -> str:
        size = len(code.encode())
        if size > MAX_CODE_BYTES:
            raise PydanticCustomError(
                "code_too_large",
                "code is {size} bytes of UTF-8; at most {limit} (1 MiB) are accepted",
                {"size": size, "limit": MAX_CODE_BYTES},
            )
        return code

    @field_validator("env_vars")
    @classmethod
    def _env_limits(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if name.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(
                    f"{name} is reserved: names starting with {RESERVED_ENV_PREFIX} belong to the platform"
                )
        total = sum(len(name) + len(value.encode()) for name, value in env.items())
        if total > MAX_ENV_TOTAL:
            raise ValueError(f"the variables take {total} bytes; at most {MAX_ENV_TOTAL} (128 KiB) in all")
        return env


class ExecuteResponse(BaseModel):
    """How the execution ended. `success` is exit code 0 with no sandbox failure."""

    success: bool
    stdout: str = Field(description="Decoded as UTF-8; undecodable bytes become U+FFFD.")
    stderr: str
    exit_code: int
    execution_id: str
    duration_ms: float
    stdout_truncated: bool = Field(description="The output cap of the sandbox was reached; the rest was dropped.")
    stderr_truncated: bool
    timed_out: bool
    oom_killed: bool
    signal: int | None = Field(description="The signal that killed the code, if one did.")
    sandbox_error: str | None = Field(description="The sandbox itself failed (not the code), and why.")

    @classmethod
    def of(cls, execution_id: str, stdout: str, stderr: str, result: ExecutionResult) -> ExecuteResponse:
        return cls(
            success=result.success,
            stdout=stdout,
            stderr=stderr,
            exit_code=result.exit_code,
            execution_id=execution_id,
            duration_ms=round(result.duration_ms, 3),
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
            timed_out=result.timed_out,
            oom_killed=result.oom_killed,
            signal=result.signal,
            sandbox_error=result.error,
        )


class Accepted(BaseModel):
    """A webhook call was accepted; the result will be POSTed to its URL."""

    execution_id: str
    status: Literal["accepted"] = "accepted"


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, snake_case: what programs branch on.")
    message: str = Field(description="For people: what went wrong and what to change.")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class StartedEvent(BaseModel):
    type: Literal["started"] = "started"
    execution_id: str


class OutputEvent(BaseModel):
    type: Literal["stdout", "stderr"]
    data: str


class ResultEvent(ExecuteResponse):
    type: Literal["result"] = "result"


class ErrorEvent(ErrorResponse):
    type: Literal["error"] = "error"


class ExecutionRecord(BaseModel):
    """One audit record: what ran and how it ended, never the code or its output."""

    id: str
    sandbox: str
    language: str
    thread_id: str | None
    metadata: dict[str, str]
    exit_code: int | None
    success: bool
    duration_ms: float
    stdout_bytes: int
    stderr_bytes: int
    timed_out: bool
    oom_killed: bool
    error: str | None
    started_at: datetime
    finished_at: datetime


class Status(BaseModel):
    status: str


class ExecutionList(BaseModel):
    executions: list[ExecutionRecord]
    next_before: str | None = Field(description="Pass as `before` for the next (older) page; null on the last page.")
