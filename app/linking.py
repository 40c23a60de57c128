"""Turning a platform's link event into a session link (docs/delivery.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from app.domain import LinkEvent, WebhookEvent
from app.platforms.base import DeliveryError, Platform
from app.products import ProductConfig
from app.store.redis_store import LinkOutcome, RedisStore

log = structlog.get_logger(__name__)

LinkStatus = Literal["linked", "already_linked", "pending_identity", "ignored", "duplicate"]


@dataclass(frozen=True, slots=True)
class LinkResult:
    status: LinkStatus
    session_id: str | None
    conversation_id: str | None
    due_at: float | None = None
    shard: int | None = None  # the due queue the session is in (for the worker's notice)


async def link_session(
    store: RedisStore,
    product: ProductConfig,
    *,
    session_id: str,
    conversation_id: str,
    event: LinkEvent | None,
    now: float,
    user_message: bool = False,
    delivery_id: str | None = None,
    replay_field: bytes = b"",
) -> LinkResult:
    outcome = await store.link(
        product,
        session_id=session_id,
        conversation_id=conversation_id,
        event=event,
        now=now,
        user_message=user_message,
        delivery_id=delivery_id,
        replay_field=replay_field,
    )
    return _result(product, session_id, conversation_id, event, outcome)


def _result(
    product: ProductConfig,
    session_id: str,
    conversation_id: str,
    event: LinkEvent | None,
    outcome: LinkOutcome,
) -> LinkResult:
    if outcome.status != "linked":
        return LinkResult(outcome.status, session_id, outcome.conversation_id)
    log.info(
        "link_created",
        product_id=product.id,
        session_id=session_id,
        conversation_id=conversation_id,
        link_event=event.value if event else "inferred",
        relinked=outcome.previous_conversation_id is not None,
    )
    return LinkResult("linked", session_id, conversation_id, outcome.due_at, outcome.shard)


async def link_from_webhook(
    store: RedisStore,
    product: ProductConfig,
    event: WebhookEvent,
    *,
    now: float,
    platform: Platform | None = None,
) -> LinkResult:
    """Find the event's session and link it: the webhook's explicit id, then the contact's
    latest session by user id or email, then what the platform itself knows of the contact
    (``Platform.find_session``). With no session known yet, the conversation waits for the
    contact's first batch. Each delivery is applied once: its id is recorded in the same store
    step as its effect.

    A failed platform read raises its DeliveryError only when it was the webhook's last
    chance (no user id or email to wait on); otherwise the conversation waits as usual."""
    conversation_id = event.conversation_id
    if event.event is None or not conversation_id:
        return LinkResult("ignored", event.session_id, conversation_id)
    if event.session_id is not None:
        return await _link_found(
            store,
            product,
            event,
            session_id=event.session_id,
            conversation_id=conversation_id,
            now=now,
        )
    waiting = bool(event.user_id or event.email)
    if waiting:
        found = await store.link_contact(
            product,
            user_id=event.user_id,
            email=event.email,
            conversation_id=conversation_id,
            event=event.event,
            now=now,
            delivery_id=event.delivery_id,
        )
        if found.status == "duplicate":
            return LinkResult("duplicate", None, conversation_id)
        if found.session_id is not None and found.link is not None:
            return _result(product, found.session_id, conversation_id, event.event, found.link)
    session_id = await _platform_session(platform, event, raise_errors=not waiting)
    if session_id is None:
        if not waiting:
            return LinkResult("ignored", None, conversation_id)
        log.info("link_pending_identity", conversation_id=conversation_id)
        return LinkResult("pending_identity", None, conversation_id)
    result = await _link_found(
        store, product, event, session_id=session_id, conversation_id=conversation_id, now=now
    )
    if waiting:
        await store.forget_contact_pending(
            product, user_id=event.user_id, email=event.email, conversation_id=conversation_id
        )
    return result


async def _link_found(
    store: RedisStore,
    product: ProductConfig,
    event: WebhookEvent,
    *,
    session_id: str,
    conversation_id: str,
    now: float,
) -> LinkResult:
    return await link_session(
        store,
        product,
        session_id=session_id,
        conversation_id=conversation_id,
        event=event.event,
        now=now,
        user_message=True,
        delivery_id=event.delivery_id,
    )


async def _platform_session(
    platform: Platform | None, event: WebhookEvent, *, raise_errors: bool
) -> str | None:
    if platform is None:
        return None
    try:
        return await platform.find_session(event)
    except DeliveryError as exc:
        log.warning("contact_lookup_failed", contact_id=event.contact_id, error=str(exc))
        if raise_errors:
            raise
        return None
