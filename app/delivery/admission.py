"""Which due sessions a worker may start now: per-product capacity and circuit breakers.

Bookkeeping only: no I/O but a log line when a circuit opens or closes. The worker asks
``plan`` what to do with the due members it read: start them, leave them due without a write
(their product is at its ``max_notes_in_flight`` in this process, or the worker is full), or
hold them back until a time (their product's circuit is open). The shared note budget
(``max_notes_per_minute``) is the store's; the worker applies it to what ``plan`` starts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog

from app import metrics
from app.products import ProductConfig
from app.store import keys

log = structlog.get_logger(__name__)

# Consecutive retryable failures after which a product's deliveries pause.
FAILURES_TO_OPEN = 5
UNCONFIGURED_ROOM = 1 << 20

CircuitState = Literal["closed", "open", "half_open"]
Outcome = Literal["posted", "retryable", "other"]


@dataclass
class Circuit:
    """One product's breaker. Open: no delivery starts before ``open_until`` (the failing
    note's backoff); then half open: one note probes, and its outcome closes or reopens it."""

    failures: int = 0
    open_until: float | None = None

    def state(self, now: float) -> CircuitState:
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half_open"


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one read of due members."""

    start: list[tuple[int, bytes]] = field(default_factory=list)  # (shard, member)
    hold: list[tuple[int, bytes, float]] = field(default_factory=list)  # (shard, member, until)
    # Shards with due members left only because the worker's own capacity ran out.
    busy: set[int] = field(default_factory=set)
    # Products at their cap with due members left waiting, and those members' shards: a
    # finished delivery of theirs should bring the next look at those shards forward.
    waiting: dict[str, set[int]] = field(default_factory=dict)


class Admission:
    """This process's deliveries in flight and circuit state, per product."""

    def __init__(self, products: Mapping[str, ProductConfig]) -> None:
        self._products = products
        self.in_flight: Counter[str] = Counter()
        self.circuits: dict[str, Circuit] = {}

    def circuit(self, product_id: str) -> Circuit:
        return self.circuits.setdefault(product_id, Circuit())

    def room(self, product_id: str, now: float) -> int:
        """How many more of the product's notes may start in this process now."""
        product = self._products.get(product_id)
        if product is None:
            # Claimed to be failed as unconfigured (it backs off and waits in the store).
            return UNCONFIGURED_ROOM
        state = self.circuit(product_id).state(now)
        if state == "open":
            return 0
        if state == "half_open":
            return 0 if self.in_flight[product_id] else 1  # the one probe
        return max(0, product.max_notes_in_flight - self.in_flight[product_id])

    def plan(self, due: Sequence[tuple[int, bytes]], *, capacity: int, now: float) -> Plan:
        """Sort due members, earliest first, into started, left waiting and held back."""
        plan = Plan()
        room: dict[str, int] = {}
        for shard, member in due:
            product_id = keys.split_due_member(member.decode())[0]
            if product_id not in room:
                room[product_id] = self.room(product_id, now)
            if room[product_id] > 0:
                if len(plan.start) >= capacity:
                    plan.busy.add(shard)
                    continue
                room[product_id] -= 1
                plan.start.append((shard, member))
                continue
            circuit = self.circuit(product_id)
            if circuit.state(now) == "open" and circuit.open_until is not None:
                plan.hold.append((shard, member, circuit.open_until))
                continue
            # At its cap: it stays due, untouched (no write), for the product's next free slot.
            plan.waiting.setdefault(product_id, set()).add(shard)
        return plan

    def started(self, product_id: str) -> None:
        self.in_flight[product_id] += 1

    def finished(self, product_id: str, outcome: Outcome, *, retry_at: float | None) -> None:
        """Book a delivery's end. ``retry_at``: when a retryable failure's note is due again
        (the end of its backoff)."""
        self.in_flight[product_id] -= 1
        if self.in_flight[product_id] <= 0:
            del self.in_flight[product_id]
        circuit = self.circuit(product_id)
        was_open = circuit.open_until is not None
        if outcome != "retryable":
            circuit.failures, circuit.open_until = 0, None
            if was_open:
                log.info("circuit_closed", product_id=product_id)
        else:
            circuit.failures += 1
            if (was_open or circuit.failures >= FAILURES_TO_OPEN) and retry_at is not None:
                circuit.open_until = retry_at
                log.warning(
                    "circuit_opened",
                    product_id=product_id,
                    consecutive_failures=circuit.failures,
                    open_until=retry_at,
                )
        metrics.CIRCUIT_OPEN.labels(product_id).set(0 if circuit.open_until is None else 1)
