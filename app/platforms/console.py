"""Console adapter: notes go to the log, for demos, dry runs and ``make run``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import httpx
import structlog
from pydantic import field_validator

from app.clock import Clock
from app.domain import Note, WebhookEvent
from app.platforms.base import Platform, WebhookRejected
from app.platforms.http import parse_bot_event, verify_webhook
from app.products import PlatformSettings, ProductConfig, optional_whsec
from app.security import decode_whsec

log = structlog.get_logger(__name__)


class ConsoleConfig(PlatformSettings):
    webhook_secret: str | None = None

    _secrets = field_validator("webhook_secret")(optional_whsec)


class ConsolePlatform(Platform):
    """Logs every note (with its full body) instead of posting it anywhere."""

    name = "console"
    config_model = ConsoleConfig
    # A demo product (make run) may take unsigned webhooks and batches when it says so.
    allows_unauthenticated = True

    def __init__(self, product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        super().__init__(product, client, clock)
        config = product.settings if isinstance(product.settings, ConsoleConfig) else None
        secret = config.webhook_secret if config is not None else None
        self._webhook_key = decode_whsec(secret) if secret is not None else None

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        if self._webhook_key is not None:
            verify_webhook(headers, body, key=self._webhook_key, now=self.clock.now())
        elif not self.product.allow_unauthenticated:
            # An absent secret must never mean "accept all" unless the product opted in.
            raise WebhookRejected(
                "the console product has no webhook_secret and does not allow unauthenticated "
                "webhooks"
            )

    async def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        return parse_bot_event(body, headers.get("webhook-id"))

    async def post_note(self, note: Note) -> str:
        note_id = f"console_{uuid.uuid4().hex}"
        log.info(
            "note_posted",
            product_id=note.product_id,
            session_id=note.session_id,
            conversation_id=note.conversation_id,
            kind=note.kind,
            note_id=note_id,
            body=note.body,
        )
        return note_id
