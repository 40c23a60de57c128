"""Wire models: what the event pipeline and API clients send us."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# A value at or above this is a millisecond timestamp (1e11 s is the year 5138).
MILLISECONDS_THRESHOLD = 1e11
# 9999-12-31 23:59:59 UTC: the last second a note header can show.
MAX_TIMESTAMP_S = 253_402_300_799
MAX_ACTIONS_PER_BATCH = 1000
MAX_PAYLOADS_PER_REQUEST = 100

_SESSION_ID_CHARS = r"[A-Za-z0-9._:-]{1,128}"
# pydantic's (Rust) `$` and Python's `\Z` both mean the very end: no trailing newline passes.
SESSION_ID_REGEX = f"^{_SESSION_ID_CHARS}$"
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_REGEX)]
SESSION_ID_PATTERN = re.compile(rf"^{_SESSION_ID_CHARS}\Z")


def is_session_id(value: object) -> bool:
    """Whether a value taken from a platform's payload is a usable session id."""
    return isinstance(value, str) and SESSION_ID_PATTERN.match(value) is not None


ConversationId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# Strict JSON numbers: NaN, Infinity, overflowing literals (1e400 reads as inf) and booleans
# are errors, not values.
Timestamp = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
Count = Annotated[int, Field(strict=True)]

# Optional text is cut to these lengths, never a reason to reject a batch.
TEXT_LIMITS: dict[str, int] = {"title": 1000, "raw_url": 8192, "canonical_url": 8192, "type": 64}
# Identity hints longer than this cannot be a real id or email: they are ignored.
MAX_IDENTITY_CHARS = 512
MAX_DESCRIPTION_CHARS = 4000
MAX_SUMMARY_CHARS = 20_000


def to_seconds(value: float) -> float:
    """Epoch seconds from a timestamp that may be in milliseconds."""
    return value / 1000.0 if value >= MILLISECONDS_THRESHOLD else value


@dataclass(slots=True)
class Intake:
    """What validating one request noticed: the receive time that stands in for a missing
    ``timestamp_start``, and the fields it had to cut or ignore (for the metrics)."""

    received_at: float
    truncated: Counter[str] = field(default_factory=Counter)
    timestamps_defaulted: int = 0


def _intake(info: ValidationInfo) -> Intake:
    context = info.context
    return context if isinstance(context, Intake) else Intake(received_at=time.time())


def _blank_is_absent(value: Any) -> Any:
    """The SDK writes ``""`` for a missing product id and blank strings for missing text."""
    return None if value == "" else value


def _identity(value: str | None, name: str, intake: Intake) -> str | None:
    if value and len(value) > MAX_IDENTITY_CHARS:
        intake.truncated[name] += 1
        return None
    return value or None


OptionalSessionId = Annotated[SessionId | None, BeforeValidator(_blank_is_absent)]
OptionalConversationId = Annotated[ConversationId | None, BeforeValidator(_blank_is_absent)]
ProductId = Annotated[str | None, BeforeValidator(_blank_is_absent)]


class SlimAction(BaseModel):
    """One UI event, e.g. "User clicked Export CSV on the dashboard page"."""

    model_config = ConfigDict(extra="ignore")

    description: Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION_CHARS)] = Field(
        strict=True
    )
    # 0, null or missing: the batch's forwarded_at stands in, else the receive time.
    timestamp_start: Timestamp | None = None
    timestamp_end: Timestamp | None = None
    index: Count | None = None
    type: str | None = None
    title: str | None = None
    raw_url: str | None = None
    canonical_url: str | None = None
    session_id: OptionalSessionId = None
    user_id: str | None = None
    email: str | None = None
    conversation_id: OptionalConversationId = None

    @field_validator("timestamp_start", "timestamp_end")
    @classmethod
    def _milliseconds_to_seconds(cls, value: float | None) -> float | None:
        if not value:
            return None
        seconds = to_seconds(value)
        if seconds > MAX_TIMESTAMP_S:
            raise ValueError("must be a Unix time in seconds or milliseconds before the year 10000")
        return seconds

    @property
    def started_at(self) -> float:
        """``timestamp_start`` in epoch seconds (always set once its batch is validated)."""
        assert self.timestamp_start is not None
        return self.timestamp_start

    def _normalise(self, *, default_start: float, intake: Intake) -> None:
        if self.timestamp_start is None:
            self.timestamp_start = default_start
            intake.timestamps_defaulted += 1
        for name, limit in TEXT_LIMITS.items():
            value = getattr(self, name)
            if value is not None and (value == "" or len(value) > limit):
                if value:
                    intake.truncated[name] += 1
                setattr(self, name, value[:limit] or None)
        self.user_id = _identity(self.user_id, "user_id", intake)
        self.email = _identity(self.email, "email", intake)


class ActionsPayload(BaseModel):
    """A batch of actions for one session."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["actions"] | None = None
    product_id: ProductId = None
    session_id: OptionalSessionId = None
    user_id: str | None = None
    email: str | None = None
    count: Count | None = None
    forwarded_at: Timestamp | None = None
    conversation_id: OptionalConversationId = None
    actions: list[SlimAction] = Field(min_length=1, max_length=MAX_ACTIONS_PER_BATCH)

    @field_validator("forwarded_at")
    @classmethod
    def _forwarded_seconds(cls, value: float | None) -> float | None:
        return to_seconds(value) if value else None

    @model_validator(mode="after")
    def _normalise(self, info: ValidationInfo) -> Self:
        intake = _intake(info)
        default_start = self.forwarded_at or intake.received_at
        for action in self.actions:
            action._normalise(default_start=default_start, intake=intake)
        self.user_id = _identity(self.user_id, "user_id", intake)
        self.email = _identity(self.email, "email", intake)
        self._resolve_session()
        return self

    def _resolve_session(self) -> None:
        carried = {a.session_id for a in self.actions}
        if self.session_id is None:
            if len(carried) != 1 or None in carried:
                raise ValueError(
                    "session_id is null, so every action must carry the same non-null session_id"
                )
            self.session_id = carried.pop()
        elif carried - {None, self.session_id}:
            raise ValueError("an action's session_id differs from the batch session_id")

    @property
    def sid(self) -> str:
        """The resolved session id (always set after validation)."""
        assert self.session_id is not None
        return self.session_id


class SummaryPayload(BaseModel):
    """An LLM summary of a session that replaces its earlier action notes."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["summary"] | None = None
    product_id: ProductId = None
    session_id: SessionId
    summary: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SUMMARY_CHARS)] = Field(
        strict=True
    )
    # How many actions the summary stands for, as the SDK sends it: informational only.
    replaces: Annotated[int, Field(ge=0, strict=True)] | None = None
    forwarded_at: Timestamp | None = None

    @property
    def sid(self) -> str:
        return self.session_id


def _payload_kind(value: Any) -> str:
    """``type`` when it is given; without one (the SDK's ``asdict`` writes none), a body with a
    ``summary`` and no ``actions`` is a summary."""
    if not isinstance(value, dict):
        return str(getattr(value, "type", None) or "actions")
    kind = value.get("type")
    if kind:
        return str(kind)
    return "summary" if "summary" in value and "actions" not in value else "actions"


Payload = Annotated[
    Annotated[ActionsPayload, Tag("actions")] | Annotated[SummaryPayload, Tag("summary")],
    Discriminator(
        _payload_kind,
        custom_error_type="payload_type",
        custom_error_message="type must be 'actions' (or absent) or 'summary'",
    ),
]
PAYLOAD_ADAPTER: TypeAdapter[ActionsPayload | SummaryPayload] = TypeAdapter(Payload)
PAYLOAD_LIST_ADAPTER: TypeAdapter[list[ActionsPayload | SummaryPayload]] = TypeAdapter(
    Annotated[list[Payload], Field(min_length=1, max_length=MAX_PAYLOADS_PER_REQUEST)]
)
_TAGS = frozenset({"actions", "summary"})


class InvalidPayload(ValueError):
    """A request body failed validation; ``fields`` maps locations to messages."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{f['loc']}: {f['message']}" for f in fields))
        self.fields = fields


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``("actions", 3, "timestamp_start")`` -> ``actions[3].timestamp_start``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def validation_fields(exc: ValidationError, *, tagged: bool = False) -> list[dict[str, str]]:
    """Flatten a pydantic error into ``[{"loc", "message"}]``, dropping union tag names."""
    fields = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if tagged:
            position = 1 if loc and isinstance(loc[0], int) else 0
            if len(loc) > position and loc[position] in _TAGS:
                del loc[position]
        message = str(error["msg"]).removeprefix("Value error, ")
        fields.append({"loc": format_loc(tuple(loc)), "message": message})
    return fields


def is_array_body(body: bytes) -> bool:
    return body.lstrip()[:1] == b"["


def parse_ingest(body: bytes, intake: Intake) -> list[ActionsPayload | SummaryPayload]:
    """Validate an ingest body (one payload or an array of them); raises InvalidPayload.
    ``intake`` supplies the receive time and collects what validation cut or defaulted."""
    try:
        if is_array_body(body):
            return PAYLOAD_LIST_ADAPTER.validate_json(body, context=intake)
        return [PAYLOAD_ADAPTER.validate_json(body, context=intake)]
    except ValidationError as exc:
        raise InvalidPayload(validation_fields(exc, tagged=True)) from exc


class LinkRequest(BaseModel):
    """Body of ``POST /sessions/link``."""

    model_config = ConfigDict(extra="forbid")

    product_id: str
    session_id: SessionId
    conversation_id: ConversationId
    event: Literal["new", "reply_existing"] | None = None


class ProactiveRequest(BaseModel):
    """Body of ``POST /sessions/{product_id}/{session_id}/proactive``."""

    model_config = ConfigDict(extra="forbid")

    trigger_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class IngestResponse(BaseModel):
    status: Literal["accepted"] = "accepted"
    accepted: int
    duplicates: int
    linked: bool


class PosthogResponse(BaseModel):
    """What ``POST /posthog/{product_id}`` did with a request's events."""

    status: Literal["accepted"] = "accepted"
    accepted: int = Field(description="Actions stored (one per event kept).")
    duplicates: int = Field(description="Events already received once (same `uuid`).")
    ignored: int = Field(
        description="Events not kept: a name outside `events`, or no usable `$session_id`."
    )


class WebhookResponse(BaseModel):
    status: Literal["linked", "already_linked", "pending_identity", "ignored", "duplicate"]
    session_id: str | None = None
    conversation_id: str | None = None


class ErrorBody(BaseModel):
    error: str
    detail: str
    fields: list[dict[str, str]] | None = None


# --- response bodies (what the routes answer; documented in the OpenAPI document) ---


class FieldError(BaseModel):
    """One invalid field of a request, in ``ErrorBody.fields``."""

    loc: str = Field(description="Where the problem is, e.g. ``actions[3].timestamp_start``.")
    message: str


class SessionMetadata(BaseModel):
    """The identity hints the bridge holds for a session."""

    user_id: str | None
    email: str | None


class SessionState(BaseModel):
    """A session's link, FSM state and proactive gate, as of the read."""

    session_id: str
    product_id: str
    conversation_linked: bool
    conversation_id: str | None
    metadata: SessionMetadata
    current_state: str = Field(
        description="The session FSM: thinking, reactive_assistance or proactive_assistance."
    )
    last_interaction_at: float | None = Field(description="Unix seconds.")
    cooldown_until: float | None = Field(description="Unix seconds.")
    can_deliver_proactive: bool
    proactive_reason: str = Field(description="``ok``, or why a proactive message cannot start.")
    pending_actions: int = Field(description="Actions buffered until the session is linked.")
    queued_actions: int = Field(description="Actions waiting to be posted to the conversation.")
    created_at: float | None = Field(description="Unix seconds.")
    updated_at: float | None = Field(description="Unix seconds.")


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class ReadinessChecks(BaseModel):
    store: Literal["ok", "failing"]
    config: Literal["ok", "failing"]
    intake: Literal["ok", "draining"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: ReadinessChecks


class ProductList(BaseModel):
    """Every configured product, as in the products file, with secrets masked."""

    products: list[dict[str, Any]]


class StoredActionView(BaseModel):
    """An action as the store keeps it (the fields a note uses)."""

    model_config = ConfigDict(extra="allow")

    description: str
    timestamp_start: float
    timestamp_end: float | None = None
    type: str | None = None
    title: str | None = None
    canonical_url: str | None = None
    raw_url: str | None = None


class PostedNoteView(BaseModel):
    kind: Literal["actions", "summary"]
    conversation_id: str
    note_id: str


class SessionView(BaseModel):
    """Everything the store holds for one session."""

    product_id: str
    session_id: str
    state: dict[str, str] = Field(description="The session's stored hash, field by field.")
    pre_link_buffer: list[StoredActionView]
    outbox: list[StoredActionView]
    posted_notes: list[PostedNoteView]
    next_note_due_at: float | None = Field(description="Unix seconds.")


class NoteBudgetView(BaseModel):
    """A product's shared outbound budget, as the store holds it now."""

    per_minute: int
    burst: int
    available_now: int = Field(description="Notes that may start at once, on every replica.")
    next_free_at: float = Field(description="Unix seconds: when the next note may start.")


class CircuitView(BaseModel):
    """This process's circuit breaker for the product."""

    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    open_until: float | None = Field(description="Unix seconds; set while open or half open.")


class DeliveryView(BaseModel):
    """How a product's deliveries are limited right now."""

    product_id: str
    note_budget: NoteBudgetView | None = Field(description="None: no per-minute limit.")
    max_notes_in_flight: int
    in_flight: int | None = Field(description="This process's calls; None without a worker.")
    circuit: CircuitView | None = Field(description="This process's; None without a worker.")


class DeadLetter(BaseModel):
    """A note that could not be delivered, with what it carried."""

    model_config = ConfigDict(extra="allow")

    session_id: str
    conversation_id: str | None = None
    kind: str
    error: str
    attempts: int
    first_failure_at: float
    failed_at: float
    actions: list[StoredActionView] = []
    summary: str | None = None


class DeadLetterList(BaseModel):
    product_id: str
    total: int
    dead_letters: list[DeadLetter] = Field(description="Newest first.")


class DeadLetterReplay(BaseModel):
    product_id: str
    replayed: int = Field(description="How many dead letters were queued for delivery again.")
