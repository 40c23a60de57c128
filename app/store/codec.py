"""How actions are stored: a dedupe digest, a score and a compact JSON payload."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from app.models import SlimAction
from app.notes import NoteLine

# The fields of an action a note or the http platform's ``actions`` list can use.
_STORED_FIELDS: set[str] = set(
    {"description", "timestamp_start", "timestamp_end", "type", "title", "canonical_url", "raw_url"}
)


def action_digest(action: SlimAction) -> bytes:
    """An action's identity (the session is implied by the key): redeliveries collide.
    ``repr`` keeps it unambiguous: ``None`` differs from ``"None"``, separators are escaped."""
    identity = (
        f"{action.started_at!r}\x1f{action.type!r}\x1f{action.description!r}"
        f"\x1f{action.canonical_url!r}"
    )
    return hashlib.blake2b(identity.encode(), digest_size=12).digest()


def encode_action(action: SlimAction) -> str:
    """Compact JSON of the stored fields (serialised by pydantic's core, the hot path)."""
    return action.model_dump_json(include=_STORED_FIELDS, exclude_none=True)


@dataclass(frozen=True, slots=True)
class StoredAction:
    """An action read back from the store; ``seq`` is its arrival order in the session."""

    seq: int
    data: dict[str, Any]

    @property
    def line(self) -> NoteLine:
        return NoteLine(float(self.data["timestamp_start"]), str(self.data["description"]))


def decode_member(member: bytes | str) -> StoredAction:
    text = member.decode() if isinstance(member, bytes) else member
    seq, _, payload = text.partition("|")
    return StoredAction(int(seq), json.loads(payload))


def in_arrival_order(members: list[bytes]) -> list[StoredAction]:
    return sorted((decode_member(m) for m in members), key=lambda a: a.seq)
