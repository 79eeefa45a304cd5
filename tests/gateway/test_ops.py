"""What operators and tools read: health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import Gateway, GatewayFactory, error_of


async def test_health_and_readiness(make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    ready = [False]

    async def executor_ready() -> bool:
        return ready[0]

    async with make_gateway(ready=executor_ready) as gateway:
        assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
        assert "executor" in error_of(await gateway.client.get("/readyz"), 503, "not_ready")
        ready[0] = True
        assert (await gateway.client.get("/readyz")).json() == {"status": "ready"}

        async def unreachable(key_id: str) -> None:
            raise ConnectionRefusedError("database down")

        monkeypatch.setattr(gateway.store, "get_key", unreachable)
        assert "store is unreachable" in error_of(await gateway.client.get("/readyz"), 503, "not_ready")
        assert (await gateway.client.get("/healthz")).status_code == 200


async def test_metrics_count_requests_by_route_and_time_executions(gateway: Gateway, secret: str) -> None:
    await gateway.execute(secret, code="echo 1", language="bash")
    await gateway.execute(secret, code="exit 1", language="bash")
    await gateway.client.get("/v1/no-such-route")
    text = (await gateway.client.get("/metrics")).text
    assert 'http_requests_total{route="/v1/sandbox/execute",status="200"}' in text
    assert 'http_requests_total{route="unmatched",status="404"}' in text
    for outcome in ("ok", "error_exit"):
        assert f'execution_duration_seconds_count{{language="bash",outcome="{outcome}"}}' in text


async def test_openapi_documents_the_execute_call_and_the_error_shape(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    execute = document["paths"]["/v1/sandbox/execute"]["post"]
    assert execute["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExecuteRequest"
    }
    responses = execute["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ExecuteResponse"}
    assert responses["200"]["content"]["application/x-ndjson"]["schema"] == {"$ref": "#/components/schemas/StreamLine"}
    assert responses["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Accepted"}
    for status in ("400", "401", "409", "413", "415", "429", "500", "502", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert "thread_busy" in responses["409"]["description"] and "code_too_large" in responses["413"]["description"]
    assert "422" not in responses
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    request = schemas["ExecuteRequest"]
    assert request["required"] == ["code"] and request["additionalProperties"] is False
    assert request["properties"]["language"]["enum"] == ["python", "node", "bash"]
    assert {"success", "stdout", "stderr", "exit_code", "execution_id"} <= set(schemas["ExecuteResponse"]["required"])
    assert {"StartedEvent", "OutputEvent", "ResultEvent", "ErrorEvent"} <= set(schemas)
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
