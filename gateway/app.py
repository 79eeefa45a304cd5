"""The gateway's HTTP app: its routes, and how each answer mode reads a run.

One execution is admitted by the runner (sandbox, timeout, limits, thread lock) and then read
in one of three ways: the JSON answer when it ends, NDJSON lines while it runs (`stream` or
`Accept: application/x-ndjson`), or nothing at all (`webhook_url`: 202, and the result is
POSTed later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry
from pydantic import TypeAdapter, ValidationError

from nodeagent.config import SandboxConfig

from . import audit, errors, streaming, webhooks
from .auth import Authenticator, bearer
from .bodylimit import limit_body
from .errors import ApiError, InvalidRequest, NotReady, UnsupportedMediaType
from .metrics import Metrics
from .runs import Executor, Runner
from .schema import (
    Accepted,
    ErrorEvent,
    ErrorResponse,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionList,
    OutputEvent,
    ResultEvent,
    StartedEvent,
    Status,
    UtcDatetime,
)
from .settings import Settings
from .store import ApiKey, Store

Readiness = Callable[[], Awaitable[bool]]
_STREAM_LINE = TypeAdapter(StartedEvent | OutputEvent | ResultEvent | ErrorEvent)
_REF = "#/components/schemas/{model}"
# The execute call's body and key, documented here because its handler reads them itself.
_EXECUTE_DOCUMENTED = {
    "requestBody": {
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ExecuteRequest")}}},
        "required": True,
    },
    "security": [{bearer.scheme_name: []}],
}


def create_app(
    *,
    store: Store,
    executor: Executor,
    sandboxes: Mapping[str, SandboxConfig],
    settings: Settings,
    ready: Readiness | None = None,
    metrics_also: Sequence[CollectorRegistry] = (),
) -> FastAPI:
    """`ready` says whether the executor can take work (e.g. an agent is connected); /readyz asks
    it. `metrics_also`: registries served beside the gateway's own on /metrics."""
    metrics = Metrics(metrics_also)
    runner = Runner(store=store, executor=executor, sandboxes=sandboxes, settings=settings, metrics=metrics)
    deliverer = webhooks.Deliverer(store, settings)
    authenticate = Authenticator(store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        delivering = asyncio.ensure_future(deliverer.run()) if settings.deliver_webhooks else None
        try:
            yield
        finally:
            await runner.close()
            if delivering is not None:
                delivering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivering

    app = FastAPI(
        title="Baponi gateway",
        version="1",
        summary="Runs untrusted code in isolated, one-shot sandboxes with one HTTP call.",
        lifespan=lifespan,
        docs_url=None,  # the interactive pages load scripts from a CDN; air-gapped installs have none
        redoc_url=None,
    )
    app.state.runner, app.state.deliverer, app.state.metrics = runner, deliverer, metrics
    errors.install(app)
    app.add_middleware(limit_body, limit=settings.max_body_bytes)
    app.add_middleware(metrics.middleware)

    @app.post(
        "/v1/sandbox/execute",
        response_model=ExecuteResponse,
        responses={
            200: {
                "description": "How the execution ended; or, when streaming, NDJSON lines as it runs.",
                "content": {streaming.NDJSON: {"schema": {"$ref": "#/components/schemas/StreamLine"}}},
            },
            202: {
                "model": Accepted,
                "description": "Accepted for webhook delivery; the result is POSTed to webhook_url.",
            },
            **_error_responses(400, 401, 409, 413, 415, 429, 500, 502, 503),
        },
        openapi_extra=_EXECUTE_DOCUMENTED,
    )
    async def execute(request: Request) -> Any:
        """Run code in a fresh sandbox of the API key's sandbox configuration."""
        # The key and the body are read here, not as FastAPI dependencies: solving those, and
        # parsing the JSON into Python before validating it, cost the call ~0.2 ms.
        key = await authenticate(await bearer(request))
        body = await _execute_request(request)
        stream = streaming.wanted(request, body)
        if body.webhook_url is not None and stream:
            raise InvalidRequest("ask for either a stream or a webhook_url, not both")
        run = await runner.start(key, body, stream=stream)
        if body.webhook_url is not None:
            runner.spawn(webhooks.send_result(run, store, str(body.webhook_url), deliverer))
            return JSONResponse(Accepted(execution_id=run.execution_id).model_dump(), status_code=202)
        if stream:
            first, rest = await streaming.first_event(run)
            return StreamingResponse(
                streaming.lines(first, rest), media_type=streaming.NDJSON, headers={"Cache-Control": "no-store"}
            )
        # Serialized here: returning the model would have FastAPI validate it again against
        # response_model (which still documents it), for nothing.
        outcome = await run.outcome()
        return Response(outcome.model_dump_json(), media_type="application/json")

    @app.get(
        "/v1/executions",
        response_model=ExecutionList,
        responses=_error_responses(400, 401, 500),
        description=(
            "The caller's own executions, newest first. Filter with `metadata.<key>=<value>` (any number, all must "
            "match), `since` and `until` (ISO 8601; naive times are UTC; since <= started_at < until); page with "
            "`before=<next_before of the previous page>`."
        ),
    )
    async def executions(
        request: Request,
        key: ApiKey = Depends(authenticate),
        since: UtcDatetime | None = None,
        until: UtcDatetime | None = None,
        limit: int = Query(100, ge=1, le=1000),
        before: str | None = Query(None, pattern=r"^[A-Za-z0-9_-]{1,64}$"),
    ) -> ExecutionList:
        """List this API key's audit records (never the code or its output)."""
        metadata = audit.metadata_filter(request.query_params)
        found = await store.list_executions(
            key.id, metadata=metadata, since=since, until=until, limit=limit, before_id=before
        )
        return audit.page(found, limit)

    @app.get("/healthz", response_model=Status)
    async def healthz() -> Status:
        """The process is up."""
        return Status(status="ok")

    @app.get("/readyz", response_model=Status, responses=_error_responses(503))
    async def readyz() -> Status:
        """The store answers and the executor can take work."""
        try:
            await store.get_key("readyz")
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            raise NotReady(f"the store is unreachable ({type(exc).__name__})") from exc
        if ready is not None and not await ready():
            raise NotReady("the executor cannot take work yet (no agent connected, or still starting)")
        return Status(status="ready")

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Any:
        """Prometheus metrics."""
        return metrics.response()

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with our 400 in place of its 422 and the NDJSON line types added."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                operation["responses"].pop("422", None)
            components = schema["components"]["schemas"]
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            line = _STREAM_LINE.json_schema(ref_template=_REF)
            components.update(line.pop("$defs"))
            components["StreamLine"] = {**line, "description": "One line of an NDJSON stream."}
            body = ExecuteRequest.model_json_schema(ref_template=_REF)
            components.update(body.pop("$defs", {}))
            components["ExecuteRequest"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _execute_request(request: Request) -> ExecuteRequest:
    """The body, validated in one pass over its bytes. pydantic's parser refuses some JSON that
    the standard allows (the escape of a lone surrogate): what is wrong with that, the standard
    parser's reading then says (a string that is not one, in which field)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType("send the body as JSON, with 'Content-Type: application/json'")
    raw = await request.body()
    try:
        return ExecuteRequest.model_validate_json(raw)
    except ValidationError as exc:
        problems = exc.errors()
    if problems[0]["type"] == "json_invalid":
        try:
            return ExecuteRequest.model_validate(json.loads(raw))
        except ValidationError as exc:  # a ValueError too: first
            problems = exc.errors()
        except ValueError:  # not JSON to the standard parser either
            pass
    raise errors.from_validation(problems)


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Each status documented with the error shape and the codes it can carry."""
    codes: dict[int, list[str]] = {}
    for kind in _error_classes(ApiError):
        codes.setdefault(kind.status, []).append(kind.code)
    return {
        status: {"model": ErrorResponse, "description": "Error codes: " + ", ".join(sorted(set(codes.get(status, []))))}
        for status in statuses
    }


def _error_classes(base: type[ApiError]) -> list[type[ApiError]]:
    found = []
    for kind in base.__subclasses__():
        if "code" in vars(kind):
            found.append(kind)
        found += _error_classes(kind)
    return found
