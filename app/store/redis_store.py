"""All Redis access: every multi-key change is one Lua script, so it is atomic across replicas."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from app.domain import LinkEvent
from app.models import ActionsPayload, SummaryPayload
from app.products import ProductConfig
from app.store import keys
from app.store.codec import StoredAction, action_digest, encode_action, in_arrival_order
from app.store.scripts import LAYOUTS, ScriptCall, load_scripts

NoteSource = Literal["pre", "out", "summary"]
FailMode = Literal["retry", "dead", "gone"]


class StoreUnavailable(Exception):
    """Redis cannot be reached or is not answering: callers should try again later."""


class StoreError(Exception):
    """Redis answered with an error that retrying will not fix."""


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    session_id: str
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
    # webhook delivery was applied before.
    status: LinkStatus
    conversation_id: str
    previous_conversation_id: str | None
    due_at: float | None

    @property
    def linked(self) -> bool:
        return self.status == "linked"


@dataclass(frozen=True, slots=True)
class Resolution:
    """Who a webhook's contact is: a session, or none yet (the link now waits for one)."""

    status: Literal["session", "pending", "duplicate"]
    session_id: str | None = None


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

    def actions(self) -> list[StoredAction]:
        return in_arrival_order(self.members)


@dataclass(frozen=True, slots=True)
class PostedNote:
    kind: Literal["actions", "summary"]
    conversation_id: str
    note_id: str

    @classmethod
    def parse(cls, entry: bytes) -> PostedNote:
        tag, conversation_id, note_id = entry.decode().split("\x1f", 2)
        return cls("summary" if tag == "s" else "actions", conversation_id, note_id)


@dataclass(frozen=True, slots=True)
class AckOutcome:
    acked: bool  # False: the lease was lost to another process
    replaced: list[PostedNote]  # action notes a confirmed summary replaces (to redact)


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


def _ingest_outcome(session_id: str, r: list[Any]) -> IngestOutcome:
    return IngestOutcome(
        session_id=session_id,
        accepted=int(r[0]),
        duplicates=int(r[1]),
        conversation_id=_text(r[2]),
        linked_now=r[3] == b"new",
        dropped_window=int(r[4]),
        dropped_cap=int(r[5]),
        due_at=_due(int(r[6])),
        replayed=r[3] == b"replay",
    )


def _summary_outcome(payload: SummaryPayload, r: list[Any]) -> IngestOutcome:
    replayed = int(r[2]) == 1
    return IngestOutcome(
        session_id=payload.sid,
        accepted=0 if replayed else 1,
        duplicates=1 if replayed else 0,
        conversation_id=_text(r[0]),
        linked_now=False,
        dropped_window=0,
        dropped_cap=0,
        due_at=_due(int(r[1])),
        replayed=replayed,
    )


class RedisStore:
    """The session store. Methods take ``now`` (epoch seconds) so callers own the clock."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._scripts = load_scripts()

    async def _evalsha_all(self, calls: Sequence[ScriptCall]) -> Any:
        pipe = self._redis.pipeline(transaction=False)
        for name, script_keys, args in calls:
            pipe.evalsha(self._scripts[name].sha, len(script_keys), *script_keys, *args)
        return await pipe.execute()

    async def _evalsha(self, calls: Sequence[ScriptCall]) -> Any:
        if len(calls) == 1:  # the common case: no pipeline to build
            name, script_keys, args = calls[0]
            sha = self._scripts[name].sha
            return [await self._redis.evalsha(sha, len(script_keys), *script_keys, *args)]
        return await self._evalsha_all(calls)

    async def run_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run scripts in one round trip (each one atomic); loads them after a Redis restart."""
        try:
            try:
                return list(await self._evalsha(calls))
            except NoScriptError:
                await self.load_scripts()
                return list(await self._evalsha(calls))
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        except ResponseError as exc:
            if str(exc).startswith(("LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN")):
                raise StoreUnavailable(str(exc)) from exc
            raise StoreError(str(exc)) from exc
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def run(self, call: ScriptCall) -> Any:
        return (await self.run_many([call]))[0]

    async def _read(self, coro: Any) -> Any:
        """Await one plain Redis call, translating its failure."""
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def load_scripts(self) -> None:
        for script in self._scripts.values():
            await self._read(self._redis.script_load(script.source))

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
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
        """Store a request's payloads in order: one script each, one round trip for all.
        ``replay_fields[i]`` records payload ``i`` with its session, atomically with its
        effect, so a replayed request is recognised payload by payload and changes nothing."""
        fields = replay_fields or [b""] * len(payloads)
        calls = [
            self._ingest_call(product, p, now, replay)
            if isinstance(p, ActionsPayload)
            else self._summary_call(product, p, now, replay)
            for p, replay in zip(payloads, fields, strict=True)
        ]
        results = await self.run_many(calls)
        return [
            _ingest_outcome(p.sid, r) if isinstance(p, ActionsPayload) else _summary_outcome(p, r)
            for p, r in zip(payloads, results, strict=True)
        ]

    def _ingest_call(
        self, product: ProductConfig, batch: ActionsPayload, now: float, replay: bytes
    ) -> ScriptCall:
        pid, sid = product.id, batch.sid
        user_id = batch.user_id or next((a.user_id for a in batch.actions if a.user_id), None)
        email = batch.email or next((a.email for a in batch.actions if a.email), None)
        conversation = batch.conversation_id or next(
            (a.conversation_id for a in batch.actions if a.conversation_id), None
        )
        state, pre, out, seen = keys.session_keys(pid, sid)[:4]
        tail: list[Any] = []
        for action in batch.actions:
            tail += [action_digest(action), repr(action.started_at), encode_action(action)]
        return LAYOUTS["ingest"].call(
            keys={
                "state": state,
                "pre": pre,
                "out": out,
                "seen": seen,
                "due": keys.DUE,
                "id_user": keys.identity_key(pid, user_id=user_id) if user_id else "",
                "id_email": keys.identity_key(pid, email=email) if email else "",
                "pending_user": keys.pending_key(pid, user_id=user_id) if user_id else "",
                "pending_email": keys.pending_key(pid, email=email) if email else "",
            },
            args={
                "now_ms": _ms(now),
                "member": keys.due_member(pid, sid),
                "session_id": sid,
                "user_id": user_id or "",
                "email": (email or "").lower(),
                "conversation_id": conversation or "",
                "window_s": repr(product.pre_link_window_s),
                "cap": product.max_pending_actions,
                **self._timings(product),
                "buffer_ttl_s": keys.UNLINKED_BUFFER_TTL_S,
                "identity_ttl_s": keys.IDENTITY_TTL_S,
                "replay_field": replay,
            },
            rest=tail,
        )

    def _summary_call(
        self, product: ProductConfig, payload: SummaryPayload, now: float, replay: bytes
    ) -> ScriptCall:
        state, pre, out, seen = keys.session_keys(product.id, payload.sid)[:4]
        return LAYOUTS["summary"].call(
            keys={"state": state, "pre": pre, "out": out, "due": keys.DUE, "seen": seen},
            args={
                "now_ms": _ms(now),
                "member": keys.due_member(product.id, payload.sid),
                "summary": payload.summary,
                **self._timings(product),
                "replay_field": replay,
            },
        )

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
        ``delivery_id`` is recorded with the link (24 h), and so is a request's
        ``replay_field``: a redelivery or a replay is reported as a duplicate."""
        state, pre, out, seen = keys.session_keys(product.id, session_id)[:4]
        delivery = keys.webhook_dedupe_key(product.id, delivery_id) if delivery_id else ""
        call = LAYOUTS["link"].call(
            keys={
                "state": state,
                "pre": pre,
                "out": out,
                "due": keys.DUE,
                "delivery": delivery,
                "seen": seen,
            },
            args={
                "now_ms": _ms(now),
                "member": keys.due_member(product.id, session_id),
                "conversation_id": conversation_id,
                "event": event.value if event else "",
                **self._timings(product),
                "user_message": int(user_message),
                "dedupe_ttl_s": keys.WEBHOOK_DEDUPE_TTL_S,
                "replay_field": replay_field,
            },
        )
        status, previous, due = await self.run(call)
        linked = status == b"linked"
        return LinkOutcome(
            status=status.decode(),
            conversation_id=conversation_id if linked else (_text(previous) or conversation_id),
            previous_conversation_id=_text(previous) if linked else None,
            due_at=_due(int(due)),
        )

    async def resolve_session(
        self,
        product_id: str,
        *,
        user_id: str | None,
        email: str | None,
        conversation_id: str,
        delivery_id: str | None = None,
    ) -> Resolution:
        """The contact's latest session; when none is known, remember the conversation for the
        contact (and record the webhook's ``delivery_id`` with it)."""
        call = LAYOUTS["resolve"].call(
            keys={
                "id_user": keys.identity_key(product_id, user_id=user_id) if user_id else "",
                "id_email": keys.identity_key(product_id, email=email) if email else "",
                "pending_user": keys.pending_key(product_id, user_id=user_id) if user_id else "",
                "pending_email": keys.pending_key(product_id, email=email) if email else "",
                "delivery": keys.webhook_dedupe_key(product_id, delivery_id) if delivery_id else "",
            },
            args={
                "conversation_id": conversation_id,
                "pending_ttl_s": keys.PENDING_IDENTITY_TTL_S,
                "has_user": int(bool(user_id)),
                "has_email": int(bool(email)),
                "dedupe_ttl_s": keys.WEBHOOK_DEDUPE_TTL_S,
            },
        )
        row = await self.run(call)
        return Resolution(row[0].decode(), _text(row[1]) if len(row) > 1 else None)

    # -- delivery ---------------------------------------------------------------------------

    async def claim_due(
        self, *, now: float, limit: int, lease_s: float, max_note_actions: int
    ) -> list[Claim]:
        call = LAYOUTS["claim"].call(
            keys={"due": keys.DUE},
            args={
                "now_ms": _ms(now),
                "limit": limit,
                "lease_ms": _ms(lease_s),
                "token_prefix": uuid.uuid4().hex + ":",
                "max_note_actions": max_note_actions,
            },
        )
        rows = await self.run(call)
        return [self._claim(row) for row in rows]

    @staticmethod
    def _claim(row: list[Any]) -> Claim:
        member, source, conv, token, did, attempts, fail0, summary, members, queued_at = row
        product_id, session_id = keys.split_due_member(member.decode())
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
        self, claim: Claim, product: ProductConfig, *, note_id: str | None, now: float
    ) -> AckOutcome:
        """Record a confirmed note and schedule what is left."""
        call = LAYOUTS["ack"].call(
            keys={"due": keys.DUE},
            args={
                "now_ms": _ms(now),
                "member": claim.member,
                "token": claim.token,
                "kind": claim.source,
                "note_id": note_id or "",
                **self._timings(product),
                "notes_kept": keys.POSTED_NOTE_IDS_KEPT,
                "summary": claim.summary,
                "conversation_id": claim.conversation_id,
            },
            rest=claim.members,
        )
        result = await self.run(call)
        replaced = [PostedNote.parse(e) for e in result[1]] if len(result) > 1 else []
        return AckOutcome(bool(result[0]), replaced)

    async def fail(
        self,
        claim: Claim,
        product: ProductConfig,
        *,
        mode: FailMode,
        error: str,
        retry_at: float,
        now: float,
    ) -> bool:
        """Record a failed note: back off, dead-letter it, or unlink a vanished conversation."""
        entry = json.dumps(
            {
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
        call = LAYOUTS["fail"].call(
            keys={"due": keys.DUE, "dead_letters": keys.dead_letter_key(product.id)},
            args={
                "now_ms": _ms(now),
                "member": claim.member,
                "token": claim.token,
                "kind": claim.source,
                "mode": mode,
                "retry_at_ms": _ms(retry_at),
                "error": error,
                **self._timings(product),
                "buffer_ttl_s": keys.UNLINKED_BUFFER_TTL_S,
                "dead_letter_entry": entry,
                "dead_letter_ttl_s": keys.DEAD_LETTER_TTL_S,
            },
            rest=claim.members,
        )
        return bool(await self.run(call))

    async def next_due_at(self) -> float | None:
        head = await self._read(self._redis.zrange(keys.DUE, 0, 0, withscores=True))
        return float(head[0][1]) / 1000 if head else None

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
        state_key, pre, out = keys.session_keys(product.id, session_id)[:3]
        call = LAYOUTS["session"].call(
            keys={"state": state_key, "pre": pre, "out": out}, args=self._fsm_args(product, now)
        )
        row = await self.run(call)
        if row is None:
            return None
        flat, pending, queued, allowed, reason = row
        fields = {k.decode(): v.decode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
        return SessionState(
            session_id=session_id,
            product_id=product.id,
            conversation_id=fields.get("conv"),
            user_id=fields.get("uid"),
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
        state_key, _, _, seen, _ = keys.session_keys(product.id, session_id)
        call = LAYOUTS["proactive"].call(
            keys={"state": state_key, "seen": seen},
            args={
                **self._fsm_args(product, now),
                "trigger_id": trigger_id,
                "session_ttl_s": keys.SESSION_TTL_S,
                "replay_field": replay_field,
            },
        )
        code, reason = await self.run(call)
        return (None if int(code) == -1 else int(code) == 1), reason.decode()

    # -- operations -------------------------------------------------------------------------

    async def dead_letters(self, product_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of a product, newest first."""
        raw = await self._read(self._redis.lrange(keys.dead_letter_key(product_id), 0, limit - 1))
        return [json.loads(entry) for entry in raw]

    async def dead_letter_count(self, product_id: str) -> int:
        return int(await self._read(self._redis.llen(keys.dead_letter_key(product_id))))

    async def due_count(self) -> int:
        return int(await self._read(self._redis.zcard(keys.DUE)))

    async def replay_dead_letters(
        self, product: ProductConfig, *, now: float, limit: int = 100
    ) -> int:
        """Queue the oldest dead letters again; returns how many were requeued."""
        dead_key = keys.dead_letter_key(product.id)
        entries = await self._read(self._redis.lrange(dead_key, -limit, -1))
        calls = [self._requeue_call(product, entry, now) for entry in reversed(entries)]
        results = await self.run_many(calls) if calls else []
        return sum(int(r) for r in results)

    def _requeue_call(self, product: ProductConfig, entry: bytes, now: float) -> ScriptCall:
        letter = json.loads(entry)
        tail: list[Any] = []
        for action in letter.get("actions", []):
            payload = json.dumps(action, ensure_ascii=False, separators=(",", ":"))
            tail += [repr(float(action["timestamp_start"])), payload]
        return LAYOUTS["requeue"].call(
            keys={"dead_letters": keys.dead_letter_key(product.id), "due": keys.DUE},
            args={
                "now_ms": _ms(now),
                "member": keys.due_member(product.id, letter["session_id"]),
                "entry": entry,
                "summary": letter.get("summary") or "",
                **self._timings(product),
                "buffer_ttl_s": keys.UNLINKED_BUFFER_TTL_S,
            },
            rest=tail,
        )

    async def session_view(self, product_id: str, session_id: str) -> dict[str, Any] | None:
        """Everything the store holds for one session (for operators)."""
        state_key, pre, out, _, notes = keys.session_keys(product_id, session_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(state_key)
        pipe.zrange(pre, 0, -1)
        pipe.zrange(out, 0, -1)
        pipe.lrange(notes, 0, -1)
        pipe.zscore(keys.DUE, keys.due_member(product_id, session_id))
        state, pre_members, out_members, note_ids, due_ms = await self._read(pipe.execute())
        if not state:
            return None
        return {
            "state": {k.decode(): v.decode() for k, v in state.items()},
            "pre_link_buffer": [a.data for a in in_arrival_order(pre_members)],
            "outbox": [a.data for a in in_arrival_order(out_members)],
            "posted_notes": [asdict(PostedNote.parse(n)) for n in note_ids],
            "next_note_due_at": None if due_ms is None else due_ms / 1000,
        }
