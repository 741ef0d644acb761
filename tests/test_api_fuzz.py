"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): whatever the input, no 5xx, and
every status code and content type answered is one the schema documents.

Runs against a query service on the session's real Redis, PostgreSQL and Kafka, with API keys
and a body limit configured, so the security paths are fuzzed too (a valid key is sent with
every generated request; the key-less paths are tested in tests/test_security.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from fluxstream.core.settings import Settings
from fluxstream.query.auth import new_key
from fluxstream.query.http import create_app
from fluxstream.schemas.topics import create_topics
from fluxstream.stack import free_port

KEY, ENTRY = new_key(["search", "admin"])


@pytest.fixture(scope="module")
def api_schema(stack: Settings) -> Iterator[schemathesis.schemas.BaseSchema]:
    # Read-your-writes waits are capped at 1 s here: generated min_positions are never reached.
    # Its own request topic: joining the session service's consumer group would take partitions away from it.
    config = replace(stack, api_keys=ENTRY, http_port=free_port(), max_request_bytes=64 * 1024,
                     max_position_wait_ms=1000, search_requests_topic=f"fuzz-req-{uuid.uuid4().hex[:8]}",
                     app_id="fuzz-tests")
    asyncio.run(create_topics(config))
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=config.http_port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "query service did not start"
        time.sleep(0.05)
    yield schemathesis.openapi.from_url(f"http://127.0.0.1:{config.http_port}/openapi.json")
    server.should_exit = True
    thread.join(timeout=30)


def test_no_server_errors(api_schema: schemathesis.schemas.BaseSchema) -> None:
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_5xx(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            if response.status_code >= 400:  # every error is the documented JSON shape
                assert {"error", "message"} <= response.json().keys(), response.text[:500]
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance])

        no_5xx()
        checked.append(operation.label)
    assert {"POST /v1/search", "POST /v1/search/batch", "GET /v1/documents/{doc_id}", "GET /metrics"} <= set(checked)
