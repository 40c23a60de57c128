"""``POST /posthog/{product_id}``: PostHog's own events, from its HTTP Webhook destination.

The destination posts one event a request, ``{"event": {...}, "person": {...}}`` (an array of up
to 100 of them is accepted too). Each event the product keeps (``[posthog] events``) and that
carries a ``$session_id`` becomes one action of that session, described by
``app.posthog.describe``; it is stored like an ingested batch of one action, with its own replay
record derived from the event's ``uuid``, so a redelivered event is counted, not stored twice.
For a product with ``replay_links`` and no configured ``project_url``, the body's ``project.url``
is kept for the replay link of the at-link flush note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import from_json

from app import metrics, openapi
from app.api.deps import json_body, lookup_product, services_of
from app.api.errors import ApiError
from app.api.ingest import accepted_answer, count_intake, count_stored
from app.auth import Credential
from app.models import (
    MAX_DESCRIPTION_CHARS,
    MAX_PAYLOADS_PER_REQUEST,
    MILLISECONDS_THRESHOLD,
    ActionsPayload,
    Intake,
    PosthogResponse,
    is_session_id,
    validation_fields,
)
from app.posthog.describe import current_url, describe, event_time, session_id, string_field
from app.products import PosthogConfig, ProductConfig
from app.security import SignatureError, equals, verify_standard_webhook
from app.store.redis_store import IngestOutcome, RedisStore, StoreError, StoreUnavailable

# Served as a plain route by BridgeApp.include_plain: PostHog posts one event per request.
router = APIRouter(tags=["posthog"], generate_unique_id_function=openapi.operation_id)
log = structlog.get_logger(__name__)


# --- the body, for the OpenAPI document ----------------------------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class PosthogEvent(_Doc):
    """The fields read from an event; everything else is accepted and ignored."""

    uuid: str | None = None
    event: str | None = None
    distinct_id: str | None = None
    properties: dict[str, Any] | None = None
    elements_chain: str | None = None
    timestamp: str | None = None
    url: str | None = None


class PosthogPerson(_Doc):
    id: str | None = None
    name: str | None = None
    properties: dict[str, Any] | None = None
    url: str | None = None


class PosthogWebhook(_Doc):
    """The HTTP Webhook destination's default body: the event, and the person who did it."""

    event: PosthogEvent
    person: PosthogPerson | None = None
    project: dict[str, Any] | None = None


_WEBHOOK = openapi.schema_ref(PosthogWebhook)
POSTHOG_BODY = openapi.request_body(
    {
        "oneOf": [
            _WEBHOOK,
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PAYLOADS_PER_REQUEST,
                "items": _WEBHOOK,
            },
        ]
    },
    description="One PostHog event as the HTTP Webhook destination sends it (`event`, and "
    "optionally `person` and `project`), or an array of them. An event whose name is not in "
    "the product's `events`, or that has no `properties.$session_id`, is counted as ignored.",
)

UNAUTHORIZED = ApiError(
    401,
    "unauthorized",
    "a valid Standard Webhooks signature (the [posthog] webhook_secret) or the configured "
    "static header is required",
)


# --- what a request holds ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kept:
    """An event that becomes an action: its payload, and its ``uuid`` when it has one."""

    payload: ActionsPayload
    uuid: str | None


def _invalid(fields: list[dict[str, str]], detail: str = "the body failed validation") -> ApiError:
    return ApiError(422, "invalid_payload", detail, fields=fields)


def _items(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The request's items (each an object with an ``event`` object) and whether the body is an
    array; raises a 422 ApiError naming every problem."""
    try:
        document = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise _invalid([{"loc": "body", "message": f"is not JSON: {exc}"}]) from None
    if isinstance(document, dict):
        items, is_array = [document], False
    elif isinstance(document, list):
        items, is_array = document, True
        if not 1 <= len(items) <= MAX_PAYLOADS_PER_REQUEST:
            message = f"must hold 1 to {MAX_PAYLOADS_PER_REQUEST} events, not {len(items)}"
            raise _invalid([{"loc": "body", "message": message}])
    else:
        message = "must be an object or an array of objects"
        raise _invalid([{"loc": "body", "message": message}])
    problems = []
    for i, item in enumerate(items):
        prefix = f"[{i}]" if is_array else ""
        if not isinstance(item, dict):
            problems.append({"loc": prefix or "body", "message": "must be an object"})
        elif not isinstance(item.get("event"), dict):
            loc = f"{prefix}.event" if prefix else "event"
            problems.append({"loc": loc, "message": "must be an object (the PostHog event)"})
    if problems:
        raise _invalid(problems)
    return [dict(item) for item in items], is_array


def _start(event: Mapping[str, Any]) -> float | None:
    """The event's time in seconds; None (the receive time stands in) when it is missing or
    outside what an action's ``timestamp_start`` can hold as seconds."""
    moment = event_time(event)
    return moment if moment is not None and 0 < moment < MILLISECONDS_THRESHOLD else None


def _payload(
    item: Mapping[str, Any], event: Mapping[str, Any], sid: str, intake: Intake
) -> ActionsPayload:
    described = describe(event)
    url = current_url(event)
    action = {
        "description": described.description[:MAX_DESCRIPTION_CHARS],
        "type": described.type,
        "timestamp_start": _start(event),
        "canonical_url": url,
        "raw_url": url,
    }
    person = item.get("person")
    values = {
        "session_id": sid,
        "user_id": string_field(event, "distinct_id"),
        "email": string_field(
            person.get("properties") if isinstance(person, dict) else None, "email"
        ),
        "actions": [action],
    }
    # Validated through the model, so every ingest limit and truncation applies.
    return ActionsPayload.model_validate(values, context=intake)


def _kept_events(
    product: ProductConfig,
    posthog: PosthogConfig,
    items: list[dict[str, Any]],
    is_array: bool,
    intake: Intake,
) -> tuple[list[_Kept], int]:
    """The events that become actions, and how many were ignored."""
    kept: list[_Kept] = []
    ignored = 0
    for i, item in enumerate(items):
        event: Mapping[str, Any] = item["event"]
        if not posthog.keeps(string_field(event, "event")):
            metrics.POSTHOG_EVENTS.labels(product.id, "ignored_event").inc()
            ignored += 1
            continue
        sid = session_id(event)
        if sid is None or not is_session_id(sid):
            metrics.POSTHOG_EVENTS.labels(product.id, "no_session").inc()
            ignored += 1
            continue
        try:
            payload = _payload(item, event, sid, intake)
        except ValidationError as exc:  # not expected: every value is checked above
            prefix = f"[{i}].event" if is_array else "event"
            fields = [
                {"loc": f"{prefix}.{f['loc']}", "message": f["message"]}
                for f in validation_fields(exc)
            ]
            raise _invalid(fields) from exc
        kept.append(_Kept(payload, string_field(event, "uuid")))
    return kept, ignored


MAX_PROJECT_URL_CHARS = 2048


def _is_project_url(url: str) -> bool:
    """An http(s) URL with a host and nothing that could change the note's header: no
    whitespace or control characters, no query or fragment."""
    if len(url) > MAX_PROJECT_URL_CHARS or not url.isprintable() or " " in url:
        return False
    if not url.startswith(("https://", "http://")):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed IPv6 host
        return False
    return bool(parts.netloc) and not (parts.query or parts.fragment)


def _project_url(items: list[dict[str, Any]]) -> str | None:
    """The request's PostHog project URL (``project.url``, the last valid one), if any."""
    for item in reversed(items):
        url = string_field(item.get("project"), "url")
        if url is not None and _is_project_url(url):
            return url
    return None


async def _save_project_url(
    store: RedisStore,
    product: ProductConfig,
    posthog: PosthogConfig,
    items: list[dict[str, Any]],
    now: float,
) -> None:
    """Keep the project URL for replay links when the product wants them and configures none.

    Called once the events are stored, and best effort: a failure is logged, and the request is
    still accepted (its events are durable); the next event with the URL writes it again."""
    if not posthog.replay_links or posthog.project_url is not None:
        return
    url = _project_url(items)
    if url is None:
        return
    try:
        await store.save_project_url(product.id, url, now=now)
    except (StoreUnavailable, StoreError) as exc:
        log.warning("posthog_project_url_not_saved", error=str(exc))


# --- verification and dedupe ---------------------------------------------------------------------


def _credential(
    posthog: PosthogConfig, headers: Mapping[str, str], body: bytes, now: float
) -> Credential | None:
    """The request's proof of coming from the destination: a Standard Webhooks signature with
    ``webhook_secret``, or the static header; either one when both are configured."""
    key = posthog.webhook_key
    if key is not None and "webhook-signature" in headers:
        try:
            msg_id = verify_standard_webhook(headers, key=key, body=body, now=now)
        except SignatureError:
            pass
        else:
            return Credential("webhook", msg_id)
    if posthog.header_name is not None and posthog.header_secret is not None:
        received = headers.get(posthog.header_name)
        if received and equals(received, posthog.header_secret):
            return Credential("token")
    return None


def event_replay_field(product_id: str, uuid: str) -> bytes:
    """The store's replay record of one PostHog event: redelivered, it is a duplicate."""
    key = f"{product_id}\x1fposthog\x1f{uuid}".encode()
    return hashlib.blake2b(key, digest_size=12, person=b"cb-posthog").digest()


def _replay_fields(
    product_id: str, credential: Credential, body: bytes, kept: list[_Kept]
) -> list[bytes]:
    """One record per payload: the event's ``uuid``, else the request's record at its place."""
    request_fields = credential.replay_fields(product_id, body, len(kept))
    return [
        event_replay_field(product_id, k.uuid) if k.uuid is not None else fallback
        for k, fallback in zip(kept, request_fields, strict=True)
    ]


# --- the route -----------------------------------------------------------------------------------


def _posthog_section(product: ProductConfig) -> PosthogConfig:
    if product.posthog is None:
        raise ApiError(
            404,
            "posthog_not_configured",
            f"product {product.id!r} has no [posthog] section, so it takes no PostHog events",
        )
    return product.posthog


def _count(product: ProductConfig, outcomes: list[IngestOutcome]) -> tuple[int, int]:
    """Count the stored outcomes; returns (actions accepted, events already seen)."""
    accepted = duplicates = 0
    for outcome in outcomes:
        accepted += outcome.accepted
        count_stored(product, outcome, via="posthog")
        seen = bool(outcome.replayed or outcome.duplicates)
        duplicates += seen
        metrics.POSTHOG_EVENTS.labels(product.id, "duplicate" if seen else "accepted").inc()
    return accepted, duplicates


@router.post(
    "/posthog/{product_id}",
    status_code=202,
    response_model=PosthogResponse,
    responses=openapi.error_responses(
        openapi.UNKNOWN_PRODUCT,
        openapi.POSTHOG_NOT_CONFIGURED,
        *openapi.BODY_ERRORS,
        openapi.UNAUTHORIZED,
        openapi.INVALID_PAYLOAD,
        *openapi.STORE_ERRORS,
    ),
    openapi_extra=openapi.operation(
        openapi.path_parameter("product_id", "Product Id"),
        POSTHOG_BODY,
        openapi.security(*openapi.POSTHOG_CREDENTIALS),
    ),
)
async def receive_posthog(request: Request) -> Response:
    """Turn PostHog events into actions of their sessions; 202 once they are durable."""
    # A plain route resolves what would be its dependencies itself, in the same order.
    services = services_of(request)
    product = lookup_product(services, request.path_params["product_id"])
    posthog = _posthog_section(product)
    body = await json_body(request, services)
    now = services.clock.now()
    credential = _credential(posthog, request.headers, body, now)
    if credential is None:
        metrics.BATCHES_REJECTED.labels(product.id, "unauthorized").inc()
        raise UNAUTHORIZED
    items, is_array = _items(body)
    intake = Intake(received_at=now)
    kept, ignored = _kept_events(product, posthog, items, is_array, intake)
    if not kept:
        return accepted_answer(PosthogResponse(accepted=0, duplicates=0, ignored=ignored))
    if len(kept) == 1:
        structlog.contextvars.bind_contextvars(session_id=kept[0].payload.sid)
    outcomes = await services.store.ingest(
        product,
        [k.payload for k in kept],
        now=now,
        replay_fields=_replay_fields(product.id, credential, body, kept),
    )
    count_intake(intake)
    accepted, duplicates = _count(product, outcomes)
    # Before the worker hears of the work: a flush this request makes due finds the URL.
    await _save_project_url(services.store, product, posthog, items, now)
    await services.work_scheduled((o.due_at, o.shard) for o in outcomes)
    return accepted_answer(
        PosthogResponse(accepted=accepted, duplicates=duplicates, ignored=ignored)
    )
