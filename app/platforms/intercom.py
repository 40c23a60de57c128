"""Intercom adapter: signed notification webhooks in, admin notes out."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import httpx
from pydantic import field_validator

from app.clock import Clock
from app.domain import LinkEvent, Note, WebhookEvent
from app.models import is_session_id
from app.notes import to_html
from app.platforms.base import (
    MAX_WAIT_HINT_S,
    ExpiringCache,
    InvalidWebhook,
    PermanentDeliveryError,
    Platform,
    WebhookRejected,
    body_digest_id,
    body_id,
    load_json_object,
    retry_after_seconds,
)
from app.products import PlatformSettings, ProductConfig, http_url, not_blank, secret_value
from app.security import SignatureError, verify_prefixed_hex

SIGNATURE_HEADER = "x-hub-signature"
LINK_TOPICS: Mapping[str, LinkEvent] = {
    "conversation.user.created": LinkEvent.NEW,
    "conversation.user.replied": LinkEvent.REPLY_EXISTING,
}
# Only a customer's email identifies the session; an admin's, bot's or team's never does.
CONTACT_AUTHOR_TYPES = frozenset({"user", "lead", "contact"})
MAX_ID_CHARS = 256
MAX_IDENTITY_CHARS = 512
# Enough of an unknown topic to recognise it in a log without echoing a huge string.
_TOPIC_PREVIEW_CHARS = 64

# posthog-js's Intercom integration (``integrations: {intercom: true}``) writes the session's
# replay URL on the contact under this custom attribute: ``…/replay/<session id>``.
REPLAY_URL_ATTRIBUTE = "latestPosthogReplayURL"
MAX_REPLAY_URL_CHARS = 2048
CONTACT_CACHE_ENTRIES = 10_000
CONTACT_CACHE_TTL_S = 600.0
# Intercom waits 5 s for a webhook's answer: the contact read must leave time for the rest.
CONTACT_LOOKUP_TIMEOUT_S = 3.0


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, *, max_chars: int = MAX_IDENTITY_CHARS) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= max_chars:
        return value
    return None


def _identifier(value: Any, *, max_chars: int = MAX_IDENTITY_CHARS) -> str | None:
    """A string id; Intercom ids that arrive as JSON integers are converted."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _text(value, max_chars=max_chars)


def _delivery_id(envelope: Mapping[str, Any], body: bytes) -> str:
    return body_id(envelope) or body_digest_id(body)


def _ignored(topic: str, delivery_id: str) -> WebhookEvent:
    if topic == "ping":
        return WebhookEvent(delivery_id=delivery_id, event=None, reason="ping")
    preview = topic[:_TOPIC_PREVIEW_CHARS]
    reason = f"topic {preview!r} is not link-eligible"
    return WebhookEvent(delivery_id=delivery_id, event=None, reason=reason)


def _contacts(item: Mapping[str, Any]) -> Sequence[Any]:
    # 2.0 listed contacts directly; later versions wrap them in a contact.list object.
    contacts = item.get("contacts")
    if isinstance(contacts, dict):
        contacts = contacts.get("contacts")
    return contacts if isinstance(contacts, list) else []


def _first_contact(item: Mapping[str, Any]) -> Mapping[str, Any]:
    contacts = _contacts(item)
    return _object(contacts[0]) if contacts else {}


def conversation_parts(conversation: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The conversation's parts in Intercom's (chronological) order; malformed ones skipped."""
    parts = _object(conversation.get("conversation_parts")).get("conversation_parts")
    return [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []


def _contact_email(author: Any) -> str | None:
    author = _object(author)
    # A type that is not a string (a list, an object) would not even be hashable.
    if _text(author.get("type")) not in CONTACT_AUTHOR_TYPES:
        return None
    return _text(author.get("email"))


def _part_author_email(item: Mapping[str, Any]) -> str | None:
    emails = (_contact_email(part.get("author")) for part in conversation_parts(item))
    return next((email for email in emails if email), None)


def _email(item: Mapping[str, Any]) -> str | None:
    legacy_user = _object(item.get("user"))
    candidates = (
        _contact_email(_object(item.get("source")).get("author")),
        _part_author_email(item),
        _text(_first_contact(item).get("email")),
        _text(legacy_user.get("email")),
    )
    return next((email for email in candidates if email), None)


def _contact_id(item: Mapping[str, Any]) -> str | None:
    """Intercom's own id for the contact (API 2.x), or the 1.x user's ``id``."""
    contact_id = _identifier(_first_contact(item).get("id"), max_chars=MAX_ID_CHARS)
    return contact_id or _identifier(_object(item.get("user")).get("id"), max_chars=MAX_ID_CHARS)


def _user_id(item: Mapping[str, Any]) -> str | None:
    """The contact's external id (the PostHog distinct id); Intercom's own contact id is not."""
    external_id = _identifier(_first_contact(item).get("external_id"))
    return external_id or _identifier(_object(item.get("user")).get("user_id"))


def _session_id(item: Mapping[str, Any], attribute: str) -> str | None:
    value = _object(item.get("custom_attributes")).get(attribute)
    if is_session_id(value):
        return value
    return None


def _conversation_id(item: Mapping[str, Any]) -> str:
    conversation_id = _identifier(item.get("id"), max_chars=MAX_ID_CHARS)
    if conversation_id is None:
        raise InvalidWebhook("'data.item.id' must be a conversation id")
    return conversation_id


def parse_notification(body: bytes, *, session_attribute: str) -> WebhookEvent:
    """Read an Intercom notification_event (API 2.x or 1.x item shapes)."""
    envelope = load_json_object(body)
    delivery_id = _delivery_id(envelope, body)
    topic = envelope.get("topic")
    if not isinstance(topic, str):
        raise InvalidWebhook("'topic' must be a string")
    link_event = LINK_TOPICS.get(topic)
    if link_event is None:
        return _ignored(topic, delivery_id)
    item = _object(envelope.get("data")).get("item")
    if not isinstance(item, dict):
        raise InvalidWebhook(f"'data.item' must be an object for topic {topic!r}")
    return WebhookEvent(
        delivery_id=delivery_id,
        event=link_event,
        conversation_id=_conversation_id(item),
        session_id=_session_id(item, session_attribute),
        user_id=_user_id(item),
        email=_email(item),
        contact_id=_contact_id(item),
    )


def session_from_replay_url(url: Any) -> str | None:
    """The session id in a PostHog replay URL: the path segment after ``replay``
    (``https://us.posthog.com/project/1/replay/<id>?t=20``); None when there is none."""
    if not isinstance(url, str) or len(url) > MAX_REPLAY_URL_CHARS:
        return None
    try:
        segments = urlsplit(url.strip()).path.split("/")
    except ValueError:
        return None
    for name, value in itertools.pairwise(segments):
        if name == "replay":
            session_id = unquote(value)
            return session_id if is_session_id(session_id) else None
    return None


@dataclass(frozen=True, slots=True)
class ContactSession:
    """What a contact read found: the session of the contact's replay URL, if any."""

    session_id: str | None


def contact_session(response: httpx.Response) -> ContactSession:
    """The session named by a Get Contact response's ``latestPosthogReplayURL``."""
    attributes = _object(_json_object(response).get("custom_attributes"))
    return ContactSession(session_from_replay_url(attributes.get(REPLAY_URL_ATTRIBUTE)))


def note_part_id(conversation: Mapping[str, Any], *, admin_id: str) -> str | None:
    """The id of the last ``note`` part authored by ``admin_id``, if the response has one."""
    for part in reversed(conversation_parts(conversation)):
        author_id = _identifier(_object(part.get("author")).get("id"))
        if part.get("part_type") == "note" and author_id == admin_id:
            return _identifier(part.get("id"), max_chars=MAX_ID_CHARS)
    return None


def rate_limit_wait_s(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (Unix seconds); ``Retry-After`` when it is absent."""
    reset = headers.get("x-ratelimit-reset", "").strip()
    if not (reset.isascii() and reset.isdigit()):
        return retry_after_seconds(headers.get("retry-after"), now=now)
    return min(max(0.0, int(reset) - now), MAX_WAIT_HINT_S)


def _path_segment(value: str, *, what: str = "conversation") -> str:
    if value in ("", ".", ".."):
        raise PermanentDeliveryError(f"{value!r} is not an Intercom {what} id")
    return quote(value, safe="")


def _json_object(response: httpx.Response) -> Mapping[str, Any]:
    try:
        return _object(response.json())
    except ValueError:
        return {}


class IntercomConfig(PlatformSettings):
    """``[products.<id>.intercom]``."""

    access_token: str
    admin_id: str
    client_secret: str
    api_base: str = "https://api.intercom.io"
    api_version: str = "2.14"
    body_format: Literal["html", "text"] = "html"

    _non_empty = field_validator("admin_id")(not_blank)
    _secrets = field_validator("access_token", "client_secret")(secret_value)
    _urls = field_validator("api_base")(http_url)

    @property
    def inbound_secret(self) -> str:
        return self.client_secret  # Intercom signs its webhooks with the app's client secret


class IntercomPlatform(Platform):
    """Links sessions from Intercom conversation webhooks and posts notes as an admin."""

    name = "intercom"
    config_model = IntercomConfig
    # Intercom allows 10 000 calls a minute per app, shared with the workspace's integrations.
    default_notes_per_minute = 1000

    def __init__(self, product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        super().__init__(product, client, clock)
        self.config = product.settings_of(IntercomConfig)
        self._base_url = self.config.api_base.rstrip("/")
        self.contacts: ExpiringCache[str, ContactSession] = ExpiringCache(
            max_entries=CONTACT_CACHE_ENTRIES, ttl_s=CONTACT_CACHE_TTL_S
        )
        self._headers = {
            "authorization": f"Bearer {self.config.access_token}",
            "intercom-version": self.config.api_version,
            "accept": "application/json",
            "content-type": "application/json",
        }

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        try:
            verify_prefixed_hex(
                headers.get(SIGNATURE_HEADER),
                secret=self.config.client_secret,
                body=body,
                algorithm="sha1",
            )
        except SignatureError as exc:
            raise WebhookRejected(f"invalid X-Hub-Signature: {exc}") from exc

    async def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        return parse_notification(body, session_attribute=self.product.session_attribute)

    async def post_note(self, note: Note) -> str | None:
        body = to_html(note.body) if self.config.body_format == "html" else note.body
        payload = {
            "message_type": "note",
            "type": "admin",
            "admin_id": self.config.admin_id,
            "body": body,
        }
        path = f"/conversations/{_path_segment(note.conversation_id)}/reply"
        response = await self._post(path, payload)
        return note_part_id(_json_object(response), admin_id=self.config.admin_id)

    @property
    def redacts(self) -> bool:
        return True

    async def redact_note(self, conversation_id: str, note_id: str) -> None:
        payload = {
            "type": "conversation_part",
            "conversation_id": conversation_id,
            "conversation_part_id": note_id,
        }
        await self._post("/conversations/redact", payload)

    async def find_session(self, event: WebhookEvent) -> str | None:
        """The session in the contact's ``latestPosthogReplayURL``, read with Get Contact and
        cached for 10 minutes (found or not). Raises a RetryableDeliveryError while Intercom
        asks us to wait, and a DeliveryError when the read fails."""
        contact_id = event.contact_id
        if contact_id is None:
            return None
        contact = await self.lookup(
            self.contacts,
            contact_id,
            lambda: self._read_contact(contact_id),
            found=lambda c: c.session_id is not None,
            wait_while_rate_limited=True,
        )
        return contact.session_id

    async def _read_contact(self, contact_id: str) -> ContactSession:
        url = f"{self._base_url}/contacts/{_path_segment(contact_id, what='contact')}"
        request = self.client.build_request("GET", url, headers=self._headers)
        response = await self.read_resource(
            request, timeout_s=CONTACT_LOOKUP_TIMEOUT_S, what="Intercom contact read"
        )
        # A deleted contact has no session to offer.
        return ContactSession(None) if response is None else contact_session(response)

    async def _post(self, path: str, payload: Mapping[str, Any]) -> httpx.Response:
        request = self.client.build_request(
            "POST", self._base_url + path, json=payload, headers=self._headers
        )
        return await self.send(request)

    def wait_hint_s(self, response: httpx.Response) -> float | None:
        """Intercom's 429 says when its window resets (``X-RateLimit-Reset``, Unix seconds)."""
        return rate_limit_wait_s(response.headers, now=self.clock.now())
