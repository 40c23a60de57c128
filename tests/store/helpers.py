"""What the store tests share: batches as the API parses them, claims, their descriptions."""

from __future__ import annotations

import json

from app.models import ActionsPayload, Intake, parse_ingest
from app.store.redis_store import Claim, RedisStore
from tests.conftest import batch

T0 = 1_700_000_000.0


def actions(
    session_id: str, *items: tuple[str, float], received_at: float = T0, **fields: object
) -> list[ActionsPayload]:
    """One batch (``batch()``'s arguments), parsed as ``POST /actions`` parses it."""
    body = json.dumps(batch(session_id, *items, **fields)).encode()
    payloads = parse_ingest(body, Intake(received_at=received_at))
    assert all(isinstance(p, ActionsPayload) for p in payloads)
    return payloads  # type: ignore[return-value]


async def claim(store: RedisStore, now: float, limit: int = 10) -> list[Claim]:
    found = await store.claim_due(now=now, limit=limit, lease_s=30, max_note_actions=1000)
    return found.claims


def described(claim_: Claim) -> list[str]:
    return [a.data["description"] for a in claim_.actions()]
