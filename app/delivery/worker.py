"""The delivery worker: claims due sessions from the store, posts their notes, acknowledges.

One worker runs per process. All timing lives in Redis (the due queues, one per shard), so any
replica can deliver any session and a restarted process picks up where a dead one stopped. The
worker remembers when each shard's next session falls due, so a turn reads only the shards with
work; every ``poll_s`` it looks at all of them, to find work other replicas scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping

import structlog

from app import metrics
from app.clock import Clock
from app.delivery.admission import Admission, Outcome
from app.delivery.backoff import GIVE_UP_AFTER_S, retry_delay_s
from app.domain import Note, NoteBudget, NoteKind
from app.notes import format_note, format_summary, replay_link
from app.platforms.base import (
    ConversationNotFound,
    DeliveryError,
    PermanentDeliveryError,
    Platform,
    RetryableDeliveryError,
)
from app.products import ProductConfig
from app.store import keys
from app.store.redis_store import (
    Claim,
    FailMode,
    PostedNote,
    RedisStore,
    StoreError,
    StoreUnavailable,
)

log = structlog.get_logger(__name__)

MAX_NOTE_ACTIONS = 1000
# Due members read beyond the worker's free capacity, so that sessions of products that may
# not start now (at their cap, over their budget) never hide the others'.
LOOKAHEAD = 64
_KINDS: dict[str, NoteKind] = {"pre": "prelink", "out": "postlink", "summary": "summary"}


def build_note(
    claim: Claim, product: ProductConfig, *, now: float, project_url: str | None = None
) -> Note:
    """The note a claim stands for, in the note format (app/notes.py). ``project_url``: the
    PostHog project whose replay the at-link flush links to (none: no replay line)."""
    kind = _KINDS[claim.source]
    if kind == "summary":
        body = format_summary(claim.session_id, claim.summary, now=now)
        actions: tuple[dict[str, object], ...] = ()
    else:
        stored = claim.actions()
        prelink = kind == "prelink"
        bins = product.bin_seconds if prelink else 0
        replay = replay_link(project_url, claim.session_id) if prelink and project_url else None
        lines = [a.line for a in stored]
        body = format_note(claim.session_id, lines, bin_seconds=bins, now=now, replay_url=replay)
        actions = tuple(a.data for a in sorted(stored, key=lambda a: a.line.timestamp))
    return Note(
        product_id=claim.product_id,
        session_id=claim.session_id,
        conversation_id=claim.conversation_id,
        kind=kind,
        body=body,
        delivery_id=claim.delivery_id,
        actions=actions,
    )


class DeliveryWorker:
    """Claims due sessions and posts their notes, a bounded number at a time."""

    def __init__(
        self,
        *,
        store: RedisStore,
        products: Mapping[str, ProductConfig],
        platforms: Mapping[str, Platform],
        clock: Clock,
        lease_s: float = 30.0,
        poll_s: float = 1.0,
        concurrency: int = 64,
        rand: Callable[[], float] | None = None,
        listen: bool = False,
    ) -> None:
        self._store = store
        self._products = products
        self._platforms = platforms
        self._clock = clock
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._rand = rand
        self._wake = asyncio.Event()
        self._wake_at = math.inf
        self._drain_until: float | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self.admission = Admission(products)
        # Products at their in-flight cap with due sessions waiting, by shard (Admission.plan).
        self._waiting: dict[str, set[int]] = {}
        # When each shard's next session is due, as far as this process knows (0: look now).
        self._shard_due = [0.0] * keys.SHARDS
        self._next_sweep = 0.0
        # A worker-only process hears of new work from the api processes (store.announce).
        self._listen = listen

    def notify(self, due_at: float | None, shard: int | None = None) -> None:
        """Bring the loop's next look forward when local work falls due sooner than planned
        (in ``shard``, or in any shard when None). Costs no I/O: a burst of ingests moves one
        timer instead of waking the loop each time."""
        if due_at is None:
            return
        if shard is None:
            self._shard_due = [min(t, due_at) for t in self._shard_due]
        elif due_at < self._shard_due[shard]:
            self._shard_due[shard] = due_at
        if due_at < self._wake_at:
            self._wake_at = due_at
            self._wake.set()

    def _wake_now(self) -> None:
        self._wake_at = 0.0
        self._wake.set()

    async def run(self) -> None:
        """Deliver until a drain started by stop() is complete."""
        listener = asyncio.create_task(self._listen_for_work()) if self._listen else None
        try:
            await self._deliver_until_drained()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen_for_work(self) -> None:
        """Look at once at the shards api processes announce; a lost subscription is taken
        up again (what is announced meanwhile is found by the sweep)."""
        while True:
            try:
                async for shards in self._store.announcements():
                    for shard in shards:
                        self.notify(self._clock.now(), shard)
            except StoreUnavailable as exc:
                log.warning("worker_listen_failed", error=str(exc), retry_in_s=self._poll_s)
                await asyncio.sleep(self._poll_s)

    async def _deliver_until_drained(self) -> None:
        failures = 0
        while True:
            # Until the loop sleeps again, any notify() brings its next look forward.
            self._wake_at = math.inf
            try:
                delay, next_due = await self._step()
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                delay, next_due = min(self._poll_s * failures, 5.0), None
                log.warning("worker_store_unavailable", error=str(exc), retry_in_s=delay)
            if self._drained(next_due):
                break
            await self._sleep(delay)
        # Never cut a note off mid-request: each is bounded by the platform call timeout.
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def run_once(self) -> int:
        """Claim everything due now and deliver it; returns the number of notes attempted."""
        claims = await self._claim(self._concurrency, shards=None)
        await asyncio.gather(*(self._deliver(claim) for claim in claims))
        return len(claims)

    def stop(self, grace_s: float) -> None:
        """Start draining: notes that fall due within ``grace_s`` are still posted, later ones
        stay in the store for the next process. run() returns when the drain is done."""
        self._drain_until = self._clock.now() + grace_s
        self._wake_now()

    def _drained(self, next_due: float | None) -> bool:
        if self._drain_until is None:
            return False
        if self._clock.now() >= self._drain_until:
            return True
        nothing_left = next_due is None or next_due > self._drain_until
        return nothing_left and not self._in_flight

    async def _step(self) -> tuple[float, float | None]:
        capacity = self._concurrency - len(self._in_flight)
        if capacity <= 0:
            return self._poll_s, None  # a finishing delivery sets the wake event
        now = self._clock.now()
        shards: list[int] | None = [k for k, t in enumerate(self._shard_due) if t <= now]
        if now >= self._next_sweep or self._drain_until is not None:
            shards, self._next_sweep = None, now + self._poll_s
        elif not shards:
            return self._delay(now), self._next_due()
        claims = await self._claim(capacity, shards=shards)
        for claim in claims:
            task = asyncio.create_task(self._deliver(claim))
            self._in_flight.add(task)
            task.add_done_callback(functools.partial(self._finished, claim.product_id))
        if len(claims) == capacity:
            return 0.0, None
        return self._delay(self._clock.now()), self._next_due()

    def _next_due(self) -> float | None:
        soonest = min(self._shard_due)
        return None if math.isinf(soonest) else soonest

    def _delay(self, now: float) -> float:
        """Until the next known due time, or the next sweep of every shard."""
        return max(0.0, min(min(self._shard_due), self._next_sweep) - now)

    def _finished(self, product_id: str, task: asyncio.Task[None]) -> None:
        was_full = len(self._in_flight) >= self._concurrency
        self._in_flight.discard(task)
        # New due times arrive through notify(); a finished delivery matters to the loop only
        # when it (or its product's due sessions) waited for a free slot, or to end a drain.
        for shard in self._waiting.pop(product_id, ()):
            self.notify(self._clock.now(), shard)
        if was_full or self._drain_until is not None:
            self._wake_now()

    async def _sleep(self, delay: float) -> None:
        self._wake_at = min(self._wake_at, self._clock.now() + delay)
        while True:
            self._wake.clear()
            remaining = self._wake_at - self._clock.now()
            if remaining <= 0:
                return
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs a task per sleep.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    async def _claim(self, limit: int, *, shards: list[int] | None) -> list[Claim]:
        """Read the due queues, start what each product may start now (its in-flight cap, its
        circuit, its shared note budget), hold back what it may not, and claim the rest."""
        known = list(self._shard_due)
        due = await self._store.due_sessions(
            now=self._clock.now(), limit=limit + LOOKAHEAD, shards=shards
        )
        # The time after the read: notes granted now start now, however long the read took
        # (an older time would let the next round's budget see room these notes used).
        now = self._clock.now()
        plan = self.admission.plan(due.members, capacity=limit, now=now)
        start, hold = list(plan.start), list(plan.hold)
        grants = await self._apply_budgets(start, hold, now)
        if hold:
            await self._store.defer([(member, until) for _, member, until in hold], now=now)
        claims = await self._store.claim(
            [member for _, member in start],
            now=now,
            lease_s=self._lease_s,
            max_note_actions=MAX_NOTE_ACTIONS,
        )
        for claim in claims:
            self.admission.started(claim.product_id)
        await self._give_back(grants, claims, now)
        busy = self._keep_waiting(plan.waiting, read=shards, now=now) | plan.busy
        held = [(shard, until) for shard, _, until in hold]
        for shard, due_at in due.next_due(now, busy=busy, held=held).items():
            read = math.inf if due_at is None else due_at
            # A notify() that came in while the queues were read is newer than the read.
            if self._shard_due[shard] != known[shard]:
                read = min(read, self._shard_due[shard])
            self._shard_due[shard] = read
        return claims

    def _keep_waiting(
        self, found: dict[str, set[int]], *, read: list[int] | None, now: float
    ) -> set[int]:
        """Remember, by product, the shards where due sessions wait for one of its slots (a
        shard this round did not read keeps what an earlier round found there). Returns the
        shards to look at again at once: their product has a free slot already."""
        looked = set(range(keys.SHARDS)) if read is None else set(read)
        waiting: dict[str, set[int]] = {}
        for product_id, shards in self._waiting.items():
            if unread := shards - looked:
                waiting[product_id] = unread
        for product_id, shards in found.items():
            waiting.setdefault(product_id, set()).update(shards)
        again: set[int] = set()
        for product_id in list(waiting):
            if self.admission.room(product_id, now) > 0:  # a slot freed during this round
                again |= waiting.pop(product_id)
        self._waiting = waiting
        return again

    async def _apply_budgets(
        self,
        start: list[tuple[int, bytes]],
        hold: list[tuple[int, bytes, float]],
        now: float,
    ) -> dict[str, tuple[int, NoteBudget]]:
        """Take each limited product's notes from its shared budget; a member over it moves
        from ``start`` to ``hold``, until its expected turn. Returns what was granted."""
        wanted: dict[str, list[tuple[int, bytes]]] = {}
        budgets: dict[str, NoteBudget] = {}
        for shard, member in start:
            product_id = keys.split_due_member(member.decode())[0]
            product = self._products.get(product_id)
            budget = product.note_budget if product is not None else None
            if budget is not None:
                budgets[product_id] = budget
                wanted.setdefault(product_id, []).append((shard, member))
        if not budgets:
            return {}
        answers = await self._store.take_notes(
            {p: (len(wanted[p]), budget) for p, budget in budgets.items()}, now=now
        )
        granted: dict[str, tuple[int, NoteBudget]] = {}
        for product_id, grant in answers.items():
            granted[product_id] = (grant.granted, budgets[product_id])
            over = wanted[product_id][grant.granted :]
            if not over:
                continue
            metrics.NOTES_THROTTLED.labels(product_id).inc(len(over))
            interval_s = budgets[product_id].interval_ms / 1000
            for turn, (shard, member) in enumerate(over):
                start.remove((shard, member))
                hold.append((shard, member, grant.next_free + turn * interval_s))
        return granted

    async def _give_back(
        self, granted: dict[str, tuple[int, NoteBudget]], claims: list[Claim], now: float
    ) -> None:
        """Return the notes granted for sessions another process claimed first."""
        claimed = Counter(claim.product_id for claim in claims)
        unused = {
            product_id: (claimed[product_id] - count, budget)
            for product_id, (count, budget) in granted.items()
            if count > claimed[product_id]
        }
        if unused:
            await self._store.take_notes(unused, now=now)

    async def _deliver(self, claim: Claim) -> None:
        outcome: Outcome = "other"
        retry_at: float | None = None
        try:
            outcome, retry_at = await self._post(claim)
        finally:
            self.admission.finished(claim.product_id, outcome, retry_at=retry_at)

    async def _post(self, claim: Claim) -> tuple[Outcome, float | None]:
        """Post the claim's note and record the result; returns how it went for the
        product's circuit (and, for a retry, when the note is due again)."""
        bound = log.bind(
            product_id=claim.product_id,
            session_id=claim.session_id,
            conversation_id=claim.conversation_id,
        )
        product = self._products.get(claim.product_id)
        platform = self._platforms.get(claim.product_id)
        try:
            if product is None or platform is None:
                raise _Unconfigured(claim.product_id)
            project_url = await self._project_url(claim, product)
            note = build_note(claim, product, now=self._clock.now(), project_url=project_url)
            note_id = await platform.post_note(note)
        except Exception as exc:  # every failure is recorded; none loses the note's actions
            mode, retry_at = await self._record_failure(claim, product, exc, bound)
            retryable = mode == "retry" and isinstance(exc, RetryableDeliveryError)
            return ("retryable", retry_at) if retryable else ("other", None)
        try:
            outcome = await self._store.ack(
                claim,
                product,
                note_id=note_id,
                now=self._clock.now(),
                keep_note_id=platform.redacts,
            )
        except StoreUnavailable as exc:
            # The note is posted but not acknowledged: the lease runs out and the note may
            # be posted again (at-least-once delivery).
            bound.warning("note_ack_failed", error=str(exc))
            return "posted", None
        self.notify(outcome.due_at, claim.shard)
        metrics.NOTES_POSTED.labels(product.id, product.platform, note.kind).inc()
        metrics.NOTE_DELIVERY_SECONDS.observe(max(0.0, self._clock.now() - claim.queued_at))
        bound.info("note_delivered", kind=note.kind, note_id=note_id, actions=len(note.actions))
        await self._redact(platform, product, outcome.replaced, bound)
        return "posted", None

    async def _project_url(self, claim: Claim, product: ProductConfig) -> str | None:
        """The project URL for the replay link of an at-link flush, for a product with
        ``replay_links``: the configured one, else the last one the product's events carried
        (None when no URL is known, or when Redis cannot say: the note goes without the line)."""
        posthog = product.posthog
        if claim.source != "pre" or posthog is None or not posthog.replay_links:
            return None
        if posthog.project_url is not None:
            return posthog.project_url
        try:
            return await self._store.project_url(product.id, now=self._clock.now())
        except (StoreUnavailable, StoreError) as exc:
            log.warning("replay_link_unavailable", product_id=product.id, error=str(exc))
            return None

    async def _redact(
        self,
        platform: Platform,
        product: ProductConfig,
        notes: list[PostedNote],
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Best effort: a confirmed summary replaces these notes; a failure is counted and
        logged, never retried (the summary is already there)."""
        for posted in notes:
            try:
                await platform.redact_note(posted.conversation_id, posted.note_id)
            except Exception as exc:  # counted and logged; redaction is best effort
                metrics.REDACTIONS.labels(product.id, product.platform, "failed").inc()
                bound.warning("note_redaction_failed", note_id=posted.note_id, error=repr(exc))
            else:
                metrics.REDACTIONS.labels(product.id, product.platform, "redacted").inc()

    async def _record_failure(
        self,
        claim: Claim,
        product: ProductConfig | None,
        exc: Exception,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> tuple[FailMode, float]:
        mode, retry_at = self._failure_plan(claim, exc)
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, DeliveryError):
            bound.warning("note_failed", error=error, mode=mode, attempts=claim.attempts + 1)
        else:
            bound.error("note_failed", error=error, mode=mode, exc_info=exc)
        if product is None:
            # An unconfigured product's sessions wait in the store until it returns.
            return mode, retry_at
        metrics.NOTE_FAILURES.labels(product.id, product.platform, type(exc).__name__).inc()
        try:
            _, due_at = await self._store.fail(
                claim, product, mode=mode, error=error, retry_at=retry_at, now=self._clock.now()
            )
        except StoreUnavailable as store_exc:
            bound.warning("note_failure_not_recorded", error=str(store_exc))
        else:
            self.notify(due_at, claim.shard)
        return mode, retry_at

    def _failure_plan(self, claim: Claim, exc: Exception) -> tuple[FailMode, float]:
        now = self._clock.now()
        if isinstance(exc, ConversationNotFound):
            return "gone", now
        if isinstance(exc, PermanentDeliveryError):
            return "dead", now
        started = claim.first_failure_at or now
        if now - started >= GIVE_UP_AFTER_S:
            return "dead", now
        hint = exc.retry_after_s if isinstance(exc, RetryableDeliveryError) else None
        kwargs = {"rand": self._rand} if self._rand else {}
        return "retry", now + retry_delay_s(claim.attempts + 1, hint_s=hint, **kwargs)


class _Unconfigured(RetryableDeliveryError):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"product {product_id!r} is not configured in this process")
