"""Logs: JSON lines with request context, and never a secret, signature, email or note body."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import respx
import structlog

from app.main import create_app
from app.settings import Settings
from tests.conftest import (
    HTTP_SECRET,
    INGEST_SECRET,
    INGEST_TOKEN,
    NOTES_URL,
    WEBHOOK_SECRET,
    ManualClock,
    batch,
    make_product,
)
from tests.harness import signed_webhook

EMAIL = "Secret.Person@example.com"
DESCRIPTION = "User typed the private project name Bluebird"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    structlog.reset_defaults()


async def run_full_flow(redis_client, clock: ManualClock) -> list[str]:
    """Ingest (token and signature), a signed webhook, and a delivered note."""
    product = make_product(post_link_debounce_s=0)
    app = create_app(
        Settings(log_format="json", log_level="DEBUG"),
        products={"acme": product},
        clock=clock,
        redis_client=redis_client,
        run_worker=False,
        http_transport=httpx.AsyncHTTPTransport(),  # the one respx mocks
    )
    responses = []
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="bridge.test").pass_through()
        mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n1"}))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as c:
                first = json.dumps(batch("s1", (DESCRIPTION, 1.7e9), email=EMAIL)).encode()
                responses.append(
                    await c.post(
                        "/actions/acme",
                        content=first,
                        headers={
                            "authorization": f"Bearer {INGEST_TOKEN}",
                            "content-type": "application/json",
                            "x-request-id": "req-42",
                        },
                    )
                )
                second = json.dumps(batch("s1", ("second", 1.7e9 + 1))).encode()
                signature = hmac.new(INGEST_SECRET.encode(), second, hashlib.sha256).hexdigest()
                responses.append(
                    await c.post(
                        "/actions/acme",
                        content=second,
                        headers={
                            "x-connector-signature": f"sha256={signature}",
                            "content-type": "application/json",
                        },
                    )
                )
                hook = {"event": "conversation.created", "conversation_id": "c1", "email": EMAIL}
                raw, headers = signed_webhook(hook, now=clock.now())
                responses.append(
                    await c.post("/chatbot-webhook/acme", content=raw, headers=headers)
                )
                responses.append(
                    await c.post(
                        "/actions/acme", json={}, headers={"authorization": "Bearer wrong-token"}
                    )
                )
                await app.state.services.worker.run_once()
    assert [r.status_code for r in responses] == [202, 202, 200, 401]
    assert responses[0].headers["x-request-id"] == "req-42"
    assert len(responses[1].headers["x-request-id"]) == 32
    return [signature, headers["webhook-signature"]]


async def test_logs_carry_context_and_no_secrets(
    redis_client, clock, restore_logging, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    signatures = await run_full_flow(redis_client, clock)
    text = capsys.readouterr().err
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    events = {line["event"] for line in lines}
    assert {"link_created", "note_delivered", "service_started"} <= events
    linked = next(line for line in lines if line["event"] == "link_created")
    assert (linked["product_id"], linked["session_id"], linked["conversation_id"]) == (
        "acme", "s1", "c1",
    )  # fmt: skip
    assert len(linked["request_id"]) == 32  # generated for the webhook request
    forbidden = [
        INGEST_TOKEN, INGEST_SECRET, HTTP_SECRET, WEBHOOK_SECRET, "wrong-token",
        EMAIL, EMAIL.lower(), DESCRIPTION, *signatures,
        HTTP_SECRET.removeprefix("whsec_"), WEBHOOK_SECRET.removeprefix("whsec_"),
    ]  # fmt: skip
    for secret in forbidden:
        assert secret not in text, secret
