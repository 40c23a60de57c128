import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from app.domain import LinkEvent, Note
from app.platforms import build_platform
from app.platforms.base import WebhookRejected
from app.platforms.console import ConsolePlatform
from app.products import ProductConfig
from app.security import standard_webhook_headers

NOW = 1_700_000_000.0
WEBHOOK_KEY = bytes(range(32))
BODY = json.dumps({"event": "conversation.created", "conversation_id": "conv-1"}).encode()


class FixedClock:
    def __init__(self, now: float = NOW) -> None:
        self.current = now

    def now(self) -> float:
        return self.current


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def open_product() -> ProductConfig:
    return ProductConfig.model_validate(
        {"id": "demo", "platform": "console", "allow_unauthenticated": True}
    )


def signed_product() -> ProductConfig:
    return ProductConfig.model_validate(
        {
            "id": "demo",
            "platform": "console",
            "ingest_token": "ingest-token-0123456789abcdef",
            "console": {"webhook_secret": whsec(WEBHOOK_KEY)},
        }
    )


def make_note(**overrides: Any) -> Note:
    fields: dict[str, Any] = {
        "product_id": "demo",
        "session_id": "sess-1",
        "conversation_id": "conv-1",
        "kind": "prelink",
        "body": "session_id: sess-1\ntimestamp: 2023-11-14 22:13:20 UTC\n\n[1] User clicked Save",
        "delivery_id": "note_abc",
        **overrides,
    }
    return Note(**fields)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http_client:
        yield http_client


@pytest.fixture
def console(client: httpx.AsyncClient) -> ConsolePlatform:
    return ConsolePlatform(open_product(), client, FixedClock())


async def test_post_note_logs_note_posted_with_the_full_body(console: ConsolePlatform) -> None:
    note = make_note()
    with capture_logs() as logs:
        note_id = await console.post_note(note)
    assert logs == [
        {
            "event": "note_posted",
            "log_level": "info",
            "product_id": "demo",
            "session_id": "sess-1",
            "conversation_id": "conv-1",
            "kind": "prelink",
            "note_id": note_id,
            "body": note.body,
        }
    ]


async def test_post_note_returns_a_distinct_console_id_each_time(console: ConsolePlatform) -> None:
    first = await console.post_note(make_note())
    second = await console.post_note(make_note())
    assert first.startswith("console_")
    assert first != second


async def test_redact_is_a_no_op(console: ConsolePlatform) -> None:
    with capture_logs() as logs:
        await console.redact_note("conv-1", "console_1")
    assert logs == []


def test_unauthenticated_product_accepts_an_unsigned_webhook(console: ConsolePlatform) -> None:
    console.verify({}, BODY)


def test_product_with_a_webhook_secret_rejects_an_unsigned_webhook(
    client: httpx.AsyncClient,
) -> None:
    platform = ConsolePlatform(signed_product(), client, FixedClock())
    with pytest.raises(WebhookRejected):
        platform.verify({}, BODY)


def test_product_with_a_webhook_secret_accepts_a_signed_webhook(
    client: httpx.AsyncClient,
) -> None:
    platform = ConsolePlatform(signed_product(), client, FixedClock())
    headers = standard_webhook_headers(WEBHOOK_KEY, msg_id="msg_1", timestamp=int(NOW), body=BODY)
    platform.verify(headers, BODY)


def test_product_with_a_webhook_secret_checks_the_replay_window(
    client: httpx.AsyncClient,
) -> None:
    platform = ConsolePlatform(signed_product(), client, FixedClock(NOW + 301))
    headers = standard_webhook_headers(WEBHOOK_KEY, msg_id="msg_1", timestamp=int(NOW), body=BODY)
    with pytest.raises(WebhookRejected, match="tolerance"):
        platform.verify(headers, BODY)


def test_product_without_secret_or_opt_in_rejects_every_webhook(
    client: httpx.AsyncClient,
) -> None:
    # Validation forbids this product; the adapter must still not fall back to accept-all.
    product = ProductConfig.model_construct(id="demo", platform="console")
    platform = ConsolePlatform(product, client, FixedClock())
    with pytest.raises(WebhookRejected, match="unauthenticated"):
        platform.verify({}, BODY)


async def test_parse_reads_the_bot_webhook_format(console: ConsolePlatform) -> None:
    body = json.dumps(
        {"event": "conversation.replied", "conversation_id": "conv-2", "session_id": "sess-9"}
    ).encode()
    event = await console.parse({"webhook-id": "msg_5"}, body)
    assert event.event is LinkEvent.REPLY_EXISTING
    assert (event.conversation_id, event.session_id) == ("conv-2", "sess-9")
    assert event.delivery_id == "msg_5"


def test_build_platform_builds_the_console_adapter(client: httpx.AsyncClient) -> None:
    assert isinstance(build_platform(open_product(), client, FixedClock()), ConsolePlatform)
