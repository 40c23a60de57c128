"""Generic HTTP adapter for self-hosted bots: Standard Webhooks in both directions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from app.clock import Clock
from app.domain import LinkEvent, Note, WebhookEvent
from app.models import ConversationId, SessionId
from app.platforms.base import (
    MAX_DELIVERY_ID_CHARS,
    InvalidWebhook,
    PermanentDeliveryError,
    Platform,
    WebhookRejected,
    body_id,
    load_json_object,
    validated,
)
from app.products import PlatformSettings, ProductConfig, http_url, whsec_value
from app.security import (
    SignatureError,
    decode_whsec,
    standard_webhook_headers,
    verify_standard_webhook,
)

BotId = Annotated[str, StringConstraints(min_length=1, max_length=256)]

LINK_EVENTS: Mapping[str, LinkEvent] = {
    "conversation.created": LinkEvent.NEW,
    "conversation.replied": LinkEvent.REPLY_EXISTING,
}
# Enough of an unknown event name to recognise it in a log without echoing a huge string.
_EVENT_NAME_PREVIEW_CHARS = 64


class BotEvent(BaseModel):
    """A link-eligible webhook body from a self-hosted bot (or the console)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    event: BotId
    conversation_id: ConversationId
    session_id: SessionId | None = None
    user_id: BotId | None = None
    email: BotId | None = None
    id: BotId | None = None


def verify_webhook(headers: Mapping[str, str], body: bytes, *, key: bytes, now: float) -> None:
    """Check Standard Webhooks headers, turning any SignatureError into WebhookRejected."""
    try:
        verify_standard_webhook(headers, key=key, body=body, now=now)
    except SignatureError as exc:
        raise WebhookRejected(f"invalid Standard Webhooks signature: {exc}") from exc


def _checked_delivery_id(delivery_id: str | None) -> str | None:
    if delivery_id is not None and len(delivery_id) > MAX_DELIVERY_ID_CHARS:
        raise InvalidWebhook(f"webhook-id must be at most {MAX_DELIVERY_ID_CHARS} characters")
    return delivery_id or None


def _ignored(event: str, data: Mapping[str, Any], delivery_id: str | None) -> WebhookEvent:
    preview = event[:_EVENT_NAME_PREVIEW_CHARS]
    return WebhookEvent(
        delivery_id=delivery_id or body_id(data),
        event=None,
        reason=f"event {preview!r} is not link-eligible",
    )


def parse_bot_event(body: bytes, delivery_id: str | None) -> WebhookEvent:
    """Read a bot webhook body; ``delivery_id`` (the ``webhook-id`` header) wins over its ``id``."""
    delivery_id = _checked_delivery_id(delivery_id)
    data = load_json_object(body)
    event = data.get("event")
    if not isinstance(event, str):
        raise InvalidWebhook("'event' must be a string")
    link_event = LINK_EVENTS.get(event)
    if link_event is None:
        return _ignored(event, data, delivery_id)
    fields = validated(BotEvent, data)
    return WebhookEvent(
        delivery_id=delivery_id or fields.id,
        event=link_event,
        conversation_id=fields.conversation_id,
        session_id=fields.session_id,
        user_id=fields.user_id,
        email=fields.email,
    )


def _encode(payload: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        # The same payload would fail on every retry.
        raise PermanentDeliveryError(f"the note cannot be encoded as JSON: {exc}") from exc
    return text.encode()


def _response_id(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    note_id = data.get("id")
    if isinstance(note_id, bool) or not isinstance(note_id, str | int):
        return None
    return str(note_id) or None


def note_payload(note: Note) -> dict[str, Any]:
    """The JSON document a bot receives for one note."""
    return {
        "type": "note",
        "product_id": note.product_id,
        "session_id": note.session_id,
        "conversation_id": note.conversation_id,
        "kind": "actions" if note.kind in ("prelink", "postlink") else "summary",
        "body": note.body,
        "actions": [dict(action) for action in note.actions],
    }


class HttpConfig(PlatformSettings):
    """``[products.<id>.http]``."""

    url: str
    redact_url: str | None = None
    signing_secret: str
    webhook_secret: str

    _secrets = field_validator("signing_secret", "webhook_secret")(whsec_value)
    _urls = field_validator("url", "redact_url")(http_url)


class HttpPlatform(Platform):
    """Talks to a self-hosted bot over signed JSON webhooks."""

    name = "http"
    config_model = HttpConfig

    def __init__(self, product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        super().__init__(product, client, clock)
        self.config = product.settings_of(HttpConfig)
        self._webhook_key = decode_whsec(self.config.webhook_secret)
        self._signing_key = decode_whsec(self.config.signing_secret)

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        verify_webhook(headers, body, key=self._webhook_key, now=self.clock.now())

    async def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        return parse_bot_event(body, headers.get("webhook-id"))

    async def post_note(self, note: Note) -> str | None:
        response = await self._post_signed(
            self.config.url, note_payload(note), msg_id=note.delivery_id
        )
        return _response_id(response)

    @property
    def redacts(self) -> bool:
        return self.config.redact_url is not None

    async def redact_note(self, conversation_id: str, note_id: str) -> None:
        if self.config.redact_url is None:
            return
        payload = {"conversation_id": conversation_id, "note_id": note_id}
        await self._post_signed(self.config.redact_url, payload, msg_id=f"redact_{note_id}")

    async def _post_signed(
        self, url: str, payload: Mapping[str, Any], *, msg_id: str
    ) -> httpx.Response:
        body = _encode(payload)
        signature = standard_webhook_headers(
            self._signing_key, msg_id=msg_id, timestamp=int(self.clock.now()), body=body
        )
        headers = {"content-type": "application/json", **signature}
        request = self.client.build_request("POST", url, content=body, headers=headers)
        return await self.send(request)
