"""Every Redis key the bridge uses, and its lifetime: the only place key names are made.

The layout works the same on one Redis server and on a Redis Cluster. Sessions are grouped in
:data:`SHARDS` shards; a session's keys and its shard's due queue share the hash tag
``{s<shard>}``, so every script touches keys of one hash slot, while the shards (and with them
the sessions) spread over every node of a cluster. Keys that are looked up by something other
than the session (a contact's identity, a product's dead letters) live in slots of their own,
and the flows that join them to a session are ordered steps (docs/design/cluster.md).

The Lua scripts never build a key: every key they touch arrives in ``KEYS``, built here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

ROOT = "cb"

# Fixed for the life of a deployment: changing it moves every session to another due queue.
# 64 shards spread over every primary of any cluster a bridge needs (3 primaries: ~21 each),
# and a worker still finds all due work with 64 cheap reads, never a scan.
SHARDS = 64

SESSION_TTL_S = 24 * 3600  # state, outbox, dedupe and replay records, posted note ids
UNLINKED_BUFFER_TTL_S = 30 * 60  # an unlinked session's pre-link buffer, after its last action
IDENTITY_TTL_S = 24 * 3600  # user id / email -> latest session
PENDING_IDENTITY_TTL_S = 30 * 60  # user id / email -> conversation waiting for a session
DEAD_LETTER_TTL_S = 7 * 24 * 3600
POSTED_NOTE_IDS_KEPT = 200


def due_member(product_id: str, session_id: str) -> str:
    """A session's member in its shard's due queue."""
    return f"{product_id}:{session_id}"


def split_due_member(member: str) -> tuple[str, str]:
    # Product ids never contain ':' (app/products.py), session ids may.
    product_id, _, session_id = member.partition(":")
    return product_id, session_id


def shard_of(product_id: str, session_id: str) -> int:
    """The shard a session belongs to: stable across processes and Python versions."""
    return zlib.crc32(due_member(product_id, session_id).encode()) % SHARDS


# A pub/sub channel, not a key: api processes (BRIDGE_ROLE=api) name the shards they just
# scheduled work in, so worker processes look at once instead of at their next sweep.
WAKE_CHANNEL = f"{ROOT}:wake"


def due_key(shard: int) -> str:
    """A shard's due queue: a sorted set of its sessions by when their next note is due
    (epoch ms). A session leaves it when it has nothing left to post, so it needs no TTL."""
    return f"{ROOT}:{{s{shard}}}:due"


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """One session's keys, all in its shard's hash slot (with the shard's due queue).

    - ``state``: hash, the session's link, delivery and state machine fields (docs/delivery.md);
    - ``pre``: sorted set, the pre-link buffer; ``out``: sorted set, the post-link outbox
      (members ``<seq>|<action json>``, scored by the action's start time);
    - ``seen``: hash, dedupe digests of stored actions and replay records of requests;
    - ``notes``: list, the ids of notes posted for the session, for redaction (so only for
      platforms that redact);
    - ``dead``: hash, dead letters written by a failed delivery and not yet filed in the
      product's list (only between two steps of a delivery failure);
    - ``due``: the shard's due queue, where ``member`` is scheduled.
    """

    shard: int
    member: str
    state: str
    pre: str
    out: str
    seen: str
    notes: str
    dead: str
    due: str


def session_keys(product_id: str, session_id: str) -> SessionKeys:
    shard = shard_of(product_id, session_id)
    member = due_member(product_id, session_id)
    prefix = f"{ROOT}:{{s{shard}}}:{member}:"
    return SessionKeys(
        shard=shard,
        member=member,
        state=prefix + "state",
        pre=prefix + "pre",
        out=prefix + "out",
        seen=prefix + "seen",
        notes=prefix + "notes",
        dead=prefix + "dead",
        due=due_key(shard),
    )


def identity_key(product_id: str, *, user_id: str | None = None, email: str | None = None) -> str:
    """A contact's latest session (a string), by user id or by (lower-cased) email."""
    if user_id is not None:
        return f"{ROOT}:id:{product_id}:u:{user_id}"
    assert email is not None
    return f"{ROOT}:id:{product_id}:e:{email.lower()}"


def pending_key(product_id: str, *, user_id: str | None = None, email: str | None = None) -> str:
    """A conversation waiting for the contact's first session: ``<conversation>\\x1f<delivery
    id>`` (a string), by user id or by (lower-cased) email."""
    if user_id is not None:
        return f"{ROOT}:pend:{product_id}:u:{user_id}"
    assert email is not None
    return f"{ROOT}:pend:{product_id}:e:{email.lower()}"


def limiter_key(product_id: str) -> str:
    """A product's outbound note budget: the GCRA's next arrival time in ms (a string), shared
    by every process; it expires once the budget is full again."""
    return f"{ROOT}:limit:{product_id}"


def dead_letter_key(product_id: str) -> str:
    """A product's dead letters: a sorted set of JSON entries scored by failure time (ms)."""
    return f"{ROOT}:dead:{product_id}"


def project_url_key(product_id: str) -> str:
    """The last PostHog project URL seen in the product's events (a string), for replay links.
    Only plain single-key commands touch it, so like the other product keys it has no hash tag
    and lives in a slot of its own. No TTL: it is one small value per product, overwritten when
    the URL changes, and the processes that wrote it do not write it again."""
    return f"{ROOT}:phurl:{product_id}"
