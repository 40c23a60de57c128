"""Console adapter: notes go to the log, for demos, dry runs and ``make run``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import httpx
import structlog

from app.clock import Clock
from app.domain import Note, WebhookEvent
from app.platforms.base import Platform, WebhookRejected
from app.platforms.http import parse_bot_event, verify_webhook
from app.products import ProductConfig
from app.security import decode_whsec

log = structlog.get_logger(__name__)


class ConsolePlatform(Platform):
    """Logs every note (with its full body) instead of posting it anywhere."""

    name = "console"

    def __init__(self, product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        super().__init__(product, client, clock)
        secret = product.console.webhook_secret if product.console is not None else None
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
