"""All Redis access, on one Redis server, a Redis Cluster or the embedded store.

Every change to a session is one Lua script on that session's keys, which share one hash slot
(app/store/keys.py), so it is atomic across replicas. Flows that also touch keys of other slots
(a contact's identity index and pending conversation, a product's dead letters) are ordered
single-slot steps, each idempotent, so a crash between two steps loses nothing and a retry of
the request finishes the flow (docs/design/cluster.md). ``after_step`` names the points between
those steps; tests crash the store there.
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, NamedTuple, TypeAlias

import redis.asyncio as redis
import structlog
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)

from app.domain import LinkEvent, NoteBudget
from app.models import ActionsPayload, SummaryPayload
from app.products import ProductConfig
from app.store import keys
from app.store.codec import StoredAction, action_digest, encode_action, in_arrival_order
from app.store.scripts import LAYOUTS, Script, ScriptCall, ScriptName, load_scripts

log = structlog.get_logger(__name__)

NoteSource = Literal["pre", "out", "summary"]
FailMode = Literal["retry", "dead", "gone"]
Client: TypeAlias = "redis.Redis | redis.RedisCluster"

# Answers that mean "not now" (a restart, a failover, a full or read-only node): 503.
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "OOM")
_SEP = "\x1f"


class StoreUnavailable(Exception):
    """Redis cannot be reached or is not answering: callers should try again later."""


class StoreError(Exception):
    """Redis answered with an error that retrying will not fix."""


class Plain(NamedTuple):
    """One plain Redis command, by redis-py method name; its first argument is its key."""

    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = {}

    @property
    def key(self) -> str:
        return str(self.args[0])


Op: TypeAlias = "ScriptCall | Plain"
# Replica confirmation of a write: none; waited for but not required (the worker's own writes:
# failing them would strand a claimed note until its lease runs out); required (a 2xx).
Wait = Literal["no", "try", "must"]


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    session_id: str
    shard: int
    accepted: int
    duplicates: int
    conversation_id: str | None
    linked_now: bool
    dropped_window: int
    dropped_cap: int
    due_at: float | None
    replayed: bool = False  # the request was applied before: nothing changed

    @property
    def linked(self) -> bool:
        return self.conversation_id is not None


LinkStatus = Literal["linked", "already_linked", "duplicate"]


@dataclass(frozen=True, slots=True)
class LinkOutcome:
    # already_linked: the link was in place (or a reply kept the old one); duplicate: this
    # webhook delivery (or request) was applied before.
    status: LinkStatus
    conversation_id: str
    previous_conversation_id: str | None
    due_at: float | None
    shard: int

    @property
    def linked(self) -> bool:
        return self.status == "linked"


@dataclass(frozen=True, slots=True)
class ContactLink:
    """A webhook that names a contact, not a session: the session found and its link, or no
    session yet (the conversation now waits for one), or a redelivery of such a wait."""

    status: Literal["session", "pending", "duplicate"]
    session_id: str | None = None
    link: LinkOutcome | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """One session's next note, leased to this process."""

    product_id: str
    session_id: str
    source: NoteSource
    conversation_id: str
    token: str
    delivery_id: str
    attempts: int
    first_failure_at: float | None
    summary: str
    members: list[bytes]
    queued_at: float  # when the note's oldest action was queued (or the link was made)

    @property
    def member(self) -> str:
        return keys.due_member(self.product_id, self.session_id)

    @property
    def keys(self) -> keys.SessionKeys:
        return keys.session_keys(self.product_id, self.session_id)

    @property
    def shard(self) -> int:
        return keys.shard_of(self.product_id, self.session_id)

    def actions(self) -> list[StoredAction]:
        return in_arrival_order(self.members)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a product's note budget allowed: ``granted`` notes may start now; the next one
    may start at ``next_free`` (epoch seconds)."""

    granted: int
    next_free: float


@dataclass(frozen=True, slots=True)
class DueSessions:
    """What one read of the due queues found: the due members, earliest first, as (shard,
    member); the shards whose read stopped at its limit (more may be due there); and when
    each shard's first member that is not due yet falls due (None: nothing queued)."""

    members: list[tuple[int, bytes]]
    full: set[int]
    later: dict[int, float | None]

    def next_due(
        self, now: float, *, busy: Iterable[int] = (), held: Iterable[tuple[int, float]] = ()
    ) -> dict[int, float | None]:
        """When to look at each shard again: now if more is due there than was taken
        (``full``, or a ``busy`` shard with due members left), else at its next member's
        time, or a ``held`` member's new time (``(shard, until)``) if that is sooner."""
        soonest: dict[int, float | None] = dict(self.later)
        for shard, until in held:
            current = soonest.get(shard)
            soonest[shard] = until if current is None else min(current, until)
        for shard in {*self.full, *busy}:
            soonest[shard] = now
        return soonest


@dataclass(frozen=True, slots=True)
class ClaimRound:
    """What one look at the due queues found: the claims, and per shard looked at, when its
    next session falls due (None: nothing queued)."""

    claims: list[Claim]
    next_due: dict[int, float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PostedNote:
    kind: Literal["actions", "summary"]
    conversation_id: str
    note_id: str

    @classmethod
    def parse(cls, entry: bytes) -> PostedNote:
        tag, conversation_id, note_id = entry.decode().split(_SEP, 2)
        return cls("summary" if tag == "s" else "actions", conversation_id, note_id)


@dataclass(frozen=True, slots=True)
class AckOutcome:
    acked: bool  # False: the lease was lost to another process
    replaced: list[PostedNote]  # action notes a confirmed summary replaces (to redact)
    due_at: float | None = None  # when the session's next note is due


@dataclass(frozen=True, slots=True)
class SessionState:
    """A session's link and state machine, with FSM timeouts applied as of the read."""

    session_id: str
    product_id: str
    conversation_id: str | None
    user_id: str | None
    email: str | None
    current_state: str
    last_interaction_at: float | None
    cooldown_until: float | None
    can_deliver_proactive: bool
    proactive_reason: str
    pending_actions: int
    queued_actions: int
    created_at: float | None
    updated_at: float | None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _due(value: int) -> float | None:
    return None if value < 0 else value / 1000


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _text(value: bytes | str | None) -> str | None:
    if value is None or value in (b"", ""):
        return None
    return value.decode() if isinstance(value, bytes) else value


def _contact(batch: ActionsPayload) -> tuple[str | None, str | None]:
    user_id = batch.user_id or next((a.user_id for a in batch.actions if a.user_id), None)
    email = batch.email or next((a.email for a in batch.actions if a.email), None)
    return user_id, email.lower() if email else None


def _contact_keys(
    key: Callable[..., str], product_id: str, user_id: str | None, email: str | None
) -> list[str]:
    found = [key(product_id, user_id=user_id)] if user_id else []
    return found + ([key(product_id, email=email)] if email else [])


def _pending_conversation(value: bytes | None) -> str | None:
    return None if value is None else value.decode().partition(_SEP)[0] or None


def _ingest_outcome(session_id: str, shard: int, r: list[Any]) -> IngestOutcome:
    return IngestOutcome(
        session_id=session_id,
        shard=shard,
        accepted=int(r[0]),
        duplicates=int(r[1]),
        conversation_id=_text(r[2]),
        linked_now=r[3] == b"new",
        dropped_window=int(r[4]),
        dropped_cap=int(r[5]),
        due_at=_due(int(r[6])),
        replayed=r[3] == b"replay",
    )


def _summary_outcome(payload: SummaryPayload, shard: int, r: list[Any]) -> IngestOutcome:
    replayed = int(r[2]) == 1
    return IngestOutcome(
        session_id=payload.sid,
        shard=shard,
        accepted=0 if replayed else 1,
        duplicates=1 if replayed else 0,
        conversation_id=_text(r[0]),
        linked_now=False,
        dropped_window=0,
        dropped_cap=0,
        due_at=_due(int(r[1])),
        replayed=replayed,
    )


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, OSError, SlotNotCoveredError)):
        return True
    if isinstance(exc, ResponseError):
        return isinstance(exc, ClusterError) or str(exc).startswith(_TRANSIENT)
    return isinstance(exc, RedisError)


def _translated(exc: BaseException) -> Exception:
    if _unavailable(exc):
        return StoreUnavailable(str(exc) or type(exc).__name__)
    return StoreError(str(exc) or type(exc).__name__)


# What redis-py's cluster client can raise when a connection is torn down under a command (it
# closes every connection while it re-reads the slot map after a failover, and a command in
# flight on another task then meets a closed transport): the node is going away, so the store
# is unavailable for now, exactly as for a connection error.
_TORN_DOWN = (RuntimeError, AttributeError)


async def _network(call: Awaitable[Any]) -> Any:
    """Await a redis-py call; its failures while a connection is torn down are unavailability."""
    try:
        return await call
    except _TORN_DOWN as exc:
        raise StoreUnavailable(f"connection torn down: {type(exc).__name__}: {exc}") from exc


async def _no_step(step: str) -> None:
    pass


class RedisStore:
    """The session store. Methods take ``now`` (epoch seconds) so callers own the clock.

    ``wait_replicas``: writes that answer a client (ingest, links, summaries, replays) return
    only after that many replicas confirmed them (``WAIT``), so a failover cannot lose what the
    service acknowledged. The worker's claims and acknowledgements wait too (so a failover
    rarely posts a note twice) but go on when fewer replicas confirm: failing a claim whose
    lease is already written would hold its note back until the lease runs out.
    ``shebang``: run the scripts in Redis 7's strict mode (every key
    declared); by default on, except on the embedded store, which does not support it.
    """

    def __init__(
        self,
        client: Client,
        *,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
        shebang: bool | None = None,
        after_step: Callable[[str], Awaitable[None]] = _no_step,
    ) -> None:
        self._redis = client
        self._cluster = isinstance(client, redis.RedisCluster)
        if shebang is None:  # the embedded store (fakeredis) is the one client without it
            shebang = not type(client).__module__.startswith("fakeredis")
        self._scripts: dict[ScriptName, Script] = load_scripts(shebang=shebang)
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = _ms(wait_timeout_s)
        self._after_step = after_step
        self._project_urls = _ProjectUrls()

    # -- running commands -------------------------------------------------------------------

    def _queue(self, pipe: Any, op: Op, *, by_sha: bool) -> None:
        if isinstance(op, Plain):
            getattr(pipe, op.method)(*op.args, **op.kwargs)
            return
        script = self._scripts[op.name]
        head = ("EVALSHA", script.sha) if by_sha else ("EVAL", script.source)
        # execute_command, not evalsha(): redis-py's cluster pipeline refuses evalsha().
        pipe.execute_command(*head, len(op.keys), *op.keys, *op.args)

    async def _wait_targets(self, ops: Sequence[Op]) -> list[Any]:
        """The nodes the ops' writes go to (one WAIT each); [None] on a single server."""
        if not self._cluster:
            return [None]
        cluster: redis.RedisCluster = self._redis  # type: ignore[assignment]
        await _network(cluster.initialize())
        nodes: dict[str, Any] = {}
        for op in ops:
            node = cluster.get_node_from_key(op.keys[0] if isinstance(op, ScriptCall) else op.key)
            if node is not None:
                nodes.setdefault(node.name, node)
        return list(nodes.values())

    async def _one(self, op: Op, *, by_sha: bool) -> Any:
        """A single op without a pipeline (the common case); its error is its result."""
        try:
            if isinstance(op, Plain):
                method = getattr(self._redis, op.method)
                return await _network(method(*op.args, **op.kwargs))
            script = self._scripts[op.name]
            head = ("EVALSHA", script.sha) if by_sha else ("EVAL", script.source)
            return await _network(
                self._redis.execute_command(*head, len(op.keys), *op.keys, *op.args)
            )
        except ResponseError as exc:
            return exc

    async def _pipeline(self, ops: Sequence[Op], *, by_sha: bool, wait: Wait) -> list[Any]:
        waits = await self._wait_targets(ops) if wait != "no" and self._wait_replicas else []
        if len(ops) == 1 and not waits:
            return [await self._one(ops[0], by_sha=by_sha)]
        pipe = self._redis.pipeline(transaction=False)
        for op in ops:
            self._queue(pipe, op, by_sha=by_sha)
        for node in waits:
            # The same connection as the writes (a cluster pipeline sends one node's commands
            # on one connection, in order): WAIT counts exactly those writes.
            extra = {} if node is None else {"target_nodes": node}
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms, **extra)
        results = list(await _network(pipe.execute(raise_on_error=False)))
        for confirmed in results[len(ops) :]:
            if isinstance(confirmed, BaseException):
                raise confirmed
            if int(confirmed) < self._wait_replicas:
                shortfall = f"{confirmed} of {self._wait_replicas} replicas confirmed the write"
                if wait == "must":
                    raise StoreUnavailable(shortfall + " in time")
                log.warning("store_write_unconfirmed", detail=shortfall)
        return results[: len(ops)]

    async def _send(self, ops: Sequence[Op], *, wait: Wait = "no") -> list[Any]:
        """Run ops in one round trip per node (each script atomic) and return their results.
        A node that lost the scripts (a restart, a promoted replica) answers NOSCRIPT: only
        those calls run again, by source. ``wait``: for replicas, see the class docstring."""
        if not ops:
            return []
        try:
            results = await self._pipeline(ops, by_sha=True, wait=wait)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                again = [ops[i] for i in missing]
                redone = await self._pipeline(again, by_sha=False, wait=wait)
                for i, result in zip(missing, redone, strict=True):
                    results[i] = result
        except StoreUnavailable:
            raise
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _translated(exc) from exc
        for result in results:
            if isinstance(result, BaseException):
                raise _translated(result) from result
        return results

    async def run(self, call: ScriptCall, *, wait: Wait = "no") -> Any:
        return (await self._send([call], wait=wait))[0]

    async def _read(self, coro: Any) -> Any:
        """Await one plain Redis call, translating its failure."""
        try:
            return await _network(coro)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _translated(exc) from exc

    async def load_scripts(self) -> None:
        """Load every script (on a cluster: on every primary). Optional: a node without them
        gets them on first use."""
        for script in self._scripts.values():
            await self._read(self._redis.script_load(script.source))

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, RedisClusterException, OSError, *_TORN_DOWN):
            return False

    # -- intake -----------------------------------------------------------------------------

    async def ingest(
        self,
        product: ProductConfig,
        payloads: Sequence[ActionsPayload | SummaryPayload],
        *,
        now: float,
        replay_fields: Sequence[bytes] | None = None,
    ) -> list[IngestOutcome]:
        """Store a request's payloads, in order, durably.

        Steps: (1) each payload's session script (its actions, its replay record ``
        replay_fields[i]``, a link named by the batch) and the contact's identity index, in
        one round trip; (2) for a session still unlinked, read the contact's pending
        conversation; (3) link it; (4) forget the pending conversation. A replayed request
        changes nothing in step 1 and runs the later steps again, so a crash after any step
        heals when the sender retries."""
        fields = replay_fields or [b""] * len(payloads)
        ops: list[Op] = []
        for p, replay in zip(payloads, fields, strict=True):
            if isinstance(p, ActionsPayload):
                ops.append(self._ingest_call(product, p, now, replay))
            else:
                ops.append(self._summary_call(product, p, now, replay))
        identities = self._identity_writes(product.id, payloads)
        results = await self._send([*ops, *identities], wait="must")
        outcomes = [
            _ingest_outcome(p.sid, keys.shard_of(product.id, p.sid), r)
            if isinstance(p, ActionsPayload)
            else _summary_outcome(p, keys.shard_of(product.id, p.sid), r)
            for p, r in zip(payloads, results[: len(ops)], strict=True)
        ]
        await self._after_step("ingest.stored")
        return await self._link_pending(product, payloads, outcomes, now=now)

    def _identity_writes(
        self, product_id: str, payloads: Sequence[ActionsPayload | SummaryPayload]
    ) -> list[Op]:
        latest: dict[str, str] = {}  # the last batch of a contact in the request wins
        for p in payloads:
            if isinstance(p, ActionsPayload):
                for key in _contact_keys(keys.identity_key, product_id, *_contact(p)):
                    latest[key] = p.sid
        return [
            Plain("set", (key, sid), {"ex": keys.IDENTITY_TTL_S}) for key, sid in latest.items()
        ]

    async def _link_pending(
        self,
        product: ProductConfig,
        payloads: Sequence[ActionsPayload | SummaryPayload],
        outcomes: list[IngestOutcome],
        *,
        now: float,
    ) -> list[IngestOutcome]:
        """Steps 2 to 4 of :meth:`ingest`: link unlinked sessions to the conversation a
        webhook left for their contact."""
        waiting: list[tuple[int, list[str]]] = []
        for i, (p, outcome) in enumerate(zip(payloads, outcomes, strict=True)):
            # A replay looks again even when linked: its first try may have crashed between
            # the link and forgetting the pending conversation.
            if isinstance(p, ActionsPayload) and (not outcome.linked or outcome.replayed):
                pending = _contact_keys(keys.pending_key, product.id, *_contact(p))
                if pending:
                    waiting.append((i, pending))
        if not waiting:
            return outcomes
        reads = [Plain("get", (key,)) for _, pending in waiting for key in pending]
        values = dict(zip((op.key for op in reads), await self._send(reads), strict=True))
        await self._after_step("ingest.pending_read")
        for i, pending in waiting:
            conversation = next(
                (c for key in pending if (c := _pending_conversation(values[key]))), None
            )
            if conversation is None:
                continue
            if outcomes[i].linked:  # a replay: finish the interrupted flow, link nothing
                if outcomes[i].conversation_id == conversation:
                    await self._forget_pending(pending, conversation)
                continue
            link = await self.link(
                product,
                session_id=outcomes[i].session_id,
                conversation_id=conversation,
                event=LinkEvent.NEW,
                now=now,
            )
            await self._after_step("ingest.linked")
            await self._forget_pending(pending, conversation)
            await self._after_step("ingest.pending_forgotten")
            if link.status != "duplicate":
                outcomes[i] = replace(
                    outcomes[i],
                    conversation_id=link.conversation_id,
                    linked_now=link.linked,
                    due_at=link.due_at if link.linked else outcomes[i].due_at,
                )
        return outcomes

    async def _forget_pending(self, pending: Iterable[str], conversation_id: str) -> None:
        await self._send(
            [
                LAYOUTS["unpend"].call(
                    keys={"pending": key}, args={"conversation_id": conversation_id}
                )
                for key in pending
            ]
        )

    def _ingest_call(
        self, product: ProductConfig, batch: ActionsPayload, now: float, replay: bytes
    ) -> ScriptCall:
        user_id, email = _contact(batch)
        conversation = batch.conversation_id or next(
            (a.conversation_id for a in batch.actions if a.conversation_id), None
        )
        tail: list[Any] = []
        for action in batch.actions:
            tail += [action_digest(action), repr(action.started_at), encode_action(action)]
        k = keys.session_keys(product.id, batch.sid)
        return self._session_call(
            "ingest",
            k,
            args={
                "now_ms": _ms(now),
                "member": k.member,
                "user_id": user_id or "",
                "email": email or "",
                "conversation_id": conversation or "",
                "window_s": repr(product.pre_link_window_s),
                "cap": product.max_pending_actions,
                **self._timings(product),
                "buffer_ttl_s": keys.UNLINKED_BUFFER_TTL_S,
                "replay_field": replay,
            },
            rest=tail,
        )

    def _summary_call(
        self, product: ProductConfig, payload: SummaryPayload, now: float, replay: bytes
    ) -> ScriptCall:
        k = keys.session_keys(product.id, payload.sid)
        return self._session_call(
            "summary",
            k,
            args={
                "now_ms": _ms(now),
                "member": k.member,
                "summary": payload.summary,
                **self._timings(product),
                "replay_field": replay,
            },
        )

    @staticmethod
    def _session_call(
        name: ScriptName,
        k: keys.SessionKeys,
        *,
        args: Mapping[str, Any],
        rest: Sequence[Any] | None = None,
    ) -> ScriptCall:
        """A call of a script on one session: its keys are the ones its layout declares."""
        layout = LAYOUTS[name]
        return layout.call(keys={n: getattr(k, n) for n in layout.keys}, args=args, rest=rest)

    @staticmethod
    def _timings(product: ProductConfig) -> dict[str, Any]:
        return {
            "debounce_ms": _ms(product.post_link_debounce_s),
            "max_wait_ms": _ms(product.post_link_max_wait_s),
            "session_ttl_s": keys.SESSION_TTL_S,
        }

    # -- linking ----------------------------------------------------------------------------

    async def link(
        self,
        product: ProductConfig,
        *,
        session_id: str,
        conversation_id: str,
        event: LinkEvent | None,
        now: float,
        user_message: bool = False,
        delivery_id: str | None = None,
        replay_field: bytes = b"",
    ) -> LinkOutcome:
        """Link; a user message also moves the FSM to reactive_assistance. A webhook's
        ``delivery_id`` (or a request's ``replay_field``) is recorded with the link, in the
        session's seen hash: a redelivery or a replay is reported as a duplicate."""
        k = keys.session_keys(product.id, session_id)
        record = replay_field or (b"wh:" + delivery_id.encode() if delivery_id else b"")
        call = self._session_call(
            "link",
            k,
            args={
                "now_ms": _ms(now),
                "member": k.member,
                "conversation_id": conversation_id,
                "event": event.value if event else "",
                **self._timings(product),
                "user_message": int(user_message),
                "replay_field": record,
            },
        )
        status, previous, due = await self.run(call, wait="must")
        linked = status == b"linked"
        return LinkOutcome(
            status=status.decode(),
            conversation_id=conversation_id if linked else (_text(previous) or conversation_id),
            previous_conversation_id=_text(previous) if linked else None,
            due_at=_due(int(due)),
            shard=k.shard,
        )

    async def link_contact(
        self,
        product: ProductConfig,
        *,
        user_id: str | None,
        email: str | None,
        conversation_id: str,
        event: LinkEvent | None,
        now: float,
        delivery_id: str | None = None,
    ) -> ContactLink:
        """A webhook names a contact: link the contact's latest session, or leave the
        conversation for the contact's next batch.

        Steps: (1) write the pending conversation (with the delivery id); (2) read the identity
        index; (3) link the session found (recording the delivery id); (4) forget the pending
        conversation. Writing before reading, as the ingest does in the other order (identity
        first, pending second), means a webhook and a first batch racing always meet: at least
        one of them sees the other's write."""
        email = email.lower() if email else None
        pending = _contact_keys(keys.pending_key, product.id, user_id, email)
        value = f"{conversation_id}{_SEP}{delivery_id or ''}".encode()
        writes = [
            Plain("set", (key, value), {"ex": keys.PENDING_IDENTITY_TTL_S, "get": True})
            for key in pending
        ]
        before = await self._send(writes, wait="must")
        await self._after_step("webhook.pending_written")
        reads = [
            Plain("get", (key,))
            for key in _contact_keys(keys.identity_key, product.id, user_id, email)
        ]
        session_id = next((_text(s) for s in await self._send(reads) if s), None)
        await self._after_step("webhook.identity_read")
        if session_id is None:
            redelivered = bool(delivery_id and before) and all(old == value for old in before)
            return ContactLink("duplicate" if redelivered else "pending")
        outcome = await self.link(
            product,
            session_id=session_id,
            conversation_id=conversation_id,
            event=event,
            now=now,
            user_message=True,
            delivery_id=delivery_id,
        )
        await self._after_step("webhook.linked")
        await self._forget_pending(pending, conversation_id)
        return ContactLink("session", session_id, outcome)

    async def forget_contact_pending(
        self,
        product: ProductConfig,
        *,
        user_id: str | None,
        email: str | None,
        conversation_id: str,
    ) -> None:
        """Drop the contact's pending conversation (if it is still this one): the webhook's
        session was found another way."""
        email = email.lower() if email else None
        pending = _contact_keys(keys.pending_key, product.id, user_id, email)
        await self._forget_pending(pending, conversation_id)

    # -- delivery ---------------------------------------------------------------------------

    async def claim_due(
        self,
        *,
        now: float,
        limit: int,
        lease_s: float,
        max_note_actions: int,
        shards: Iterable[int] | None = None,
    ) -> ClaimRound:
        """Lease up to ``limit`` due sessions, earliest first, from the given shards' due
        queues (all by default): ``due_sessions``, then ``claim`` of the earliest."""
        due = await self.due_sessions(now=now, limit=limit, shards=shards)
        taken = due.members[:limit]
        claims = await self.claim(
            [member for _, member in taken],
            now=now,
            lease_s=lease_s,
            max_note_actions=max_note_actions,
        )
        left_over = {shard for shard, _ in due.members[limit:]}
        return ClaimRound(claims, due.next_due(now, busy=left_over))

    async def due_sessions(
        self, *, now: float, limit: int, shards: Iterable[int] | None = None
    ) -> DueSessions:
        """Up to ``limit`` due members of each given shard's queue (all by default), earliest
        first over all of them, and when each shard's next member falls due. One round trip;
        nothing is leased (``claim`` does that)."""
        looked = list(range(keys.SHARDS) if shards is None else shards)
        now_ms = _ms(now)
        heads = [
            Plain(
                "zrangebyscore",
                (keys.due_key(k), "-inf", now_ms),
                {"start": 0, "num": limit, "withscores": True},
            )
            for k in looked
        ] + [
            Plain(
                "zrangebyscore",
                (keys.due_key(k), f"({now_ms}", "+inf"),
                {"start": 0, "num": 1, "withscores": True},
            )
            for k in looked
        ]
        found = await self._send(heads)
        due_now, later = found[: len(looked)], found[len(looked) :]
        candidates = sorted(
            (score, shard, member)
            for shard, members in zip(looked, due_now, strict=True)
            for member, score in members
        )
        return DueSessions(
            members=[(shard, member) for _, shard, member in candidates],
            full={
                shard
                for shard, members in zip(looked, due_now, strict=True)
                if len(members) >= limit
            },
            later={
                shard: float(head[0][1]) / 1000 if head else None
                for shard, head in zip(looked, later, strict=True)
            },
        )

    async def claim(
        self, members: Sequence[bytes], *, now: float, lease_s: float, max_note_actions: int
    ) -> list[Claim]:
        """Lease these due members' sessions (a session another process claimed meanwhile is
        skipped). Dead letters a crash left unfiled are filed on the way."""
        if not members:
            return []
        return await self._claim_sessions(list(members), _ms(now), _ms(lease_s), max_note_actions)

    async def _claim_sessions(
        self, members: list[bytes], now_ms: int, lease_ms: int, max_note_actions: int
    ) -> list[Claim]:
        prefix = uuid.uuid4().hex
        sessions = [keys.split_due_member(m.decode()) for m in members]
        calls = []
        for n, (product_id, session_id) in enumerate(sessions):
            k = keys.session_keys(product_id, session_id)
            calls.append(
                self._session_call(
                    "claim_session",
                    k,
                    args={
                        "now_ms": now_ms,
                        "member": k.member,
                        "token": f"{prefix}:{n}",
                        "lease_ms": lease_ms,
                        "max_note_actions": max_note_actions,
                    },
                )
            )
        claims: list[Claim] = []
        filed_only: list[bytes] = []
        for member, (product_id, session_id), row in zip(
            members, sessions, await self._send(calls, wait="try"), strict=True
        ):
            if not row:
                continue
            if row[9]:
                await self._file_dead_letters(product_id, session_id, row[9])
            if row[0]:
                claims.append(self._claim(product_id, session_id, row))
            else:
                filed_only.append(member)
        if filed_only:  # with the letters filed, claim (or unschedule) those sessions now
            claims += await self._claim_sessions(filed_only, now_ms, lease_ms, max_note_actions)
        return claims

    @staticmethod
    def _claim(product_id: str, session_id: str, row: list[Any]) -> Claim:
        source, conv, token, did, attempts, fail0, summary, members, queued_at = row[:9]
        return Claim(
            product_id=product_id,
            session_id=session_id,
            source=source.decode(),
            conversation_id=conv.decode(),
            token=token.decode(),
            delivery_id=did.decode(),
            attempts=int(attempts),
            first_failure_at=int(fail0) / 1000 if fail0 else None,
            summary=summary.decode(),
            members=list(members),
            queued_at=float(queued_at) / 1000,
        )

    async def ack(
        self,
        claim: Claim,
        product: ProductConfig,
        *,
        note_id: str | None,
        now: float,
        keep_note_id: bool = True,
    ) -> AckOutcome:
        """Record a confirmed note and schedule what is left. ``keep_note_id``: keep the note's
        id for redaction (a platform that cannot redact saves the session's notes key)."""
        k = claim.keys
        call = self._session_call(
            "ack",
            k,
            args={
                "now_ms": _ms(now),
                "member": k.member,
                "token": claim.token,
                "kind": claim.source,
                "note_id": note_id or "",
                **self._timings(product),
                "notes_kept": keys.POSTED_NOTE_IDS_KEPT if keep_note_id else 0,
                "summary": claim.summary,
                "conversation_id": claim.conversation_id,
            },
            rest=claim.members,
        )
        result = await self.run(call, wait="try")
        if not int(result[0]):
            return AckOutcome(False, [])
        return AckOutcome(True, [PostedNote.parse(e) for e in result[1]], _due(int(result[2])))

    async def fail(
        self,
        claim: Claim,
        product: ProductConfig,
        *,
        mode: FailMode,
        error: str,
        retry_at: float,
        now: float,
    ) -> tuple[bool, float | None]:
        """Record a failed note: back off, dead-letter it, or unlink a vanished conversation.
        Returns whether the lease was still ours, and when the session is due next.

        A dead letter takes three steps: the session script moves the note into the session's
        own dead hash; the letter is added to the product's list (idempotent: same entry, same
        member); the session's copy is deleted. A crash in between leaves the session due, and
        the next claim files the letter."""
        letter_id = uuid.uuid4().hex
        entry = json.dumps(
            {
                "id": letter_id,
                "session_id": claim.session_id,
                "conversation_id": claim.conversation_id,
                "kind": claim.source,
                "error": error,
                "attempts": claim.attempts + 1,
                "first_failure_at": claim.first_failure_at or now,
                "failed_at": now,
                "actions": [a.data for a in claim.actions()],
                "summary": claim.summary or None,
            },
            ensure_ascii=False,
        )
        k = claim.keys
        call = self._session_call(
            "fail",
            k,
            args={
                "now_ms": _ms(now),
                "member": k.member,
                "token": claim.token,
                "kind": claim.source,
                "mode": mode,
                "retry_at_ms": _ms(retry_at),
                "error": error,
                **self._timings(product),
                "buffer_ttl_s": keys.UNLINKED_BUFFER_TTL_S,
                "letter_id": letter_id,
                "dead_letter_entry": entry,
            },
            rest=claim.members,
        )
        result = await self.run(call, wait="try")
        if not int(result[0]):
            return False, None
        if mode == "dead":
            await self._after_step("dead.recorded")
            await self._file_dead_letters(product.id, claim.session_id, [entry.encode()])
        return True, _due(int(result[1]))

    async def _file_dead_letters(
        self, product_id: str, session_id: str, entries: Sequence[bytes]
    ) -> None:
        dead_key = keys.dead_letter_key(product_id)
        letters = [json.loads(e) for e in entries]
        await self._send(
            [
                *(
                    Plain("zadd", (dead_key, {e: _ms(letter["failed_at"])}), {"nx": True})
                    for e, letter in zip(entries, letters, strict=True)
                ),
                Plain("expire", (dead_key, keys.DEAD_LETTER_TTL_S)),
            ]
        )
        await self._after_step("dead.filed")
        session_dead = keys.session_keys(product_id, session_id).dead
        await self._send([Plain("hdel", (session_dead, *(str(x["id"]) for x in letters)))])

    # -- outbound limits --------------------------------------------------------------------

    async def take_notes(
        self, budgets: Mapping[str, tuple[int, NoteBudget]], *, now: float
    ) -> dict[str, Grant]:
        """Take up to ``wanted`` notes from each product's shared budget (``{product_id:
        (wanted, budget)}``; a negative ``wanted`` gives unused notes back). One round trip."""
        ids = list(budgets)
        calls = [
            LAYOUTS["limit"].call(
                keys={"limiter": keys.limiter_key(product_id)},
                args={
                    "now_ms": _ms(now),
                    "interval_ms": budgets[product_id][1].interval_ms,
                    "burst": budgets[product_id][1].burst,
                    "take": budgets[product_id][0],
                },
            )
            for product_id in ids
        ]
        answers = await self._send(calls)
        return {
            product_id: Grant(int(granted), float(next_free) / 1000)
            for product_id, (granted, next_free) in zip(ids, answers, strict=True)
        }

    async def note_budget_state(
        self, product_id: str, budget: NoteBudget, *, now: float
    ) -> tuple[int, float]:
        """How many notes may start now under the product's budget, and when the next one may
        (for operators: a read, nothing is taken)."""
        tat_ms = _float(_text(await self._read(self._redis.get(keys.limiter_key(product_id)))))
        now_ms = _ms(now)
        tat = max(now_ms, tat_ms if tat_ms is not None else now_ms)
        interval = budget.interval_ms
        available = math.floor((now_ms + budget.burst * interval - tat) / interval + 1e-9)
        next_free = max(now_ms, tat - (budget.burst - 1) * interval)
        return max(0, min(budget.burst, available)), next_free / 1000

    async def defer(self, held: Sequence[tuple[bytes, float]], *, now: float) -> int:
        """Hold each due member back until its time (``(member, until)``), without counting a
        failure; returns how many were held back (a leased or later member is left alone)."""
        calls = []
        for member, until in held:
            product_id, session_id = keys.split_due_member(member.decode())
            calls.append(
                self._session_call(
                    "defer",
                    keys.session_keys(product_id, session_id),
                    args={"now_ms": _ms(now), "member": member, "until_ms": _ms(until)},
                )
            )
        return sum(int(r) for r in await self._send(calls))

    async def next_due_at(self) -> float | None:
        heads = await self._send(
            [
                Plain("zrange", (keys.due_key(k), 0, 0), {"withscores": True})
                for k in range(keys.SHARDS)
            ]
        )
        scores = [float(head[0][1]) for head in heads if head]
        return min(scores) / 1000 if scores else None

    # -- waking workers in other processes ---------------------------------------------------

    async def announce(self, shards: Iterable[int]) -> None:
        """Tell the worker processes that these shards have new work (fire and forget: a
        worker that misses it finds the work at its next sweep)."""
        message = ",".join(str(k) for k in sorted(set(shards)))
        if message:
            await self._read(self._redis.publish(keys.WAKE_CHANNEL, message))

    async def announcements(self) -> AsyncIterator[list[int]]:
        """The shards api processes announce, as they come. Raises StoreUnavailable when the
        subscription's connection is lost (the caller subscribes again)."""
        pubsub = self._redis.pubsub()
        try:
            await self._read(pubsub.subscribe(keys.WAKE_CHANNEL))
            while True:
                message = await self._read(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                )
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"].decode() if isinstance(message["data"], bytes) else ""
                shards = [int(k) for k in data.split(",") if k.isdigit()]
                yield [k for k in shards if 0 <= k < keys.SHARDS]
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- session state ----------------------------------------------------------------------

    @staticmethod
    def _fsm_args(product: ProductConfig, now: float) -> dict[str, Any]:
        return {
            "now_ms": _ms(now),
            "interaction_timeout_s": repr(product.interaction_timeout_s),
            "cooldown_period_s": repr(product.cooldown_period_s),
        }

    async def session_state(
        self, product: ProductConfig, session_id: str, *, now: float
    ) -> SessionState | None:
        k = keys.session_keys(product.id, session_id)
        call = self._session_call("session", k, args=self._fsm_args(product, now))
        row = await self.run(call)
        if row is None:
            return None
        flat, pending, queued, allowed, reason = row
        fields = {k.decode(): v.decode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
        return SessionState(
            session_id=session_id,
            product_id=product.id,
            conversation_id=fields.get("conversation"),
            user_id=fields.get("user_id"),
            email=fields.get("email"),
            current_state=fields.get("fsm", "thinking"),
            last_interaction_at=_float(fields.get("last_interaction_at")),
            cooldown_until=_float(fields.get("cooldown_until")),
            can_deliver_proactive=bool(allowed),
            proactive_reason=reason.decode(),
            pending_actions=int(pending),
            queued_actions=int(queued),
            created_at=_float(fields.get("created")),
            updated_at=_float(fields.get("updated")),
        )

    async def start_proactive(
        self,
        product: ProductConfig,
        session_id: str,
        *,
        trigger_id: str,
        now: float,
        replay_field: bytes = b"",
    ) -> tuple[bool | None, str]:
        """Enter proactive_assistance if allowed: (True, "ok"), (False, reason), or
        (None, "unknown_session"). A replayed request is (False, "replayed_request")."""
        k = keys.session_keys(product.id, session_id)
        call = self._session_call(
            "proactive",
            k,
            args={
                **self._fsm_args(product, now),
                "trigger_id": trigger_id,
                "session_ttl_s": keys.SESSION_TTL_S,
                "replay_field": replay_field,
            },
        )
        code, reason = await self.run(call, wait="must")
        return (None if int(code) == -1 else int(code) == 1), reason.decode()

    # -- operations -------------------------------------------------------------------------

    async def dead_letters(self, product_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of a product, newest first."""
        raw = await self._read(
            self._redis.zrange(keys.dead_letter_key(product_id), 0, limit - 1, desc=True)
        )
        return [json.loads(entry) for entry in raw]

    async def dead_letter_count(self, product_id: str) -> int:
        return int(await self._read(self._redis.zcard(keys.dead_letter_key(product_id))))

    async def due_count(self) -> int:
        counts = await self._send([Plain("zcard", (keys.due_key(k),)) for k in range(keys.SHARDS)])
        return sum(int(c) for c in counts)

    async def replay_dead_letters(
        self, product: ProductConfig, *, now: float, limit: int = 100
    ) -> int:
        """Queue the oldest dead letters again; returns how many left the product's list.

        Two steps per letter: its session script queues it, recording the letter's id (so a
        second replay of the same letter queues nothing), then the letter leaves the list."""
        dead_key = keys.dead_letter_key(product.id)
        entries = await self._read(self._redis.zrange(dead_key, 0, limit - 1))
        if not entries:
            return 0
        await self._send([self._requeue_call(product, e, now) for e in entries], wait="must")
        await self._after_step("requeue.queued")
        removed = await self._send([Plain("zrem", (dead_key, e)) for e in entries])
        return sum(int(r) for r in removed)

    def _requeue_call(self, product: ProductConfig, entry: bytes, now: float) -> ScriptCall:
        letter = json.loads(entry)
        tail: list[Any] = []
        for action in letter.get("actions", []):
            payload = json.dumps(action, ensure_ascii=False, separators=(",", ":"))
            tail += [repr(float(action["timestamp_start"])), payload]
        k = keys.session_keys(product.id, letter["session_id"])
        return self._session_call(
            "requeue",
            k,
            args={
                "now_ms": _ms(now),
                "member": k.member,
                "summary": letter.get("summary") or "",
                **self._timings(product),
                "buffer_ttl_s": keys.UNLINKED_BUFFER_TTL_S,
                "replay_field": f"dl:{letter['id']}",
            },
            rest=tail,
        )

    async def session_view(self, product_id: str, session_id: str) -> dict[str, Any] | None:
        """Everything the store holds for one session (for operators)."""
        k = keys.session_keys(product_id, session_id)
        state, pre_members, out_members, note_ids, due_ms = await self._send(
            [
                Plain("hgetall", (k.state,)),
                Plain("zrange", (k.pre, 0, -1)),
                Plain("zrange", (k.out, 0, -1)),
                Plain("lrange", (k.notes, 0, -1)),
                Plain("zscore", (k.due, k.member)),
            ]
        )
        if not state:
            return None
        return {
            "state": {name.decode(): v.decode() for name, v in state.items()},
            "pre_link_buffer": [a.data for a in in_arrival_order(pre_members)],
            "outbox": [a.data for a in in_arrival_order(out_members)],
            "posted_notes": [asdict(PostedNote.parse(n)) for n in note_ids],
            "next_note_due_at": None if due_ms is None else due_ms / 1000,
        }

    # -- posthog project url ----------------------------------------------------------------
    # The last PostHog project URL seen in a product's events, for the replay link of the
    # at-link flush note. The store remembers in the process what it wrote (an event with an
    # unchanged URL costs no Redis call) and what it read (fresh for PROJECT_URL_FRESH_S).

    PROJECT_URL_FRESH_S = 60.0

    async def save_project_url(self, product_id: str, url: str, *, now: float) -> None:
        """Record the project URL an event of the product carried, unless this store already
        wrote that value."""
        known = self._project_urls
        if known.written.get(product_id) == url:
            return
        await self._send([Plain("set", (keys.project_url_key(product_id), url))])
        known.written[product_id] = url
        known.read[product_id] = (url, now)

    async def project_url(self, product_id: str, *, now: float) -> str | None:
        """The last project URL any replica saw in the product's events, or None; a value read
        (or written) here less than PROJECT_URL_FRESH_S ago is answered without Redis."""
        known = self._project_urls
        cached = known.read.get(product_id)
        if cached is not None and 0 <= now - cached[1] < self.PROJECT_URL_FRESH_S:
            return cached[0]
        url = _text(await self._read(self._redis.get(keys.project_url_key(product_id))))
        known.read[product_id] = (url, now)
        return url


@dataclass
class _ProjectUrls:
    """What one store knows of each product's project URL: the value it last wrote, and the
    value it last read (None: no URL known) with when it read it."""

    written: dict[str, str] = field(default_factory=dict)
    read: dict[str, tuple[str | None, float]] = field(default_factory=dict)
