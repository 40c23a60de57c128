"""Prometheus series (docs/operations.md). Labels are low-cardinality: never session or
conversation ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIONS_RECEIVED = Counter(
    "bridge_actions_received_total", "Actions accepted for storage.", ["product"]
)
ACTIONS_DUPLICATE = Counter(
    "bridge_actions_duplicate_total", "Redelivered actions counted, not stored.", ["product"]
)
ACTIONS_DROPPED = Counter(
    "bridge_actions_dropped_total", "Actions dropped by delivery policy.", ["product", "reason"]
)
FIELDS_TRUNCATED = Counter(
    "bridge_fields_truncated_total",
    "Optional action fields cut to their limit (or ignored, for identity hints).",
    ["field"],
)
TIMESTAMPS_DEFAULTED = Counter(
    "bridge_timestamps_defaulted_total",
    "Actions without timestamp_start, given the batch's forwarded_at or the receive time.",
)
REQUESTS_REPLAYED = Counter(
    "bridge_requests_replayed_total",
    "Requests already applied once (same body and credentials, or same webhook-id).",
    ["product", "route"],
)
POSTHOG_EVENTS = Counter(
    "bridge_posthog_events_total",
    "PostHog events received, by what became of them.",
    ["product", "result"],
)
BATCHES_REJECTED = Counter(
    "bridge_batches_rejected_total", "Ingest requests refused.", ["product", "reason"]
)
WEBHOOKS = Counter(
    "bridge_webhooks_total", "Platform webhooks by outcome.", ["product", "platform", "result"]
)
PLATFORM_LOOKUPS = Counter(
    "bridge_platform_lookups_total",
    "Platform API reads made to find a webhook's user or session, by result.",
    ["product", "platform", "result"],
)
NOTES_POSTED = Counter(
    "bridge_notes_posted_total", "Notes the platform confirmed.", ["product", "platform", "kind"]
)
NOTE_FAILURES = Counter(
    "bridge_note_failures_total", "Failed note posts.", ["product", "platform", "error"]
)
REDACTIONS = Counter(
    "bridge_note_redactions_total",
    "Action notes a summary replaced, by redaction result.",
    ["product", "platform", "result"],
)
NOTE_DELIVERY_SECONDS = Histogram(
    "bridge_note_delivery_seconds",
    "First queued action to note confirmed.",
    buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
HTTP_REQUEST_SECONDS = Histogram(
    "bridge_http_request_duration_seconds",
    "HTTP requests by route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HTTP_REFUSED = Counter(
    "bridge_http_refused_total",
    "Requests the server answered before the app saw them (overloaded, headers too large or "
    "too slow).",
    ["reason"],
)
NOTES_THROTTLED = Counter(
    "bridge_notes_throttled_total",
    "Due sessions held back by their product's shared note budget (posted later, not failed).",
    ["product"],
)
CIRCUIT_OPEN = Gauge(
    "bridge_platform_circuit_open",
    "1 while a product's deliveries are paused after consecutive retryable failures.",
    ["product"],
)
DUE_SESSIONS = Gauge("bridge_due_sessions", "Sessions with a note waiting in the due queue.")
DEAD_LETTERS = Gauge("bridge_dead_letters", "Notes in a product's dead-letter list.", ["product"])
