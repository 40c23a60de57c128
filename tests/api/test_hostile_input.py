"""Input that once reached Redis or the float arithmetic and answered 500: text Redis cannot
carry (lone surrogates) in verified webhooks, and store refusals. Each is a 4xx or a 503 now."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import respx
from structlog.testing import capture_logs

from app.store import keys
from tests.conftest import INGEST_TOKEN, ManualClock, batch, make_product
from tests.fakes.zendesk import signed_headers as zendesk_headers
from tests.harness import Harness, running_app
from tests.platforms.test_intercom import fixture as intercom_fixture
from tests.platforms.test_intercom import intercom_product, signed
from tests.platforms.test_zendesk import SECRET as ZENDESK_SECRET
from tests.platforms.test_zendesk import fixture_bytes, zendesk_section

T0 = 1_705_322_090.0
LONE = "\\ud800"  # as it appears in the JSON text: a lone surrogate escape
JSON = {"content-type": "application/json"}


@pytest.fixture
async def h(redis_client: aioredis.Redis) -> AsyncIterator[Harness]:
    products = [
        make_product("acme"),
        intercom_product("intercom"),
        make_product("globex", platform="zendesk", zendesk=zendesk_section()),
    ]
    with respx.mock(assert_all_called=False):
        async with running_app(
            products=products, clock=ManualClock(T0), redis_client=redis_client
        ) as harness:
            yield harness


def with_lone_surrogate(document: dict[str, Any], path: list[str | int], marker: str) -> bytes:
    """The document as JSON text, with the string at ``path`` holding a lone surrogate."""
    changed = copy.deepcopy(document)
    node: Any = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = marker
    return json.dumps(changed).replace(marker, f"x{LONE}").encode()


INTERCOM_FIELDS = [
    ["data", "item", "id"],
    ["data", "item", "contacts", "contacts", 0, "external_id"],
    ["data", "item", "source", "author", "email"],
    ["id"],
]


@pytest.mark.parametrize("path", INTERCOM_FIELDS, ids=lambda p: ".".join(map(str, p)))
async def test_a_lone_surrogate_in_a_signed_intercom_webhook_is_400(
    h: Harness, path: list[str | int]
) -> None:
    body = with_lone_surrogate(intercom_fixture("conversation_user_created"), path, "MARK")
    r = await h.client.post(
        "/chatbot-webhook/intercom", content=body, headers={**JSON, **signed(body)}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_webhook"
    assert r.json()["detail"].startswith("the webhook body is not valid JSON")


@pytest.mark.parametrize("field", ["ticket_id", "requester_external_id", "requester_email"])
async def test_a_lone_surrogate_in_a_signed_zendesk_trigger_is_400(h: Harness, field: str) -> None:
    trigger = json.loads(fixture_bytes("trigger_ticket_created"))
    del trigger["session_id"]  # so the identity fields are what the link would use
    body = with_lone_surrogate(trigger, [field], "MARK")
    headers = zendesk_headers(body, secret=ZENDESK_SECRET, when=T0)
    r = await h.client.post("/chatbot-webhook/globex", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_webhook"


async def test_a_lone_surrogate_in_a_batch_is_422(h: Harness) -> None:
    body = json.dumps(batch("s1", ("MARK", T0))).replace("MARK", LONE).encode()
    r = await h.client.post(
        "/actions/acme", content=body, headers={**JSON, "authorization": f"Bearer {INGEST_TOKEN}"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_payload"


async def test_a_store_refusal_is_503_with_retry_after_and_logged_with_its_cause(
    h: Harness, redis_client: aioredis.Redis
) -> None:
    # A key of the wrong type makes Redis refuse the script (WRONGTYPE): not an outage, and
    # not the sender's fault either. It must not look like a bug in the bridge (500).
    await redis_client.set(keys.session_keys("acme", "s1").state, "not a hash")
    with capture_logs() as logs:
        r = await h.post_batch("acme", batch("s1", ("A", T0)))
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"] == "store_error"
    logged = [e for e in logs if e["event"] == "store_error"]
    assert logged and "WRONGTYPE" in logged[0]["error"]


@pytest.mark.parametrize("segment", ["%ED%A0%80", "%FF", "x" * 129, "a%20b"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_session_id_in_the_path_is_validated_before_it_reaches_the_store(
    h: Harness, segment: str, method: str
) -> None:
    path = f"/sessions/acme/{segment}" + ("/proactive" if method == "POST" else "")
    headers = {**JSON, "authorization": f"Bearer {INGEST_TOKEN}"}
    r = await h.client.request(method, path, content=b'{"trigger_id": "t1"}', headers=headers)
    assert r.status_code == 422, r.text
    assert [f["loc"] for f in r.json()["fields"]] == ["path.session_id"]
    assert "x" * 129 not in r.text


async def test_a_content_length_of_thousands_of_digits_is_413(h: Harness) -> None:
    # The ASGI test transport passes the header through as it is; a server might refuse it first.
    headers = {**JSON, "authorization": f"Bearer {INGEST_TOKEN}", "content-length": "9" * 5000}
    r = await h.client.post("/actions/acme", content=b"{}", headers=headers)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "body_too_large"


async def test_a_content_length_of_non_ascii_digits_is_not_parsed(h: Harness) -> None:
    # "²" is a digit to str.isdigit() but not to int(); the body's real size still counts.
    headers = [
        ("content-type", "application/json"),
        ("authorization", f"Bearer {INGEST_TOKEN}"),
        ("content-length", "²".encode("latin-1")),
    ]
    r = await h.client.post("/actions/acme", content=b"{}", headers=headers)
    assert r.status_code < 500, r.text
