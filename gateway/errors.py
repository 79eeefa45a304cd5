"""Typed API errors and the one JSON shape they all take.

Every error answer is `{"error": {"code": "<stable_snake_case>", "message": "what to change"}}`:
`code` is for programs and never changes meaning, `message` is for people. Validation errors
of the framework, HTTP errors of the router, the executor's exceptions and anything unexpected
are all turned into one of the classes below, so no other shape (and no traceback) leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import grpc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from nodeagent.images import LanguageNotInImage
from nodeagent.runtime import RequestRejected, UnknownSandbox

from .agents import AgentRejected, AgentUnavailable

log = structlog.get_logger("baponi.gateway")


class ApiError(Exception):
    """An answer other than success: its status, stable code and a message saying what to change."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class InvalidJson(ApiError):
    status, code = 400, "invalid_json"


class LanguageNotAvailable(ApiError):
    status, code = 400, "language_not_available"


class Rejected(ApiError):
    """The sandbox (via the agent) refused what the call asked for."""

    status, code = 400, "request_rejected"


class Unauthenticated(ApiError):
    status = 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class MissingApiKey(Unauthenticated):
    code = "missing_api_key"


class InvalidApiKey(Unauthenticated):
    code = "invalid_api_key"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class ThreadBusy(ApiError):
    status, code = 409, "thread_busy"


class BodyTooLarge(ApiError):
    status, code = 413, "body_too_large"


class CodeTooLarge(ApiError):
    status, code = 413, "code_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class ConcurrencyLimit(ApiError):
    status, code = 429, "concurrency_limit"


class InternalError(ApiError):
    status, code = 500, "internal_error"

    def __init__(self, message: str = "the gateway failed unexpectedly; the error is logged") -> None:
        super().__init__(message)


class AgentFailed(ApiError):
    status, code = 502, "agent_failed"


class SandboxUnavailable(ApiError):
    status, code = 503, "sandbox_unavailable"


class NoAgentAvailable(ApiError):
    status, code = 503, "no_agent_available"


class ExecutionCancelled(ApiError):
    status, code = 503, "execution_cancelled"


class NotReady(ApiError):
    status, code = 503, "not_ready"


def from_executor(exc: BaseException, *, retry_after: int) -> ApiError:
    """What a caller is told when the executor (agent pool or in-process runtime) raised `exc`."""
    if isinstance(exc, ApiError):
        return exc
    # An agent answers NOT_FOUND for a sandbox it lacks: the same as UnknownSandbox in process.
    if isinstance(exc, UnknownSandbox) or (isinstance(exc, AgentRejected) and exc.code == grpc.StatusCode.NOT_FOUND):
        return SandboxUnavailable(
            f"{exc}: the agents do not have this API key's sandbox; "
            "an administrator must fix the key or load the sandbox"
        )
    if isinstance(exc, LanguageNotInImage):
        return LanguageNotAvailable(str(exc))
    if isinstance(exc, AgentRejected):
        return Rejected(exc.message)
    if isinstance(exc, RequestRejected):
        return Rejected(str(exc))
    if isinstance(exc, AgentUnavailable):
        if exc.started:
            return AgentFailed(
                "the agent failed while running the code, which may have run partially; "
                f"it is not retried ({exc.message})"
            )
        return NoAgentAvailable(
            f"no agent could take the execution: {exc.message}; retry shortly", retry_after=retry_after
        )
    if isinstance(exc, asyncio.CancelledError):
        return ExecutionCancelled(
            "the execution was cancelled before it ended (its stream was closed, or the gateway shut down); "
            "the code may have run partially"
        )
    return InternalError()


def from_validation(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """One error for everything the request got wrong; oversized code is 413, not 400."""
    for error in errors:
        if error["type"] == "code_too_large":
            return CodeTooLarge(error["msg"])
        if error["type"] == "json_invalid":
            return InvalidJson(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})")
    return InvalidRequest("; ".join(_describe(error) for error in errors[:5]))


def _describe(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error["loc"]]
    if location[:1] in (["body"], ["query"]):
        location = location[1:]
    field = ".".join(location)
    if not field:
        return "the body must be a JSON object with a 'code' field"
    if error["type"] == "extra_forbidden":
        return f"unknown field {field!r}; the fields are listed in /openapi.json"
    return f"{field}: {error['msg']}"


_HTTP_ERRORS: dict[int, type[ApiError]] = {400: InvalidJson, 404: NotFound, 405: MethodNotAllowed, 413: BodyTooLarge}


class HttpError(ApiError):
    """Any other HTTP error of the framework, coded by its status's name."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, HTTPStatus(status).name.lower()


def from_http(exc: HTTPException) -> ApiError:
    """The router's and framework's own HTTP errors (unknown path, wrong method, unreadable body)."""
    kind = _HTTP_ERRORS.get(exc.status_code)
    return kind(str(exc.detail)) if kind else HttpError(exc.status_code, str(exc.detail))


def install(app: FastAPI) -> None:
    """Route every exception the app can raise to our error shape."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return from_validation(exc.errors()).response()

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return from_http(exc).response()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", path=request.url.path, exc_info=exc)
        return InternalError().response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, unexpected)
