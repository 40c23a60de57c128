"""Zendesk adapter: signed webhooks in, private ticket comments out.

Webhooks are verified with ``X-Zendesk-Webhook-Signature`` (base64 HMAC-SHA256 of the
``X-Zendesk-Webhook-Signature-Timestamp`` value followed by the raw body) and a 5 minute replay
window. Deliveries are deduplicated by what the signature covers: the event's ``id``, else a
digest of the signed timestamp and body (the invocation id header is unsigned, so a replay could
change it). Two bodies are understood:

Event subscriptions (a webhook subscribed to Zendesk ticket events) are Zendesk's own JSON.
``zen:event-type:ticket.created`` links as NEW; ``zen:event-type:ticket.comment_added`` links as
REPLY_EXISTING only when the comment's author is the ticket's requester and not staff, so agents'
comments and the private notes this bridge posts are ignored; every other type is ignored. The
requester (``detail.requester_id``) is resolved to an external id and email with
``GET /api/v2/users/{id}.json``, cached for a while.

Trigger or automation webhooks carry a JSON body the Zendesk admin writes::

    {
      "event": "ticket.created",
      "ticket_id": "{{ticket.id}}",
      "requester_external_id": "{{ticket.requester.external_id}}",
      "requester_email": "{{ticket.requester.email}}",
      "session_id": "{{ticket.ticket_field_<id>}}"
    }

``event`` is ``ticket.created`` (NEW) or ``ticket.comment_added`` / ``ticket.updated``
(REPLY_EXISTING: the trigger's conditions must keep it to the requester's own updates); any other
value is ignored. ``ticket_id`` (a string or a number) is required; the other fields are optional.
A value Zendesk rendered empty or left unrendered (still holding ``{{`` or ``}}``) counts as
absent, and so does a ``session_id`` outside ``[A-Za-z0-9._:-]{1,128}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Self
from urllib.parse import quote

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    field_validator,
    model_validator,
)

from app.clock import Clock
from app.domain import LinkEvent, Note, WebhookEvent
from app.models import ConversationId, is_session_id
from app.platforms.base import (
    ExpiringCache,
    InvalidWebhook,
    Platform,
    WebhookRejected,
    body_id,
    load_json_object,
    validated,
)
from app.products import PlatformSettings, ProductConfig, http_url, not_blank, secret_value
from app.security import MAX_SIGNATURE_HEADER_CHARS, equals

SIGNATURE_HEADER = "x-zendesk-webhook-signature"
TIMESTAMP_HEADER = "x-zendesk-webhook-signature-timestamp"
REPLAY_WINDOW_S = 300.0
MAX_TIMESTAMP_CHARS = 64
MAX_FIELD_CHARS = 512

EVENT_TYPE_PREFIX = "zen:event-type:"
SUBSCRIPTION_EVENTS: Mapping[str, LinkEvent] = {
    "zen:event-type:ticket.created": LinkEvent.NEW,
    "zen:event-type:ticket.comment_added": LinkEvent.REPLY_EXISTING,
}
TRIGGER_EVENTS: Mapping[str, LinkEvent] = {
    "ticket.created": LinkEvent.NEW,
    "ticket.comment_added": LinkEvent.REPLY_EXISTING,
    "ticket.updated": LinkEvent.REPLY_EXISTING,
}

REQUESTER_CACHE_ENTRIES = 10_000
REQUESTER_CACHE_TTL_S = 600.0
# Zendesk gives up on a webhook after about 12 s: answer (503, so it retries) well before that.
LOOKUP_TIMEOUT_S = 5.0

_EVENT_NAME_PREVIEW_CHARS = 64


def zendesk_signature(secret: str, *, timestamp: str, body: bytes) -> str:
    """base64(HMAC-SHA256(secret, timestamp + body)), as Zendesk signs its webhooks."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _timestamp_seconds(raw: str) -> float:
    try:
        when = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise WebhookRejected("X-Zendesk-Webhook-Signature-Timestamp is not ISO 8601") from exc
    if when.tzinfo is None:
        raise WebhookRejected("X-Zendesk-Webhook-Signature-Timestamp has no time zone")
    return when.timestamp()


def verify_zendesk_webhook(
    headers: Mapping[str, str], body: bytes, *, secret: str, now: float
) -> None:
    """Check a Zendesk webhook's signature and replay window; raise WebhookRejected."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise WebhookRejected(
            "X-Zendesk-Webhook-Signature and X-Zendesk-Webhook-Signature-Timestamp are required"
        )
    if len(timestamp) > MAX_TIMESTAMP_CHARS:
        raise WebhookRejected("X-Zendesk-Webhook-Signature-Timestamp is too long")
    if len(signature) > MAX_SIGNATURE_HEADER_CHARS:
        raise WebhookRejected("X-Zendesk-Webhook-Signature is too long")
    if abs(now - _timestamp_seconds(timestamp)) > REPLAY_WINDOW_S:
        raise WebhookRejected(
            "X-Zendesk-Webhook-Signature-Timestamp is outside the 5 minute window"
        )
    expected = zendesk_signature(secret, timestamp=timestamp, body=body)
    if not equals(signature.strip(), expected):
        raise WebhookRejected("X-Zendesk-Webhook-Signature does not match the body")


# --- webhook bodies ---


def _id_text(value: Any) -> Any:
    # Zendesk ids are strings in event payloads but numbers in the REST API and in triggers
    # written without quotes.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _rendered(value: Any) -> Any:
    """A trigger placeholder's value, or None when Zendesk left it empty or unrendered."""
    value = _id_text(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or "{{" in value or "}}" in value or len(value) > MAX_FIELD_CHARS:
        return None
    return value


def _session_id(value: Any) -> Any:
    value = _rendered(value)
    return value if is_session_id(value) else None


ZendeskId = Annotated[ConversationId, BeforeValidator(_id_text)]
Rendered = Annotated[str | None, BeforeValidator(_rendered)]
RenderedTicketId = Annotated[ConversationId, BeforeValidator(_rendered)]
RenderedSessionId = Annotated[str | None, BeforeValidator(_session_id)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CommentAuthor(_Lenient):
    """``event.comment.author`` of a ``ticket.comment_added`` event."""

    id: ZendeskId | None = None
    is_staff: bool = False


class Comment(_Lenient):
    """``event.comment`` of a ``ticket.comment_added`` event."""

    author: CommentAuthor | None = None


class EventData(_Lenient):
    """The ``event`` object of a ticket event."""

    comment: Comment | None = None


class TicketDetail(_Lenient):
    """The ticket (``detail``) of a ticket event."""

    id: ZendeskId
    requester_id: ZendeskId | None = None


class TicketEvent(_Lenient):
    """A Zendesk event-subscription webhook for a ticket."""

    type: str
    detail: TicketDetail
    event: EventData | None = None


class TriggerBody(_Lenient):
    """The body of a trigger or automation webhook, in the format this module documents."""

    event: str
    ticket_id: RenderedTicketId
    requester_external_id: Rendered = None
    requester_email: Rendered = None
    session_id: RenderedSessionId = None


def signed_delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    """A delivery id only the signer can make: the digest of the signed timestamp and body.

    ``X-Zendesk-Webhook-Invocation-Id`` is not covered by the signature, so a replay inside the
    5 minute window could carry a fresh one; the signed material cannot change.
    """
    signed = headers.get(TIMESTAMP_HEADER, "").encode() + b"\x1f" + body
    return "sig:" + hashlib.sha256(signed).hexdigest()


def _ignored(delivery_id: str | None, reason: str, ticket_id: str | None = None) -> WebhookEvent:
    return WebhookEvent(
        delivery_id=delivery_id, event=None, conversation_id=ticket_id, reason=reason
    )


def _not_eligible(name: str) -> str:
    return f"event {name[:_EVENT_NAME_PREVIEW_CHARS]!r} is not link-eligible"


def _comment_by_requester(event: TicketEvent) -> bool:
    comment = event.event.comment if event.event else None
    author = comment.author if comment else None
    if author is None or author.id is None or author.is_staff:
        return False
    return author.id == event.detail.requester_id


def parse_trigger(data: Mapping[str, Any], delivery_id: str | None) -> WebhookEvent:
    """Read a trigger body (see the module docstring)."""
    name = data.get("event")
    if not isinstance(name, str):
        raise InvalidWebhook("'event' must be a string")
    link_event = TRIGGER_EVENTS.get(name)
    if link_event is None:
        return _ignored(delivery_id, _not_eligible(name))
    trigger = validated(TriggerBody, data, what="Zendesk webhook body")
    return WebhookEvent(
        delivery_id=delivery_id,
        event=link_event,
        conversation_id=trigger.ticket_id,
        session_id=trigger.session_id,
        user_id=trigger.requester_external_id,
        email=trigger.requester_email,
    )


# --- requester lookups ---


@dataclass(frozen=True, slots=True)
class Requester:
    """What a Zendesk user id means for finding a session."""

    external_id: str | None
    email: str | None


def _optional_text(value: Any) -> str | None:
    value = _id_text(value)
    return value if isinstance(value, str) and value else None


def requester_from(response: httpx.Response) -> Requester:
    """The external id and email of a Show User response (absent fields are None)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    user = data.get("user") if isinstance(data, dict) else None
    if not isinstance(user, dict):
        return Requester(None, None)
    return Requester(_optional_text(user.get("external_id")), _optional_text(user.get("email")))


# --- notes ---


def authorization(config: ZendeskConfig) -> str:
    """The Authorization header value: OAuth bearer when configured, else API token basic auth."""
    if config.oauth_token:
        return f"Bearer {config.oauth_token}"
    credentials = f"{config.email}/token:{config.api_token}"
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def comment_id(response: httpx.Response) -> str | None:
    """The id of the ``Comment`` event in an Update Ticket response's audit, if any."""
    try:
        data = response.json()
    except ValueError:
        return None
    audit = data.get("audit") if isinstance(data, dict) else None
    events = audit.get("events") if isinstance(audit, dict) else None
    if not isinstance(events, list):
        return None
    for event in events:
        if isinstance(event, dict) and event.get("type") == "Comment":
            return _optional_text(event.get("id"))
    return None


class ZendeskConfig(PlatformSettings):
    """``[products.<id>.zendesk]``."""

    subdomain: str | None = None
    email: str | None = None
    api_token: str | None = None
    oauth_token: str | None = None
    webhook_secret: str
    api_base: str | None = None

    _non_empty = field_validator("email")(not_blank)
    _secrets = field_validator("api_token", "oauth_token", "webhook_secret")(secret_value)
    _urls = field_validator("api_base")(http_url)

    @model_validator(mode="after")
    def _check_auth_and_base(self) -> Self:
        if self.api_base is None and not self.subdomain:
            raise ValueError("set subdomain or api_base")
        if self.oauth_token is None and not (self.email and self.api_token):
            raise ValueError("set email and api_token, or oauth_token")
        return self

    @property
    def base_url(self) -> str:
        return self.api_base or f"https://{self.subdomain}.zendesk.com"


class ZendeskPlatform(Platform):
    """Links tickets from signed Zendesk webhooks and posts notes as private comments."""

    name = "zendesk"
    config_model = ZendeskConfig
    # Zendesk allows 200 (Team) to 700 (Enterprise) requests a minute per account.
    default_notes_per_minute = 100

    def __init__(self, product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        super().__init__(product, client, clock)
        self.config = product.settings_of(ZendeskConfig)
        self.base_url = self.config.base_url.rstrip("/")
        self.lookup_timeout_s = LOOKUP_TIMEOUT_S
        self.requesters: ExpiringCache[str, Requester] = ExpiringCache(
            max_entries=REQUESTER_CACHE_ENTRIES, ttl_s=REQUESTER_CACHE_TTL_S
        )
        self._headers = {"authorization": authorization(self.config), "accept": "application/json"}

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        verify_zendesk_webhook(
            headers, body, secret=self.config.webhook_secret, now=self.clock.now()
        )

    async def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Read an event-subscription or trigger body; may look the requester up (see module)."""
        delivery_id = signed_delivery_id(headers, body)
        data = load_json_object(body)
        kind = data.get("type")
        if isinstance(kind, str) and kind.startswith(EVENT_TYPE_PREFIX):
            # An event's own id is signed too, and stays the same when Zendesk re-signs a retry.
            return await self._parse_subscription(kind, data, body_id(data) or delivery_id)
        if "event" in data:
            return parse_trigger(data, delivery_id)
        raise InvalidWebhook(
            "expected a Zendesk event ('type': 'zen:event-type:…') or a trigger body ('event')"
        )

    async def post_note(self, note: Note) -> str | None:
        url = f"{self.base_url}/api/v2/tickets/{quote(note.conversation_id, safe='')}.json"
        payload = {"ticket": {"comment": {"body": note.body, "public": False}}}
        request = self.client.build_request("PUT", url, json=payload, headers=self._headers)
        return comment_id(await self.send(request))

    async def redact_note(self, conversation_id: str, note_id: str) -> None:
        """A no-op: redacting a comment needs Agent Workspace permissions a bridge rarely has."""

    async def _parse_subscription(
        self, kind: str, data: Mapping[str, Any], delivery_id: str | None
    ) -> WebhookEvent:
        link_event = SUBSCRIPTION_EVENTS.get(kind)
        if link_event is None:
            return _ignored(delivery_id, _not_eligible(kind))
        event = validated(TicketEvent, data, what="Zendesk webhook body")
        ticket_id = event.detail.id
        if link_event is LinkEvent.REPLY_EXISTING and not _comment_by_requester(event):
            return _ignored(delivery_id, "the comment is not the requester's", ticket_id)
        requester = await self._requester(event.detail.requester_id)
        return WebhookEvent(
            delivery_id=delivery_id,
            event=link_event,
            conversation_id=ticket_id,
            user_id=requester.external_id,
            email=requester.email,
        )

    async def _requester(self, user_id: str | None) -> Requester:
        if user_id is None:
            return Requester(None, None)
        return await self.lookup(
            self.requesters,
            user_id,
            lambda: self._fetch_requester(user_id),
            found=lambda r: bool(r.external_id or r.email),
        )

    async def _fetch_requester(self, user_id: str) -> Requester:
        """Show User; a failure raises a DeliveryError, which the route answers with a 503."""
        url = f"{self.base_url}/api/v2/users/{quote(user_id, safe='')}.json"
        request = self.client.build_request("GET", url, headers=self._headers)
        response = await self.read_resource(
            request, timeout_s=self.lookup_timeout_s, what="Zendesk user lookup"
        )
        # A deleted user never comes back: there is nobody to link by.
        return Requester(None, None) if response is None else requester_from(response)
