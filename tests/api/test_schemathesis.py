"""schemathesis against the ASGI app: no request gets a 5xx, and every answer is documented.

Cases come from the OpenAPI document itself (its examples, boundary values and random data for
every operation), so the checks hold the document to what the app answers: its status code,
content type, headers and body schema. Authentication comes from the document's security
schemes (the ingest token and the admin token). Webhooks go to a console product that accepts
them unsigned (no generated case could sign one), so they are parsed and linked. Every other case
names the configured product and about half of them a seeded session, so they get past the
lookups and reach the store.

Each test's app runs in-process and is started once for all its cases: its fixture loads the
document through schemathesis' ASGI client, which starts the lifespan, and every operation runs
as a subtest of the one test. The first app uses the real Redis (flushed, then seeded); the
second a Redis that is not there, where whatever needs the store must answer its documented 503
with Retry-After. Runs are bounded and reproducible: a fixed seed, deterministic generation, few
examples, no example database, no shrinking.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from schemathesis import BaseSchema, Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from app.main import create_app
from app.settings import Settings
from tests.conftest import INGEST_TOKEN, batch, free_port, make_product

PRODUCT = "acme"
OPEN = "demo"  # a console product that allows unauthenticated webhooks
SESSIONS = ("sess-1", "sess-2")  # sess-1 has a batch and no link; sess-2 is linked
ADMIN_TOKEN = "schemathesis-admin-token-0123"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CONFIG: dict[str, Any] = {
    "seed": 20240115,
    "generation": {"deterministic": True, "max-examples": 8},
    "cache": {"enabled": False},
    # Every case names the configured product, so it gets past the product lookup; about half
    # name a seeded session.
    "parameters": {
        "path.product_id": PRODUCT,
        "path.session_id": {"dictionary": "sessions", "probability": 0.5},
    },
    "dictionaries": {"sessions": {"values": list(SESSIONS)}},
    # Webhooks go to a console product that takes them unsigned, so they are parsed and linked.
    "operations": [
        {"include-operation-id": "receive_webhook", "parameters": {"path.product_id": OPEN}}
    ],
    "auth": {
        "openapi": {
            "ingestToken": {"bearer": INGEST_TOKEN},
            "adminToken": {"bearer": ADMIN_TOKEN},
        }
    },
}


def _seed(schema: BaseSchema) -> None:
    """sess-1: a batch, no link; sess-2: a batch and a link to conv-2."""
    auth = {"authorization": f"Bearer {INGEST_TOKEN}"}
    ingest = schema["/actions/{product_id}"]["POST"]
    link = schema["/sessions/link"]["POST"]
    for session_id in SESSIONS:
        body = batch(session_id, ("clicked A", 1_700_000_000.0), user_id="u-1")
        case = ingest.Case(path_parameters={"product_id": PRODUCT}, body=body)
        assert case.call(headers=auth).status_code == 202
    body = {"product_id": PRODUCT, "session_id": SESSIONS[1], "conversation_id": "conv-2"}
    assert link.Case(body=body).call(headers=auth).status_code == 200


def _load(
    settings: Settings, redis_client: aioredis.Redis | None = None, **config: Any
) -> BaseSchema:
    """The document of a fresh app, loaded through schemathesis' ASGI client (which starts the
    app's lifespan)."""
    app = create_app(
        settings,
        redis_client=redis_client,
        products={
            PRODUCT: make_product(PRODUCT),
            OPEN: make_product(OPEN, "console", allow_unauthenticated=True),
        },
        run_worker=False,
        configure_logs=False,
    )
    schemathesis_config = SchemathesisConfig.from_dict({**CONFIG, **config})
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis_config)


@pytest.fixture(scope="module")
def api_schema(redis_url: str) -> BaseSchema:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    schema = _load(Settings(redis_url=redis_url, admin_token=ADMIN_TOKEN))
    _seed(schema)
    return schema


@pytest.fixture(scope="module")
def store_down_schema() -> BaseSchema:
    """The app over a Redis that is not there: a 503 (documented, with Retry-After) is the
    expected answer of everything that needs the store; any other 5xx is still a failure."""
    expected = {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", 503]}}
    # Refused at once, and never retried: the app's own client would back off on each call.
    dead = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    return _load(Settings(admin_token=ADMIN_TOKEN), dead, checks=expected)


schema = schemathesis.pytest.from_fixture("api_schema")
store_down = schemathesis.pytest.from_fixture("store_down_schema")
BOUNDED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    # Generating the larger bodies can be slow on a loaded CI machine; the run stays bounded.
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read and write ``Node._nodeid``, which pytest 9.2 no
    longer has (it keeps ``_id``): give the node one, or the test fails before it starts."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.mark.timeout(60)
@BOUNDED
@schema.parametrize()
def test_the_app_answers_as_documented(case: Case) -> None:
    case.call_and_validate(checks=CHECKS)


@pytest.mark.timeout(60)
@BOUNDED
@store_down.parametrize()
def test_without_the_store_the_app_answers_as_documented(case: Case) -> None:
    case.call_and_validate(checks=CHECKS)
