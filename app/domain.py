"""The bridge's domain types: what a webhook means for linking, and the notes to post.

Plain values shared by the store, the linking rules, the delivery worker and the platform
adapters. No I/O here: this module imports nothing but the standard library, so any layer can
use it without pulling in Redis, HTTP or FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

NoteKind = Literal["prelink", "postlink", "summary"]


class LinkEvent(StrEnum):
    NEW = "new"
    REPLY_EXISTING = "reply_existing"


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """What a verified webhook means for linking. ``event is None`` means ignore it."""

    delivery_id: str | None
    event: LinkEvent | None
    conversation_id: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    email: str | None = None
    # The platform's own id for the contact (Intercom), for ``Platform.find_session``.
    contact_id: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Note:
    """One internal note to post. ``body`` is plain text in the note format (app/notes.py)."""

    product_id: str
    session_id: str
    conversation_id: str
    kind: NoteKind
    body: str
    # Stays the same across retries of this note (an idempotency key for the platform).
    delivery_id: str
    actions: tuple[Mapping[str, Any], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class NoteBudget:
    """A product's outbound notes per minute, shared by every process: one note per
    ``interval_ms`` on average, up to ``burst`` at once after a quiet spell."""

    per_minute: int
    burst: int

    @classmethod
    def of(cls, per_minute: int) -> NoteBudget:
        """The budget for ``per_minute`` notes; its burst is 10 % of it, at least 1."""
        return cls(per_minute, max(1, per_minute // 10))

    @property
    def interval_ms(self) -> float:
        return 60_000 / self.per_minute
