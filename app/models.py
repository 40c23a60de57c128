"""Wire models: what the event pipeline and API clients send us."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
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
SessionId = Annotated[str, StringConstraints(pattern=f"^{_SESSION_ID_CHARS}$")]
SESSION_ID_PATTERN = re.compile(rf"^{_SESSION_ID_CHARS}\Z")


def is_session_id(value: object) -> bool:
    """Whether a value taken from a platform's payload is a usable session id."""
    return isinstance(value, str) and SESSION_ID_PATTERN.match(value) is not None


ConversationId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ShortText = Annotated[str, StringConstraints(max_length=512)]
Url = Annotated[str, StringConstraints(max_length=4096)]
Timestamp = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]


def to_seconds(value: float) -> float:
    """Epoch seconds from a timestamp that may be in milliseconds."""
    return value / 1000.0 if value >= MILLISECONDS_THRESHOLD else value


class SlimAction(BaseModel):
    """One UI event, e.g. "User clicked Export CSV on the dashboard page"."""

    model_config = ConfigDict(extra="ignore")

    description: Annotated[str, StringConstraints(max_length=4000)] = Field(strict=True)
    timestamp_start: Timestamp
    timestamp_end: Timestamp | None = None
    index: int | None = None
    type: ShortText | None = None
    title: ShortText | None = None
    raw_url: Url | None = None
    canonical_url: Url | None = None
    session_id: SessionId | None = None
    user_id: ShortText | None = None
    email: ShortText | None = None
    conversation_id: ConversationId | None = None

    @field_validator("timestamp_start", "timestamp_end")
    @classmethod
    def _milliseconds_to_seconds(cls, value: float | None) -> float | None:
        if value is None:
            return None
        seconds = to_seconds(value)
        if seconds > MAX_TIMESTAMP_S:
            raise ValueError("must be a Unix time in seconds or milliseconds before the year 10000")
        return seconds


class ActionsPayload(BaseModel):
    """A batch of actions for one session."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["actions"] = "actions"
    product_id: str | None = None
    session_id: SessionId | None = None
    user_id: ShortText | None = None
    email: ShortText | None = None
    count: int | None = None
    forwarded_at: float | None = None
    conversation_id: ConversationId | None = None
    actions: list[SlimAction] = Field(min_length=1, max_length=MAX_ACTIONS_PER_BATCH)

    @model_validator(mode="after")
    def _resolve_session(self) -> Self:
        carried = {a.session_id for a in self.actions}
        if self.session_id is None:
            if len(carried) != 1 or None in carried:
                raise ValueError(
                    "session_id is null, so every action must carry the same non-null session_id"
                )
            self.session_id = carried.pop()
        elif carried - {None, self.session_id}:
            raise ValueError("an action's session_id differs from the batch session_id")
        return self

    @property
    def sid(self) -> str:
        """The resolved session id (always set after validation)."""
        assert self.session_id is not None
        return self.session_id


class SummaryPayload(BaseModel):
    """An LLM summary of a session that replaces its earlier action notes."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["summary"]
    product_id: str | None = None
    session_id: SessionId
    summary: Annotated[str, StringConstraints(min_length=1, max_length=20_000)] = Field(strict=True)
    replaces: list[str] | str | None = None
    forwarded_at: float | None = None

    @property
    def sid(self) -> str:
        return self.session_id


def _payload_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type") or "actions")
    return str(getattr(value, "type", "actions"))


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


def parse_ingest(body: bytes) -> list[ActionsPayload | SummaryPayload]:
    """Validate an ingest body (one payload or an array of them); raises InvalidPayload."""
    try:
        if is_array_body(body):
            return PAYLOAD_LIST_ADAPTER.validate_json(body)
        return [PAYLOAD_ADAPTER.validate_json(body)]
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


class WebhookResponse(BaseModel):
    status: Literal["linked", "already_linked", "pending_identity", "ignored", "duplicate"]
    session_id: str | None = None
    conversation_id: str | None = None


class ErrorBody(BaseModel):
    error: str
    detail: str
    fields: list[dict[str, str]] | None = None
