"""Salesforce adapter: Service Cloud cases, linked from a Flow's callout, with notes as private
case comments.

Webhooks come from a record-triggered Flow's HTTP Callout action (or Apex), through a Named
Credential that adds the header ``X-Bridge-Token: <webhook_token>``; the token is compared in
constant time. The body is JSON::

    {
      "event": "case.created",            // or "case.comment_added"; anything else is ignored
      "case_id": "500Hs00001XyZaBIAV",    // required: a 15 or 18 character record id
      "session_id": "...",                // optional: e.g. a PostHog_Session_Id__c field
      "contact_external_id": "...",       // optional: the contact's external id (the user id)
      "contact_email": "...",             // optional
      "id": "..."                         // optional: the delivery id (else a digest of the body)
    }

``case.created`` links as NEW and ``case.comment_added`` as REPLY_EXISTING (the Flow's entry
conditions keep it to the customer's own comments). A 15-character case id is turned into its
18-character form, so both name one conversation. An empty optional field counts as absent, and
so does a ``session_id`` that is not a valid session id.

Notes are private ``CaseComment`` records (``IsPublished: false``), posted with an OAuth 2.0
client-credentials token: one per adapter (product), fetched by one call at a time however many
notes need it, and fetched again after ``token_ttl_s`` (Salesforce's answer carries no expiry) or
when Salesforce answers ``401 INVALID_SESSION_ID`` (then the call is retried once). A comment
holds 4000 bytes, so a longer note is split at line breaks into several comments, posted in
order; the note's id is their ids joined by ``,``, and redaction deletes each of them. If a
part fails, the parts already posted are deleted again (best effort), so a retry of the note
does not post them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import httpx
import structlog
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from app.clock import Clock
from app.domain import LinkEvent, Note, WebhookEvent
from app.models import is_session_id
from app.platforms.base import (
    ConversationNotFound,
    DeliveryError,
    InvalidWebhook,
    PermanentDeliveryError,
    Platform,
    RetryableDeliveryError,
    WebhookRejected,
    body_digest_id,
    body_id,
    load_json_object,
    validated,
)
from app.products import PlatformSettings, ProductConfig, not_blank, secret_value
from app.security import MAX_SIGNATURE_HEADER_CHARS, equals

log = structlog.get_logger(__name__)

WEBHOOK_HEADER = "x-bridge-token"
LINK_EVENTS: Mapping[str, LinkEvent] = {
    "case.created": LinkEvent.NEW,
    "case.comment_added": LinkEvent.REPLY_EXISTING,
}
MAX_FIELD_CHARS = 512
_EVENT_NAME_PREVIEW_CHARS = 64

# CommentBody holds at most 4000 bytes (Salesforce's object reference); counting UTF-8 bytes
# also keeps every comment within 4000 characters.
MAX_COMMENT_BYTES = 4000
NOTE_ID_SEPARATOR = ","
# REQUEST_LIMIT_EXCEEDED comes without Retry-After: wait at least this before trying again.
REQUEST_LIMIT_PAUSE_S = 60.0
# How much of Salesforce's error message a delivery error quotes.
_MESSAGE_PREVIEW_CHARS = 300

INVALID_SESSION_ID = "INVALID_SESSION_ID"
REQUEST_LIMIT_EXCEEDED = "REQUEST_LIMIT_EXCEEDED"
ENTITY_IS_DELETED = "ENTITY_IS_DELETED"

# A record id: 15 case-sensitive characters, or those and a 3-character case checksum.
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?\Z")
_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_API_VERSION = re.compile(r"^[0-9]{2}\.[0-9]\Z")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


# --- configuration ---


def https_url(value: str | None) -> str | None:
    """An https:// URL with a host (http:// only on loopback, for tests and local proxies)."""
    if value is None:
        return None
    parts = urlsplit(value)
    secure = parts.scheme == "https" and bool(parts.hostname)
    loopback = parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
    if not (secure or loopback):
        raise ValueError("must be an https:// URL (http:// only for localhost)")
    return value.rstrip("/")


def _api_version(value: str) -> str:
    if not _API_VERSION.match(value):
        raise ValueError('must look like "62.0"')
    return value


class SalesforceConfig(PlatformSettings):
    """``[products.<id>.salesforce]``."""

    instance_url: str
    client_id: str
    client_secret: str
    token_url: str | None = None
    api_version: str = "62.0"
    webhook_token: str
    token_ttl_s: float = Field(default=3600.0, ge=60, allow_inf_nan=False)

    _non_empty = field_validator("client_id")(not_blank)
    _secrets = field_validator("client_secret", "webhook_token")(secret_value)
    _urls = field_validator("instance_url", "token_url")(https_url)
    _version = field_validator("api_version")(_api_version)

    @property
    def inbound_secret(self) -> str:
        return self.webhook_token  # the Named Credential's X-Bridge-Token header

    @property
    def token_endpoint(self) -> str:
        return self.token_url or f"{self.instance_url}/services/oauth2/token"


# --- webhooks ---


def verify_bridge_token(headers: Mapping[str, str], *, token: str) -> None:
    """Check ``X-Bridge-Token`` against the configured token; raise WebhookRejected."""
    received = headers.get(WEBHOOK_HEADER)
    if not received:
        raise WebhookRejected("X-Bridge-Token is required")
    if len(received) > MAX_SIGNATURE_HEADER_CHARS:
        raise WebhookRejected("X-Bridge-Token is too long")
    if not equals(received.strip(), token):
        raise WebhookRejected("X-Bridge-Token does not match")


def case_safe_id(record_id: str) -> str:
    """The 18-character form of a record id (a 15-character id gets its case checksum)."""
    if len(record_id) != 15:
        return record_id
    suffix = ""
    for start in (0, 5, 10):
        chunk = record_id[start : start + 5]
        bits = sum(1 << i for i, char in enumerate(chunk) if "A" <= char <= "Z")
        suffix += _CHECKSUM_CHARS[bits]
    return record_id + suffix


def _record_id(value: Any) -> Any:
    if isinstance(value, str) and not _RECORD_ID.match(value.strip()):
        raise ValueError("must be a Salesforce record id (15 or 18 letters and digits)")
    return value.strip() if isinstance(value, str) else value


def _optional_text(value: Any) -> Any:
    """A Flow field's value: None when empty or too long; a number (a numeric external id) as
    text; any other type is left for validation to refuse."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        value = value.strip()
        return value if 0 < len(value) <= MAX_FIELD_CHARS else None
    return value


def _optional_session_id(value: Any) -> str | None:
    value = _optional_text(value)
    return value if is_session_id(value) else None


RecordId = Annotated[str, BeforeValidator(_record_id), AfterValidator(case_safe_id)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]
OptionalSessionId = Annotated[str | None, BeforeValidator(_optional_session_id)]


class CaseEvent(BaseModel):
    """A link-eligible webhook body from the Flow (see the module docstring)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event: str
    case_id: RecordId
    session_id: OptionalSessionId = None
    contact_external_id: OptionalText = None
    contact_email: OptionalText = None


def parse_case_event(body: bytes) -> WebhookEvent:
    """Read a Flow webhook body; its ``id`` (else a digest of the body) is the delivery id."""
    data = load_json_object(body)
    delivery_id = body_id(data) or body_digest_id(body)
    name = data.get("event")
    if not isinstance(name, str):
        raise InvalidWebhook("'event' must be a string")
    link_event = LINK_EVENTS.get(name)
    if link_event is None:
        preview = name[:_EVENT_NAME_PREVIEW_CHARS]
        return WebhookEvent(
            delivery_id=delivery_id, event=None, reason=f"event {preview!r} is not link-eligible"
        )
    case = validated(CaseEvent, data, what="Salesforce webhook body")
    return WebhookEvent(
        delivery_id=delivery_id,
        event=link_event,
        conversation_id=case.case_id,
        session_id=case.session_id,
        user_id=case.contact_external_id,
        email=case.contact_email,
    )


# --- notes ---


def _utf8_size(text: str) -> int:
    return len(text.encode())


def _cut(line: str, limit: int) -> tuple[str, str]:
    """The longest head of ``line`` within ``limit`` UTF-8 bytes (never half a character),
    and the rest."""
    head = line.encode()[:limit].decode(errors="ignore")
    return head, line[len(head) :]


def split_comment(body: str, limit: int = MAX_COMMENT_BYTES) -> list[str]:
    """``body`` as comment bodies of at most ``limit`` UTF-8 bytes, in order.

    Lines stay whole and are cut only at line breaks (the break itself is dropped), except that
    a line longer than ``limit`` is cut into pieces. Blank lines at either end of a comment
    are dropped. A body that fits is one comment, as it is.
    """
    if _utf8_size(body) <= limit:
        return [body]
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for line in body.split("\n"):
        while _utf8_size(line) > limit:
            head, line = _cut(line, limit)
            if current:
                parts.append("\n".join(current))
                current, size = [], 0
            parts.append(head)
        line_size = _utf8_size(line)
        if current and size + 1 + line_size > limit:
            parts.append("\n".join(current))
            current, size = [], 0
        size += line_size + (1 if current else 0)
        current.append(line)
    if current:
        parts.append("\n".join(current))
    trimmed = [part.strip("\n") for part in parts]
    return [part for part in trimmed if part] or [body]


def _json(response: httpx.Response) -> Any:
    """An answer's JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """An answer's JSON object, or {} when it is not one."""
    data = _json(response)
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class ApiError:
    """One entry of Salesforce's REST error array."""

    code: str
    message: str


def api_errors(response: httpx.Response) -> list[ApiError]:
    """The ``[{"message", "errorCode", "fields"}]`` array of an error answer (empty if none)."""
    data = _json(response)
    entries = data if isinstance(data, list) else []
    return [
        ApiError(entry["errorCode"], str(entry.get("message", "")))
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("errorCode"), str)
    ]


class SessionExpired(PermanentDeliveryError):
    """``401 INVALID_SESSION_ID``: the access token expired or was revoked."""


def _is_retryable_status(status: int) -> bool:
    return status in (408, 409, 425, 429) or status >= 500


def raise_for_api(response: httpx.Response, *, hint_s: float | None) -> None:
    """Map a REST API answer to the delivery errors (2xx passes), reading Salesforce's error
    codes: INVALID_SESSION_ID, REQUEST_LIMIT_EXCEEDED, NOT_FOUND and ENTITY_IS_DELETED."""
    status = response.status_code
    if status < 300:
        return
    errors = api_errors(response)
    codes = {error.code for error in errors}
    detail = f"{response.request.method} {response.request.url.path} answered {status}"
    if errors:
        detail += f" {errors[0].code}: {errors[0].message[:_MESSAGE_PREVIEW_CHARS]}"
    if status == 401 and INVALID_SESSION_ID in codes:
        raise SessionExpired(detail)
    if status == 403 and REQUEST_LIMIT_EXCEEDED in codes:
        retry_after_s = REQUEST_LIMIT_PAUSE_S if hint_s is None else hint_s
        raise RetryableDeliveryError(detail, retry_after_s=retry_after_s)
    if status == 404 or ENTITY_IS_DELETED in codes:
        raise ConversationNotFound(detail)
    if _is_retryable_status(status):
        raise RetryableDeliveryError(detail, retry_after_s=hint_s)
    raise PermanentDeliveryError(detail)


def token_refusal(response: httpx.Response, *, hint_s: float | None) -> DeliveryError:
    """The error for a token endpoint's refusal: retryable for 429 and 5xx, else permanent
    with Salesforce's ``error`` and ``error_description``."""
    status = response.status_code
    detail = f"the Salesforce token endpoint answered {status}"
    if _is_retryable_status(status):
        return RetryableDeliveryError(detail, retry_after_s=hint_s)
    data = _json_object(response)
    if isinstance(data.get("error"), str):
        description = str(data.get("error_description") or "")[:_MESSAGE_PREVIEW_CHARS]
        detail += f" {data['error']}: {description}"
    return PermanentDeliveryError(detail)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A client-credentials access token and the instance it is for."""

    value: str
    instance_url: str
    expires_at: float


def access_token_from(
    response: httpx.Response, *, default_instance_url: str, expires_at: float
) -> AccessToken:
    """The token of a token endpoint's 200; its ``instance_url`` when usable, else the
    configured one. Raises PermanentDeliveryError for an answer without a token."""
    data = _json_object(response)
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise PermanentDeliveryError("the Salesforce token endpoint answered without access_token")
    instance_url = data.get("instance_url")
    try:
        instance_url = https_url(instance_url) if isinstance(instance_url, str) else None
    except ValueError:
        instance_url = None
    return AccessToken(value, instance_url or default_instance_url, expires_at)


def _again(exc: DeliveryError) -> DeliveryError:
    """A new error like ``exc``, for each caller that waited for the failed token fetch."""
    if isinstance(exc, RetryableDeliveryError):
        return RetryableDeliveryError(str(exc), retry_after_s=exc.retry_after_s)
    return PermanentDeliveryError(str(exc))


def _comment_id(response: httpx.Response) -> str | None:
    comment_id = _json_object(response).get("id")
    if isinstance(comment_id, str) and _RECORD_ID.match(comment_id):
        return comment_id
    return None


class SalesforcePlatform(Platform):
    """Links Service Cloud cases from a Flow's callouts and posts notes as private comments."""

    name = "salesforce"
    config_model = SalesforceConfig
    # The org's API requests are a daily allowance shared with every other integration.
    default_notes_per_minute = 100

    def __init__(self, product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        super().__init__(product, client, clock)
        self.config = product.settings_of(SalesforceConfig)
        self._token_lock = asyncio.Lock()
        self._token: AccessToken | None = None
        # Token fetches finished (or abandoned), and how the last one failed: a caller that
        # waited for a fetch that failed shares its failure instead of calling again.
        self._fetches_done = 0
        self._fetch_error: DeliveryError | None = None

    @property
    def redacts(self) -> bool:
        return True

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        verify_bridge_token(headers, token=self.config.webhook_token)

    async def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        return parse_case_event(body)

    async def post_note(self, note: Note) -> str | None:
        """One private comment per part of the note (see ``split_comment``); the note id is
        the comments' ids joined by ``,``, the first first."""
        posted: list[str] = []
        try:
            for part in split_comment(note.body):
                comment = {
                    "ParentId": note.conversation_id,
                    "CommentBody": part,
                    "IsPublished": False,
                }
                response = await self._call("POST", "/sobjects/CaseComment", comment)
                if (comment_id := _comment_id(response)) is not None:
                    posted.append(comment_id)
        except DeliveryError:
            # A retry posts the whole note again: take back the parts already posted.
            await self._delete_quietly(posted)
            raise
        return NOTE_ID_SEPARATOR.join(posted) or None

    async def redact_note(self, conversation_id: str, note_id: str) -> None:
        """Delete every comment of the note; one already gone is fine. Every comment is tried,
        then the first failure is raised."""
        failure: DeliveryError | None = None
        for comment_id in filter(None, note_id.split(NOTE_ID_SEPARATOR)):
            try:
                await self._delete_comment(comment_id)
            except DeliveryError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def raise_for(self, response: httpx.Response) -> None:
        """Salesforce's error codes decide, not the status alone (``raise_for_api``)."""
        raise_for_api(response, hint_s=self.wait_hint_s(response))

    async def _call(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """A REST call under ``/services/data/v{api_version}``. On ``401 INVALID_SESSION_ID``
        the token is fetched again, once, and the call retried once; a second 401 is permanent
        (a fresh token refused means the connected app or its user is misconfigured)."""
        token = await self._access_token()
        try:
            return await self.send(self._request(token, method, path, payload))
        except SessionExpired:
            pass
        token = await self._access_token(stale=token)
        try:
            return await self.send(self._request(token, method, path, payload))
        except SessionExpired as exc:
            if self._token is token:
                self._token = None
            raise PermanentDeliveryError(f"{exc} (with a freshly fetched token)") from exc

    def _request(
        self, token: AccessToken, method: str, path: str, payload: Mapping[str, Any] | None
    ) -> httpx.Request:
        url = f"{token.instance_url}/services/data/v{self.config.api_version}{path}"
        headers = {"authorization": f"Bearer {token.value}", "accept": "application/json"}
        return self.client.build_request(method, url, json=payload, headers=headers)

    def _usable(self, token: AccessToken, stale: AccessToken | None) -> bool:
        return token is not stale and self.clock.now() < token.expires_at

    async def _access_token(self, *, stale: AccessToken | None = None) -> AccessToken:
        """The cached token, unless it expired or is ``stale`` (refused by Salesforce); else
        one fetch, which every caller needing a token at that moment waits for."""
        token = self._token
        if token is not None and self._usable(token, stale):
            return token
        fetches_seen = self._fetches_done
        async with self._token_lock:
            token = self._token
            if token is not None and self._usable(token, stale):
                return token
            if self._fetches_done != fetches_seen and self._fetch_error is not None:
                raise _again(self._fetch_error) from self._fetch_error
            self._fetch_error = None
            try:
                self._token = await self._fetch_token()
            except DeliveryError as exc:
                self._fetch_error = exc
                raise
            finally:
                self._fetches_done += 1
            return self._token

    async def _fetch_token(self) -> AccessToken:
        """The OAuth 2.0 client-credentials grant."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
        }
        request = self.client.build_request(
            "POST", self.config.token_endpoint, data=form, headers={"accept": "application/json"}
        )
        response = await self.exchange(request)
        if response.status_code >= 300:
            raise token_refusal(response, hint_s=self.wait_hint_s(response))
        return access_token_from(
            response,
            default_instance_url=self.config.instance_url,
            expires_at=self.clock.now() + self.config.token_ttl_s,
        )

    async def _delete_comment(self, comment_id: str) -> None:
        with contextlib.suppress(ConversationNotFound):  # 404 or ENTITY_IS_DELETED: gone already
            await self._call("DELETE", f"/sobjects/CaseComment/{quote(comment_id, safe='')}")

    async def _delete_quietly(self, comment_ids: list[str]) -> None:
        for comment_id in comment_ids:
            try:
                await self._delete_comment(comment_id)
            except DeliveryError as exc:
                log.warning(
                    "salesforce_comment_not_taken_back",
                    product_id=self.product.id,
                    comment_id=comment_id,
                    error=str(exc),
                )
