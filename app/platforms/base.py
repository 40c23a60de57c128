"""The contract every chat platform adapter implements.

An adapter turns the platform's webhooks into link events and posts (and redacts) notes; those
types (``WebhookEvent``, ``Note``) are the domain's, in app/domain.py.
It receives its ``httpx.AsyncClient`` and never imports FastAPI; its failures are typed so the
delivery engine can tell a retry from a dead letter.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar

import httpx
import pydantic_core
from pydantic import BaseModel, ValidationError

from app import metrics
from app.clock import Clock
from app.domain import Note, WebhookEvent
from app.products import PlatformSettings, ProductConfig

# Total time allowed for one outbound call (httpx's own timeouts are per operation).
CALL_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
# A platform's wait hint is honoured up to this; a larger one is treated as this.
MAX_WAIT_HINT_S = 3600.0
# How long optional calls (contact lookups) pause after a 429 that gave no wait hint.
RATE_LIMIT_PAUSE_S = 10.0

# cached: answered from the adapter's cache; found / not_found: read from the platform;
# failed: the call failed; rate_limited: not made, the platform asked us to wait.
LookupResult = Literal["cached", "found", "not_found", "failed", "rate_limited"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class WebhookRejected(Exception):
    """The webhook's signature is missing or wrong (an HTTP 401)."""


class InvalidWebhook(Exception):
    """The webhook is authentic but its body cannot be understood (an HTTP 400)."""


class DeliveryError(Exception):
    """Posting or redacting a note failed."""


class RetryableDeliveryError(DeliveryError):
    """Network error, timeout, 429 or 5xx: try again, not before ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(DeliveryError):
    """The platform refused the note for good (a 4xx other than 404/408/409/429)."""


class ConversationNotFound(PermanentDeliveryError):
    """The conversation no longer exists (404): the session must be unlinked."""


# A delivery id from a body or header is kept as is up to this length.
MAX_DELIVERY_ID_CHARS = 256

_Model = TypeVar("_Model", bound=BaseModel)


def body_id(data: Mapping[str, Any], key: str = "id") -> str | None:
    """``data[key]`` as a delivery id: a non-empty string of at most 256 characters."""
    value = data.get(key)
    if isinstance(value, str) and 0 < len(value) <= MAX_DELIVERY_ID_CHARS:
        return value
    return None


def body_digest_id(body: bytes) -> str:
    """A delivery id for a body that carries none: the same body is the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def validation_problems(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())


def validated(model: type[_Model], data: Any, *, what: str = "webhook body") -> _Model:
    """``data`` as ``model``; raises InvalidWebhook naming every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidWebhook(f"invalid {what}: {validation_problems(exc)}") from exc


def is_json_media_type(content_type: str) -> bool:
    """Whether a Content-Type header names JSON: ``application/json`` or ``application/*+json``."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def load_json_object(body: bytes) -> dict[str, Any]:
    """A webhook body as a JSON object; raises InvalidWebhook.

    pydantic's parser refuses what Redis and the platforms cannot carry: a lone surrogate
    escape (``"\\ud800"``) is invalid JSON here (the standard library would accept it and fail
    later, on the way to Redis), and so are NaN and Infinity.
    """
    try:
        data = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidWebhook(f"the webhook body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidWebhook("the webhook body must be a JSON object")
    return data


class ExpiringCache(Generic[_K, _V]):
    """A bounded LRU whose entries expire ``ttl_s`` after they were stored (the lookups an
    adapter makes while reading a webhook: a Zendesk requester, an Intercom contact)."""

    def __init__(self, *, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[_K, tuple[float, _V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _K, *, now: float) -> _V | None:
        """The live entry for ``key``, or None (never stored, evicted or expired)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if now >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: _K, value: _V, *, now: float) -> None:
        self._entries[key] = (now + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class Platform(ABC):
    """One product's adapter for its chat platform."""

    name: ClassVar[str]
    # The plug-in contract (app/plugins.py): the model of the product's platform section,
    # the notes a minute a product gets without max_notes_per_minute (0: no limit), and
    # whether a product may turn webhook and ingest authentication off (demos only).
    config_model: ClassVar[type[PlatformSettings]]
    default_notes_per_minute: ClassVar[int] = 0
    allows_unauthenticated: ClassVar[bool] = False
    # What the 415 for a webhook body accepts_webhook refuses asks for.
    webhook_media_type: ClassVar[str] = "application/json"

    def __init__(self, product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        self.product = product
        self.client = client
        self.clock = clock
        # Until when the platform asked us not to call (its last 429): optional calls wait.
        self.rate_limited_until = 0.0

    @abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Check the webhook's signature on the raw body; raise WebhookRejected."""

    @abstractmethod
    async def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Turn a verified webhook into a WebhookEvent; raise InvalidWebhook."""

    @abstractmethod
    async def post_note(self, note: Note) -> str | None:
        """Post the note; return its platform id, or None when the platform has none."""

    @property
    def redacts(self) -> bool:
        """Whether ``redact_note`` removes notes: only then does the store keep posted note ids
        (to redact the notes a summary replaces)."""
        return False

    async def redact_note(self, conversation_id: str, note_id: str) -> None:  # noqa: B027
        """Remove a posted note. A documented no-op unless the platform overrides it."""

    async def find_session(self, event: WebhookEvent) -> str | None:
        """The session of a webhook that nothing else identified, read from the platform
        (Intercom: the contact's PostHog replay URL); None when it has none. May raise a
        DeliveryError."""
        return None

    def accepts_webhook(self, content_type: str) -> bool:
        """Whether a webhook body of this Content-Type is read at all (else ``415``). JSON by
        default; an adapter whose platform posts forms or XML widens it, and parses the raw
        bytes itself in ``parse``."""
        return is_json_media_type(content_type)

    def rate_limited(self) -> bool:
        """Whether the platform's last 429 still asks us to wait."""
        return self.clock.now() < self.rate_limited_until

    def count_lookup(self, result: LookupResult) -> None:
        """Count one lookup made while reading a webhook (``bridge_platform_lookups_total``)."""
        metrics.PLATFORM_LOOKUPS.labels(self.product.id, self.name, result).inc()

    async def lookup(
        self,
        cache: ExpiringCache[_K, _V],
        key: _K,
        read: Callable[[], Awaitable[_V]],
        *,
        found: Callable[[_V], bool],
        wait_while_rate_limited: bool = False,
    ) -> _V:
        """A platform read made while handling a webhook, through ``cache`` (a result found or
        not is kept) and counted by outcome. With ``wait_while_rate_limited`` no read is made
        while the platform's last 429 applies (a RetryableDeliveryError with the wait). A
        failed read raises its DeliveryError and is not cached."""
        cached = cache.get(key, now=self.clock.now())
        if cached is not None:
            self.count_lookup("cached")
            return cached
        if wait_while_rate_limited and self.rate_limited():
            self.count_lookup("rate_limited")
            wait_s = self.rate_limited_until - self.clock.now()
            raise RetryableDeliveryError(f"{self.name} asked us to wait", retry_after_s=wait_s)
        try:
            value = await read()
        except DeliveryError:
            self.count_lookup("failed")
            raise
        self.count_lookup("found" if found(value) else "not_found")
        cache.put(key, value, now=self.clock.now())
        return value

    async def read_resource(
        self, request: httpx.Request, *, timeout_s: float, what: str
    ) -> httpx.Response | None:
        """``send`` a lookup's GET within ``timeout_s``; None when the resource is gone (404).
        A timeout is retryable (``what`` names the read in its message)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.send(request)
        except TimeoutError as exc:
            raise RetryableDeliveryError(f"the {what} timed out") from exc
        except ConversationNotFound:
            return None

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send one outbound request, translating every failure into a DeliveryError."""
        response = await self.exchange(request)
        self.raise_for(response)
        return response

    async def exchange(self, request: httpx.Request) -> httpx.Response:
        """One call within the call timeout: a network failure or timeout is retryable, any
        answer is returned (a 429 also pauses the optional calls, see ``rate_limited``)."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                response = await self.client.send(request)
        except (httpx.RequestError, TimeoutError) as exc:
            raise RetryableDeliveryError(f"{type(exc).__name__} calling {self.name}") from exc
        if response.status_code == 429:
            hint_s = self.wait_hint_s(response)
            pause_s = RATE_LIMIT_PAUSE_S if hint_s is None else hint_s
            self.rate_limited_until = max(self.rate_limited_until, self.clock.now() + pause_s)
        return response

    def raise_for(self, response: httpx.Response) -> None:
        """Map a non-2xx answer to the delivery errors (``raise_for_delivery``); an adapter
        whose platform explains its errors in the body reads them here."""
        raise_for_delivery(response, hint_s=self.wait_hint_s(response))

    def wait_hint_s(self, response: httpx.Response) -> float | None:
        """How long the platform asks us to wait before calling again (``Retry-After``)."""
        return retry_after_seconds(response.headers.get("retry-after"), now=self.clock.now())


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_WAIT_HINT_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - now), MAX_WAIT_HINT_S)


def raise_for_delivery(response: httpx.Response, *, hint_s: float | None) -> None:
    """Map an HTTP status to the delivery error classes; 2xx passes. ``hint_s`` is the
    platform's wait hint, carried by a retryable error."""
    status = response.status_code
    if status < 300:
        return
    detail = f"{response.request.method} {response.request.url.path} answered {status}"
    if status == 404:
        raise ConversationNotFound(detail)
    if status in (408, 409, 425, 429) or status >= 500:
        raise RetryableDeliveryError(detail, retry_after_s=hint_s)
    raise PermanentDeliveryError(detail)
