"""A chat platform that posts form-encoded webhooks and takes notes as JSON.

Its webhook is ``event=conversation.created&conversation_id=…&session_id=…`` with an
``X-Demo-Token`` header; a note is ``POST {url}`` with ``{"conversation_id", "text"}``, answered
``{"id": …}``. Everything it needs from the bridge is the plug-in contract in
``app.platforms.base`` and ``app.products``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qs

from pydantic import field_validator

from app.domain import LinkEvent, Note, WebhookEvent
from app.platforms.base import (
    InvalidWebhook,
    Platform,
    WebhookRejected,
    body_digest_id,
)
from app.products import PlatformSettings, http_url, secret_value
from app.security import equals

EVENTS = {"conversation.created": LinkEvent.NEW, "conversation.replied": LinkEvent.REPLY_EXISTING}
FORM = "application/x-www-form-urlencoded"


class DemoConfig(PlatformSettings):
    """``[products.<id>.demo]``."""

    url: str
    webhook_secret: str

    _urls = field_validator("url")(http_url)
    _secrets = field_validator("webhook_secret")(secret_value)


class DemoPlatform(Platform):
    name = "demo"
    config_model = DemoConfig
    default_notes_per_minute = 600
    webhook_media_type = FORM

    def accepts_webhook(self, content_type: str) -> bool:
        return content_type.split(";", 1)[0].strip().lower() == FORM

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        config = self.product.settings_of(DemoConfig)
        if not equals(headers.get("x-demo-token", ""), config.webhook_secret):
            raise WebhookRejected("missing or wrong X-Demo-Token")

    async def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        try:
            form = {k: v[0] for k, v in parse_qs(body.decode(), strict_parsing=True).items()}
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidWebhook(f"the body is not a form: {exc}") from exc
        event = EVENTS.get(form.get("event", ""))
        if event is None:
            return WebhookEvent(delivery_id=body_digest_id(body), event=None, reason="not a link")
        if not form.get("conversation_id"):
            raise InvalidWebhook("conversation_id is required")
        return WebhookEvent(
            delivery_id=body_digest_id(body),
            event=event,
            conversation_id=form["conversation_id"],
            session_id=form.get("session_id"),
            user_id=form.get("user_id"),
        )

    async def post_note(self, note: Note) -> str | None:
        config = self.product.settings_of(DemoConfig)
        payload = {"conversation_id": note.conversation_id, "text": note.body}
        request = self.client.build_request("POST", config.url, json=payload)
        response = await self.send(request)
        answer = response.json()
        return str(answer["id"]) if isinstance(answer, dict) and "id" in answer else None
