"""Every Redis key the bridge uses, and its lifetime.

Per-session keys share the hash tag ``{<product>:<session>}``; the due queue's members are
that same ``<product>:<session>`` string, so the Lua scripts derive a session's keys from a
queue member with :func:`session_prefix`'s rule (``cb:{<member>}:``) without a lookup.
"""

from __future__ import annotations

ROOT = "cb"

# The one structural key: a sorted set of sessions scored by when their next note is due
# (epoch ms). Entries are removed when a session has nothing left to post, so it holds only
# live work and needs no TTL.
DUE = f"{ROOT}:due"

SESSION_TTL_S = 24 * 3600  # state, outbox, dedupe set, posted note ids
UNLINKED_BUFFER_TTL_S = 30 * 60  # an unlinked session's pre-link buffer, after its last action
IDENTITY_TTL_S = 24 * 3600  # user id / email -> latest session
PENDING_IDENTITY_TTL_S = 30 * 60  # user id / email -> conversation waiting for a session
WEBHOOK_DEDUPE_TTL_S = 24 * 3600
DEAD_LETTER_TTL_S = 7 * 24 * 3600
POSTED_NOTE_IDS_KEPT = 200


def due_member(product_id: str, session_id: str) -> str:
    return f"{product_id}:{session_id}"


def split_due_member(member: str) -> tuple[str, str]:
    # Product ids never contain ':' (app/products.py), session ids may.
    product_id, _, session_id = member.partition(":")
    return product_id, session_id


def session_prefix(product_id: str, session_id: str) -> str:
    return f"{ROOT}:{{{due_member(product_id, session_id)}}}:"


def session_keys(product_id: str, session_id: str) -> list[str]:
    """``state`` (hash), ``pre`` and ``out`` (sorted sets), ``seen`` (hash of action digests),
    ``notes`` (list)."""
    prefix = session_prefix(product_id, session_id)
    return [prefix + name for name in ("state", "pre", "out", "seen", "notes")]


def identity_key(product_id: str, *, user_id: str | None = None, email: str | None = None) -> str:
    if user_id is not None:
        return f"{ROOT}:id:{product_id}:u:{user_id}"
    assert email is not None
    return f"{ROOT}:id:{product_id}:e:{email.lower()}"


def pending_key(product_id: str, *, user_id: str | None = None, email: str | None = None) -> str:
    if user_id is not None:
        return f"{ROOT}:pend:{product_id}:u:{user_id}"
    assert email is not None
    return f"{ROOT}:pend:{product_id}:e:{email.lower()}"


def webhook_dedupe_key(product_id: str, delivery_id: str) -> str:
    return f"{ROOT}:wh:{product_id}:{delivery_id}"


def dead_letter_key(product_id: str) -> str:
    return f"{ROOT}:dead:{product_id}"
