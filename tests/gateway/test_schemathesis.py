"""Property-based run of the whole API from its own OpenAPI document (schemathesis).

Valid and invalid requests alike must never get a 5xx, and every answer must match the
document: its status, content type and schema. Calls run real code in the TIGHT sandbox (30 s
at most, small output); webhooks are queued but never sent (no traffic leaves the machine).
"""

from __future__ import annotations

import asyncio

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway.conftest import GatewayFactory

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, secret: str, examples: int) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    cases = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    headers = {"Authorization": f"Bearer {secret}"}

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


async def test_no_request_gets_a_server_error_and_answers_match_the_document(make_gateway: GatewayFactory) -> None:
    async with make_gateway(deliver_webhooks=False) as gateway:
        secret = await gateway.key(sandbox="tight", max_concurrent=8, rate_per_minute=100_000)
        await asyncio.to_thread(fuzz, gateway.url, secret, 100)
