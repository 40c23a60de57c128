"""Fuzz every operation the bridge serves: no request, however malformed, gets a 5xx.

Hypothesis builds request bodies from the wire models' own JSON schemas (``ActionsPayload``,
``SummaryPayload``, ``LinkRequest``, ``ProactiveRequest``, arrays of payloads, and the platforms'
webhook models and fixtures), then mutates them at any depth: random JSON in any field, empty
strings, nulls, booleans for numbers, huge and non-finite number literals, lone surrogate
escapes, very long strings, deep nesting. It also sends bytes that are not JSON and wrong
content types. Headers are sometimes valid credentials (the ingest token, an
``X-Connector-Signature`` or Standard Webhooks signature over the exact body, each platform's
real webhook signature, the admin token), so examples get past authentication into the store,
and sometimes garbage (309-digit timestamps, malformed signatures, ids and timestamps).

For every example: the answer is below 500, every error answer is a JSON object with string
``error`` and ``detail``, and every 2xx JSON answer parses. The app's operations are listed at
test time (``test_every_served_operation_is_fuzzed``): a new route fails this module until it
is fuzzed.

The app runs in-process over the real Redis, started once per test (not per example), with its
outbound calls mocked. Runs are bounded and reproducible: a fixed number of examples per test,
derandomized, no example database and no shrinking (a failure prints the whole request).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import BaseModel
from starlette.routing import Route

from app.api.posthog import PosthogWebhook
from app.main import create_app
from app.models import ActionsPayload, LinkRequest, ProactiveRequest, SummaryPayload
from app.platforms.http import BotEvent
from app.platforms.salesforce import CaseEvent
from app.platforms.zendesk import TicketEvent, TriggerBody, zendesk_signature
from app.products import ProductConfig
from app.security import decode_whsec, hmac_hex, standard_webhook_signature
from app.settings import Settings
from tests.conftest import (
    INGEST_SECRET,
    INGEST_TOKEN,
    WEBHOOK_SECRET,
    ManualClock,
    batch,
    make_product,
)
from tests.fakes.zendesk import iso_timestamp
from tests.harness import Harness, running_app

HTTP, CONSOLE, INTERCOM, ZENDESK, SALESFORCE = "acme", "demo", "icom", "globex", "umbrella"
PRODUCT_IDS = (HTTP, CONSOLE, INTERCOM, ZENDESK, SALESFORCE)
PLATFORMS = {
    HTTP: "http",
    CONSOLE: "console",
    INTERCOM: "intercom",
    ZENDESK: "zendesk",
    SALESFORCE: "salesforce",
}
# Seeded in every test: sess-1 has a batch and no link; sess-2 is linked and has a dead letter.
SESSIONS = ("sess-1", "sess-2")

ADMIN_TOKEN = "fuzz-admin-token-0123456789"
INGEST_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"i" * 32).decode()
INTERCOM_SECRET = "fuzz-intercom-client-secret"
ZENDESK_SECRET = "fuzz-zendesk-webhook-secret"
SALESFORCE_TOKEN = "fuzz-salesforce-bridge-token"
POSTHOG_SECRET = "whsec_" + base64.b64encode(b"p" * 32).decode()
POSTHOG_HEADER, POSTHOG_HEADER_SECRET = "x-posthog-secret", "fuzz-posthog-header-secret"
ZENDESK_USERS = "https://globex.zendesk.com/api/v2/users/"
INTERCOM_CONTACTS = "https://api.intercom.io/contacts/"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default


def fuzz_products() -> list[ProductConfig]:
    """One product per platform, all with the same ingest credentials."""
    ingest = {"ingest_webhook_secret": INGEST_WEBHOOK_SECRET}
    intercom = {
        "access_token": "fuzz-intercom-access-token",
        "admin_id": "7300412",
        "client_secret": INTERCOM_SECRET,
    }
    zendesk = {
        "subdomain": "globex",
        "email": "bot@globex.example",
        "api_token": "fuzz-zendesk-api-token",
        "webhook_secret": ZENDESK_SECRET,
    }
    salesforce = {
        "instance_url": "https://umbrella.my.salesforce.com",
        "client_id": "3MVG9fuzz.consumer.key",
        "client_secret": "fuzz-salesforce-consumer-secret",
        "webhook_token": SALESFORCE_TOKEN,
    }
    # Only the http product takes PostHog events: the others answer posthog_not_configured.
    posthog = {
        "webhook_secret": POSTHOG_SECRET,
        "header_name": POSTHOG_HEADER,
        "header_secret": POSTHOG_HEADER_SECRET,
        "events": ["$autocapture", "$pageview"],
    }
    return [
        make_product(HTTP, "http", posthog=posthog, **ingest),
        make_product(CONSOLE, "console", **ingest),
        make_product(INTERCOM, "intercom", intercom=intercom, **ingest),
        make_product(ZENDESK, "zendesk", zendesk=zendesk, **ingest),
        make_product(SALESFORCE, "salesforce", salesforce=salesforce, **ingest),
    ]


# --- which operations are fuzzed ---------------------------------------------------------------

FUZZED: set[tuple[str, str]] = set()
_Test = TypeVar("_Test", bound=Callable[..., Any])


def fuzzes(*operations: tuple[str, str]) -> Callable[[_Test], _Test]:
    """Record the ``(method, path)`` operations the decorated test fuzzes."""

    def register(test: _Test) -> _Test:
        FUZZED.update(operations)
        return test

    return register


def served_operations(app: FastAPI) -> set[tuple[str, str]]:
    """``(method, path)`` of everything the app answers: its OpenAPI operations, and the routes
    left out of the schema (the schema itself and the docs pages)."""
    paths = app.openapi()["paths"]
    served = {(method.upper(), path) for path, item in paths.items() for method in item}
    for route in app.routes:
        if isinstance(route, Route) and not route.include_in_schema:
            served |= {(method, route.path) for method in route.methods or ()}
    return served


def bounded(max_examples: int) -> settings:
    """A fixed, reproducible budget: derandomized, no example database, no shrinking."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # the app is started once per test on purpose
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- documents from the models' JSON schemas ---------------------------------------------------


# Properties always present, and property schemas replaced, at any depth of a document.
_Narrowing = tuple[tuple[str, ...], dict[str, Any]]


def _needs_assembly(schema: dict[str, Any]) -> bool:
    text = json.dumps(schema)
    return '"$ref"' in text or '"properties"' in text


def _schema_strategy(
    schema: dict[str, Any], defs: dict[str, Any], narrowing: _Narrowing
) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        return _schema_strategy(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, narrowing)
    if not _needs_assembly(schema):
        return from_schema(schema)
    if "anyOf" in schema:
        return st.one_of([_schema_strategy(branch, defs, narrowing) for branch in schema["anyOf"]])
    if schema.get("type") == "array":
        items = _schema_strategy(schema["items"], defs, narrowing)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=3)
    present, overrides = narrowing
    properties = {
        name: _schema_strategy(overrides.get(name, sub), defs, narrowing)
        for name, sub in schema["properties"].items()
    }
    required = set(schema.get("required", ())) | set(present)
    return st.fixed_dictionaries(
        {name: s for name, s in properties.items() if name in required},
        optional={name: s for name, s in properties.items() if name not in required},
    )


def documents(
    model: type[BaseModel], present: tuple[str, ...] = (), **overrides: dict[str, Any]
) -> st.SearchStrategy[Any]:
    """JSON documents valid against ``model``'s JSON schema, drawn by hypothesis-jsonschema.

    To get more examples past the model's validators, ``overrides`` replace a property's schema
    and ``present`` properties are always given, at any depth (to name a configured product or
    a seeded session, say). Objects and arrays of objects are put together here, each property
    drawn by ``from_schema``: the object strategy of hypothesis-jsonschema 0.23.1 takes about
    100 ms an example, and fails with hypothesis 6.170 (``'many' object has no attribute
    'more'``).
    """
    schema = model.model_json_schema()
    return _schema_strategy(schema, schema.get("$defs", {}), (present, overrides))


# --- edge values and mutations -----------------------------------------------------------------

T = TypeVar("T")


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Draw from each strategy in proportion to its weight (``one_of`` drops repeats)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def mostly(
    usual: st.SearchStrategy[T], unusual: st.SearchStrategy[T], ratio: int = 4
) -> st.SearchStrategy[T]:
    """``usual`` about ``ratio`` times as often as ``unusual``."""
    return weighted((ratio, usual), (1, unusual))


def _markers(kind: str, raw: dict[str, bytes]) -> dict[str, bytes]:
    return {f"\x00{kind}:{name}\x00": literal for name, literal in raw.items()}


# What json.dumps cannot write: a document holds a marker, encode() swaps in the raw bytes.
# Whole values (the marker is the entire JSON string):
RAW_NUMBERS = _markers(
    "raw",
    {
        "overflow": b"1e400",
        "negative overflow": b"-1e400",
        "underflow": b"1e-400",
        "309 digits": b"9" * 309,
        "nan": b"NaN",
        "infinity": b"Infinity",
        "negative infinity": b"-Infinity",
    },
)
RAW_VALUES = {
    **RAW_NUMBERS,
    **_markers(
        "raw", {"surrogate key": b'{"\\udbff": 1}', "deep array": b"[" * 5000 + b"]" * 5000}
    ),
}
# Inside a JSON string:
RAW_IN_STRINGS = _markers(
    "in",
    {
        "lone high surrogate": b"\\ud800",
        "lone low surrogate": b"\\udfff",
        "reversed surrogate pair": b"\\ude00\\ud83d",
        "invalid utf-8": b"\xff\xfe",
        "overlong utf-8": b"\xc0\xaf",
    },
)

STRING_EDGES = weighted(
    (3, st.sampled_from(sorted(RAW_IN_STRINGS))),
    (2, st.sampled_from(["", " ", "\x00", "\n", "\u202e", "\U0001f600", "{{ticket.id}}"])),
    (1, st.sampled_from([513, 4_001, 20_001, 70_000]).map(lambda n: "x" * n)),
)
NUMBER_EDGES = st.sampled_from(
    [*sorted(RAW_NUMBERS), 5e-324, 1e-310, -0.0, -1, 1e308, 2**63, 10**400, True, "1", None]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
EDGE_VALUES = st.one_of(
    st.sampled_from([None, "", True, False, 0, [], {}, *sorted(RAW_VALUES)]),
    STRING_EDGES,
    NUMBER_EDGES,
    st.floats(),  # NaN and infinities are written as literals
    JSON_VALUES,
)
NOT_JSON = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"null",
            b"0",
            b'""',
            b"[]",
            b"{}",
            b"{",
            b'{"a":}',
            b"{'a': 1}",
            b'{"a": 1}{"b": 2}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
            b"[" * 100_000,
            b'{"a":' * 20_000,
        ]
    ),
    st.just(b" " * (MAX_BODY_BYTES + 1)),
)


def encode(document: Any) -> bytes:
    """JSON bytes of ``document``, each marker swapped for its raw bytes."""
    body = json.dumps(document).encode()
    for marker, literal in RAW_VALUES.items():
        body = body.replace(json.dumps(marker).encode(), literal)
    for marker, fragment in RAW_IN_STRINGS.items():
        body = body.replace(json.dumps(marker).encode()[1:-1], fragment)
    return body


def _locations(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _locations(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _locations(child, (*path, index))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value.get(head), rest, new)}
    copy = list(value)
    copy[head] = _replaced(copy[head], rest, new)
    return copy


@st.composite
def point_mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to three locations at any depth (the whole document included)
    replaced by an edge value, or given a new key."""
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_locations(document))))
        if isinstance(_at(document, path), dict) and draw(st.booleans()):
            path = (*path, draw(st.text(max_size=12)))
        document = _replaced(document, path, draw(EDGE_VALUES))
    return document


OTHER_TYPES = st.sampled_from([None, True, 0, 1.5, "", [], {}, ["x"], {"type": "user"}])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@st.composite
def swept(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to eight of its leaves of one kind changed: strings to awkward
    strings (or with one appended), numbers to edge values, or any leaf to a value of another
    type. One kind at a time, so that an edge the parser refuses (a lone surrogate, say) does
    not hide every other change."""
    kind = draw(st.sampled_from(["strings", "numbers", "types"]))

    def targeted(leaf: Any) -> bool:
        if isinstance(leaf, dict | list):
            return False
        if kind == "strings":
            return isinstance(leaf, str)
        return _is_number(leaf) if kind == "numbers" else True

    def changed(leaf: Any) -> Any:
        if kind == "strings":
            edge = draw(STRING_EDGES)
            return leaf + edge if draw(st.booleans()) else edge
        return draw(NUMBER_EDGES if kind == "numbers" else OTHER_TYPES)

    leaves = [path for path in _locations(document) if targeted(_at(document, path))]
    if not leaves:
        return document
    for path in draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=8, unique=True)):
        document = _replaced(document, path, changed(_at(document, path)))
    return document


def bodies(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Documents encoded as they are (2 in 8), with one to three edge values anywhere (1 in 8),
    with leaves of one kind changed (4 in 8), or bytes that are not JSON (1 in 8)."""
    return weighted(
        (2, docs.map(encode)),
        (1, docs.flatmap(point_mutated).map(encode)),
        (4, docs.flatmap(swept).map(encode)),
        (1, NOT_JSON),
    )


SESSION_ID = {"enum": list(SESSIONS)}
PRODUCT_ID = {"enum": list(PRODUCT_IDS)}
TIME = {"type": "number", "minimum": 0, "maximum": 2e9}


def _acceptable_batches(session_id: str) -> st.SearchStrategy[Any]:
    return documents(
        ActionsPayload,
        present=("session_id",),
        session_id={"const": session_id},
        product_id=PRODUCT_ID,
        timestamp_start=TIME,
        timestamp_end=TIME,
        forwarded_at=TIME,
    )


# The models' schemas as they are, and narrowed to what their validators accept too.
PAYLOADS = weighted(
    (1, documents(ActionsPayload)),
    (1, documents(SummaryPayload)),
    (3, st.one_of([_acceptable_batches(session_id) for session_id in (*SESSIONS, "sess-new")])),
    (2, documents(SummaryPayload, session_id=SESSION_ID, product_id=PRODUCT_ID, forwarded_at=TIME)),
)
# More payloads than a request may hold, more actions than a batch may (not mutated: too big).
OVERSIZED = st.one_of(
    PAYLOADS.map(lambda payload: [payload] * 101),
    _acceptable_batches("sess-1").map(lambda b: {**b, "actions": b["actions"][:1] * 1001}),
)
INGEST_BODIES = weighted(
    (6, bodies(PAYLOADS)),
    (3, bodies(st.lists(PAYLOADS, max_size=3))),
    (1, OVERSIZED.map(encode)),
)
LINK_BODIES = bodies(
    mostly(
        documents(LinkRequest, product_id=PRODUCT_ID, session_id=SESSION_ID),
        documents(LinkRequest),
        ratio=3,
    )
)
PROACTIVE_BODIES = bodies(documents(ProactiveRequest))


def _fixtures(platform: str) -> list[Any]:
    return [json.loads(path.read_bytes()) for path in sorted((FIXTURES / platform).glob("*.json"))]


BOT_EVENTS = {"enum": ["conversation.created", "conversation.replied", "conversation.closed"]}
BOT_DOCUMENTS = st.one_of(documents(BotEvent), documents(BotEvent, event=BOT_EVENTS))
TRIGGERS = {"enum": ["ticket.created", "ticket.comment_added", "ticket.updated", "ticket.solved"]}
TICKET_EVENTS = {
    "enum": [
        "zen:event-type:ticket.created",
        "zen:event-type:ticket.comment_added",
        "zen:event-type:ticket.status_changed",
    ]
}
CASE_EVENTS = {"enum": ["case.created", "case.comment_added", "case.closed"]}
CASE_IDS = {"enum": ["500Hs00001XyZaBIAV", "500Hs00001XyZaB", "conv-2", ""]}
# The platforms' webhook fixtures (not their API answers) and models.
WEBHOOK_BODIES = {
    "http": bodies(BOT_DOCUMENTS),
    "console": bodies(BOT_DOCUMENTS),
    "intercom": bodies(st.sampled_from([d for d in _fixtures("intercom") if "topic" in d])),
    "zendesk": bodies(
        weighted(
            (2, st.sampled_from([d for d in _fixtures("zendesk") if "event" in d])),
            (2, documents(TriggerBody, event=TRIGGERS)),
            (1, documents(TicketEvent, type=TICKET_EVENTS)),
        )
    ),
    "salesforce": bodies(
        weighted(
            (2, st.sampled_from([d for d in _fixtures("salesforce") if "event" in d])),
            (2, documents(CaseEvent, event=CASE_EVENTS, case_id=CASE_IDS)),
            (1, documents(CaseEvent)),
        )
    ),
}


POSTHOG_FIXTURES = _fixtures("posthog")
# The fixtures as they are (stored, then duplicates), under new uuids and sessions (stored), and
# documents from the body's model.
POSTHOG_DOCUMENTS = weighted(
    (2, st.sampled_from(POSTHOG_FIXTURES)),
    (
        2,
        st.tuples(st.sampled_from(POSTHOG_FIXTURES), st.uuids(), st.sampled_from(SESSIONS)).map(
            lambda t: {
                **t[0],
                "event": {
                    **t[0]["event"],
                    "uuid": str(t[1]),
                    "properties": {**t[0]["event"]["properties"], "$session_id": t[2]},
                },
            }
        ),
    ),
    # Objects of free keys are narrowed to the keys read (hypothesis-jsonschema's own object
    # strategy fails, see documents()); the name is either kept or not.
    (
        1,
        documents(
            PosthogWebhook,
            properties={
                "type": "object",
                "properties": {
                    "$session_id": {"enum": [*SESSIONS, "", "not a session id"]},
                    **{key: {"type": "string"} for key in ("$current_url", "$pathname")},
                    **{key: {"type": "string"} for key in ("$el_text", "$event_type", "email")},
                },
            },
            project={"type": "object", "properties": {"id": {"type": "integer"}}},
        ),
    ),
)
POSTHOG_BODIES = weighted(
    (6, bodies(POSTHOG_DOCUMENTS)),
    (3, bodies(st.lists(POSTHOG_DOCUMENTS, max_size=3))),
    (1, POSTHOG_DOCUMENTS.map(lambda document: [document] * 101).map(encode)),
)


# --- paths and headers -------------------------------------------------------------------------

HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
HEADER_EDGES = ["", "0", "-1", "1e400", "NaN", "9" * 309, "\xb2\xb3", "v1,", "sha1=", "sha256="]
GARBAGE = st.one_of(HEADER_TEXT, st.sampled_from([*HEADER_EDGES, "x" * 5000]))
CREDENTIAL_HEADERS = (
    "authorization",
    "x-connector-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
FUZZED_HEADERS = (
    *CREDENTIAL_HEADERS,
    "x-hub-signature",
    "x-zendesk-webhook-signature",
    "x-zendesk-webhook-signature-timestamp",
    "x-zendesk-webhook-invocation-id",
    "x-bridge-token",
    "x-request-id",
)
JSON_MEDIA = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/cloudevents+json"]
)
OTHER_MEDIA = st.sampled_from(
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ";"]
)
CONTENT_TYPES = mostly(JSON_MEDIA, OTHER_MEDIA | HEADER_TEXT | st.none(), ratio=6)
# Digits only: an HTTP server refuses any other Content-Length before the app sees it.
DECLARED_LENGTHS = st.sampled_from(["0", "1", "007", str(MAX_BODY_BYTES + 1), "9" * 19, "9" * 5000])
ZENDESK_TIMESTAMP_EDGES = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2024-01-15T12:34:50",
    "2024-13-45T99:99:99Z",
    "9" * 64,
]


def segments(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    """A URL path segment: mostly a known value, otherwise any text or an awkward escape."""
    awkward = st.sampled_from(["", ".", "..", "%2F", "%00", "%ff", "%ED%A0%80", "a" * 300, "%0A"])
    anything = st.text(max_size=40).map(lambda text: quote(text, safe=""))
    return mostly(st.sampled_from(known), awkward | anything, ratio=8)


SEGMENTS = {"product_id": segments(PRODUCT_IDS), "session_id": segments(SESSIONS)}


def fill(data: st.DataObject, template: str) -> str:
    """``template`` with each ``{name}`` replaced by a drawn path segment."""
    return re.sub(r"\{(\w+)\}", lambda m: data.draw(SEGMENTS[m[1]], label=m[1]), template)


@st.composite
def tampered(draw: st.DrawFn, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` as they are two times in three; otherwise some garbage or missing."""
    if draw(st.sampled_from([True, True, False])):
        return headers
    out = dict(headers)
    for name in draw(st.lists(st.sampled_from(sorted(headers)), min_size=1, unique=True)):
        value = draw(st.none() | GARBAGE)
        if value is None:
            del out[name]
        else:
            out[name] = value
    return out


@st.composite
def standard_webhook(draw: st.DrawFn, secret: str, body: bytes, now: float) -> dict[str, str]:
    """Standard Webhooks headers signed over a drawn id and timestamp (sometimes stale or
    absurdly large, like a 309-digit one), then perhaps tampered with."""
    msg_id = draw(st.one_of(st.just("msg_fuzz"), HEADER_TEXT.filter(bool), st.just("m" * 300)))
    fresh = st.integers(-250, 250).map(lambda skew: int(now) + skew)
    stale = st.integers(-400, 400).map(lambda skew: int(now) + skew)
    timestamp = draw(mostly(fresh, stale | st.sampled_from([0, 10**12, int("9" * 309)])))
    key = decode_whsec(secret)
    signature = standard_webhook_signature(key, msg_id=msg_id, timestamp=timestamp, body=body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    return draw(tampered({**headers, "webhook-signature": signature}))


@st.composite
def intercom_webhook(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    """Intercom's ``X-Hub-Signature`` (HMAC-SHA1 of the body), perhaps tampered with."""
    digest = hmac.new(INTERCOM_SECRET.encode(), body, hashlib.sha1).hexdigest()
    return draw(tampered({"x-hub-signature": f"sha1={digest}"}))


@st.composite
def zendesk_webhook(draw: st.DrawFn, body: bytes, now: float) -> dict[str, str]:
    """Zendesk's signature over a drawn timestamp (sometimes stale or malformed) and the body,
    perhaps tampered with."""
    fresh = st.integers(-250, 250).map(lambda skew: iso_timestamp(now + skew))
    stale = st.integers(-400, 400).map(lambda skew: iso_timestamp(now + skew))
    timestamp = draw(mostly(fresh, stale | st.sampled_from(ZENDESK_TIMESTAMP_EDGES) | HEADER_TEXT))
    signature = zendesk_signature(ZENDESK_SECRET, timestamp=timestamp, body=body)
    headers = {
        "x-zendesk-webhook-signature": signature,
        "x-zendesk-webhook-signature-timestamp": timestamp,
    }
    invocation_id = draw(st.sampled_from([None, "8350205582"]) | GARBAGE)
    if invocation_id is not None:
        headers["x-zendesk-webhook-invocation-id"] = invocation_id
    return draw(tampered(headers))


def platform_webhook(platform: str, body: bytes, now: float) -> st.SearchStrategy[dict[str, str]]:
    """The webhook headers ``platform`` really sends, signed over ``body``."""
    if platform == "intercom":
        return intercom_webhook(body)
    if platform == "zendesk":
        return zendesk_webhook(body, now)
    if platform == "salesforce":
        # The Named Credential's static header: not a signature, so the body plays no part.
        return tampered({"x-bridge-token": SALESFORCE_TOKEN})
    return standard_webhook(WEBHOOK_SECRET, body, now)


@st.composite
def credentials(draw: st.DrawFn, body: bytes, now: float) -> dict[str, str]:
    """Ingest credentials for ``body``: a valid one of each kind, the admin token, none, or
    garbage in the credential headers."""
    valid, invalid = ["token", "signature", "webhook"], ["admin", "none", "garbage"]
    kind = draw(mostly(st.sampled_from(valid), st.sampled_from(invalid), ratio=3))
    if kind == "token":
        return {"authorization": f"Bearer {INGEST_TOKEN}"}
    if kind == "signature":
        return {"x-connector-signature": "sha256=" + hmac_hex(INGEST_SECRET, body)}
    if kind == "webhook":
        return draw(standard_webhook(INGEST_WEBHOOK_SECRET, body, now))
    if kind == "admin":
        return {"authorization": f"Bearer {ADMIN_TOKEN}"}
    if kind == "none":
        return {}
    names = st.sampled_from(CREDENTIAL_HEADERS)
    return draw(st.dictionaries(names, GARBAGE, min_size=1, max_size=3))


@st.composite
def posthog_credentials(draw: st.DrawFn, body: bytes, now: float) -> dict[str, str]:
    """The destination's Standard Webhooks signature, the static header (right or wrong), the
    ingest token (not a PostHog credential), none, or garbage."""
    kind = draw(st.sampled_from(["webhook", "webhook", "header", "header", "other"]))
    if kind == "webhook":
        return draw(standard_webhook(POSTHOG_SECRET, body, now))
    if kind == "header":
        value = draw(mostly(st.just(POSTHOG_HEADER_SECRET), GARBAGE, ratio=3))
        return {POSTHOG_HEADER: value}
    return draw(credentials(body, now))


@st.composite
def request_headers(
    draw: st.DrawFn, auth: st.SearchStrategy[dict[str, str]], *, json_body: bool = True
) -> dict[str, str]:
    """Sometimes garbage in a header or two; with a body, a content type and sometimes a
    wrong ``Content-Length``; then ``auth``."""
    garbage = st.dictionaries(st.sampled_from(FUZZED_HEADERS), GARBAGE, min_size=1, max_size=2)
    headers = draw(mostly(st.just({}), garbage, ratio=3))
    if json_body:
        content_type = draw(CONTENT_TYPES)
        if content_type is not None:
            headers["content-type"] = content_type
        declared_length = draw(mostly(st.none(), DECLARED_LENGTHS, ratio=8))
        if declared_length is not None:
            headers["content-length"] = declared_length
    return {**headers, **draw(auth)}


# --- sending and checking ----------------------------------------------------------------------


def _shown(value: bytes, limit: int = 300) -> str:
    text = repr(value[:limit])
    return text + (f" ... ({len(value)} bytes)" if len(value) > limit else "")


def describe(request: httpx.Request, response: httpx.Response | None = None) -> str:
    """The request (and answer) as a reproducer for a failure message."""
    lines = [f"{request.method} {request.url.raw_path.decode('ascii')}"]
    lines += [f"  {name.decode()}: {_shown(value)}" for name, value in request.headers.raw]
    lines.append(f"  body: {_shown(request.content)}")
    if response is not None:
        lines.append(f"-> {response.status_code} {_shown(response.content)}")
    return "\n".join(lines)


def answer_problem(request: httpx.Request, response: httpx.Response) -> str | None:
    """What is wrong with an answer: a 5xx, an error that is not a JSON object with string
    ``error`` and ``detail``, or a 2xx JSON answer that does not parse; None if nothing."""
    if response.status_code >= 500:
        return "a server error"
    is_error = response.status_code >= 400
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if request.method == "HEAD" or not (is_error or is_json):
        return None
    try:
        body = response.json()
    except ValueError:
        return "an answer that is not JSON"
    if is_error and not (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and isinstance(body.get("detail"), str)
    ):
        return "an error without string 'error' and 'detail'"
    return None


async def send(
    h: Harness,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """Send one request and check its answer (an exception the app raised is a 500)."""
    raw_headers = {name: value.encode("latin-1") for name, value in (headers or {}).items()}
    request = h.client.build_request(method, url, content=body, headers=raw_headers, params=params)
    try:
        response = await h.client.send(request)
    except Exception as exc:
        raise AssertionError(f"the app raised {exc!r} (a 500) on:\n{describe(request)}") from exc
    event(f"{method} {response.status_code}")
    problem = answer_problem(request, response)
    assert problem is None, f"{problem}:\n{describe(request, response)}"
    return response


# --- the app under test ------------------------------------------------------------------------


def zendesk_user(request: httpx.Request) -> httpx.Response:
    """Show User: ids ending in 4 are deleted (404), in 7 answer HTML, others are a user."""
    user_id = request.url.path.rsplit("/", 1)[-1].removesuffix(".json")
    if user_id.endswith("4"):
        return httpx.Response(404, json={"error": "RecordNotFound"})
    if user_id.endswith("7"):
        return httpx.Response(200, text="<html>maintenance</html>")
    user = {"id": user_id, "external_id": f"ext-{user_id}", "email": f"{user_id}@example.com"}
    return httpx.Response(200, json={"user": user})


async def intercom_contact(request: httpx.Request) -> httpx.Response:
    """Get Contact: ids ending in 4 are deleted (404), in 7 answer HTML, in 1 have no replay
    URL; the others carry a replay URL whose session is the id."""
    contact_id = request.url.path.rsplit("/", 1)[-1]
    if contact_id.endswith("4"):
        return httpx.Response(404, json={"type": "error.list", "errors": [{"code": "not_found"}]})
    if contact_id.endswith("7"):
        return httpx.Response(200, text="<html>maintenance</html>")
    attributes = (
        {}
        if contact_id.endswith("1")
        else {"latestPosthogReplayURL": f"https://us.posthog.com/project/1/replay/{contact_id}"}
    )
    contact = {"type": "contact", "id": contact_id, "custom_attributes": attributes}
    return httpx.Response(200, json=contact)


async def seed(h: Harness) -> None:
    """Per product: sess-1 has a batch and no link; sess-2 is linked, and its note, refused by
    the mocked platform, is a dead letter."""
    token = {"authorization": f"Bearer {INGEST_TOKEN}"}
    then = h.clock.now() - 10
    for product_id in PRODUCT_IDS:
        first = batch("sess-1", ("clicked A", then), user_id="u-1", email="u1@example.com")
        r = await h.post_batch(product_id, first)
        assert r.status_code == 202, r.text
        link = {"product_id": product_id, "session_id": "sess-2", "conversation_id": "conv-2"}
        r = await h.client.post("/sessions/link", json=link, headers=token)
        assert r.status_code == 200, r.text
        r = await h.post_batch(product_id, batch("sess-2", ("clicked B", then)))
        assert r.status_code == 202, r.text
    h.clock.advance(60)
    await h.deliver()


@pytest.fixture
async def h(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    """The app over the flushed Redis, started once for all of a test's examples, outbound
    calls mocked: Zendesk's Show User and Intercom's Get Contact answer, every note is refused."""
    with respx.mock(assert_all_called=False) as outbound:
        outbound.get(url__startswith=ZENDESK_USERS).mock(side_effect=zendesk_user)
        outbound.get(url__startswith=INTERCOM_CONTACTS).mock(side_effect=intercom_contact)
        outbound.route().respond(400)
        async with running_app(
            products=fuzz_products(),
            clock=clock,
            redis_client=redis_client,
            admin_token=ADMIN_TOKEN,
        ) as harness:
            await seed(harness)
            yield harness


# --- the fuzz tests ----------------------------------------------------------------------------

INGEST = ("POST", "/actions/{product_id}")
WEBHOOK = ("POST", "/chatbot-webhook/{product_id}")
POSTHOG = ("POST", "/posthog/{product_id}")
SESSION_WRITES = {
    ("POST", "/sessions/link"): LINK_BODIES,
    ("POST", "/sessions/{product_id}/{session_id}/proactive"): PROACTIVE_BODIES,
}
READS = [
    ("HEAD", "/chatbot-webhook/{product_id}"),
    ("GET", "/sessions/{product_id}/{session_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
DEBUG = [
    ("GET", "/debug/products"),
    ("GET", "/debug/sessions/{product_id}/{session_id}"),
    ("GET", "/debug/dead-letters/{product_id}"),
    ("GET", "/debug/delivery/{product_id}"),
    ("POST", "/debug/dead-letters/{product_id}/replay"),
]
DOCS = [
    (method, path)
    for path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
    for method in ("GET", "HEAD")
]
QUERIES = st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=2)
LIMITS = st.one_of(
    st.integers(-5, 2000).map(str),
    st.sampled_from(["", "abc", "1e400", "NaN", "9" * 309, "1.5", "0x10", "\u0661"]),
)


@fuzzes(INGEST)
@bounded(600)
@given(data=st.data())
async def test_ingest_never_fails(h: Harness, data: st.DataObject) -> None:
    """Action batches and summaries, one or an array, under every kind of ingest credential."""
    url = fill(data, INGEST[1])
    body = data.draw(INGEST_BODIES, label="body")
    headers = data.draw(request_headers(credentials(body, h.clock.now())), label="headers")
    await send(h, "POST", url, body=body, headers=headers)


async def fuzz_webhook(h: Harness, product_id: str, data: st.DataObject) -> None:
    """One webhook for ``product_id``: its platform's bodies, mostly signed its own way."""
    platform = PLATFORMS[product_id]
    body = data.draw(WEBHOOK_BODIES[platform], label="body")
    # The product's own signature scheme, sometimes another platform's.
    other_schemes = st.sampled_from(sorted(set(PLATFORMS.values()) - {platform}))
    scheme = data.draw(mostly(st.just(platform), other_schemes, ratio=6), label="scheme")
    signed = platform_webhook(scheme, body, h.clock.now())
    headers = data.draw(request_headers(signed), label="headers")
    await send(h, "POST", f"/chatbot-webhook/{product_id}", body=body, headers=headers)


@fuzzes(WEBHOOK)
@pytest.mark.parametrize("product_id", [HTTP, CONSOLE])
@bounded(300)
@given(data=st.data())
async def test_bot_webhooks_never_fail(h: Harness, product_id: str, data: st.DataObject) -> None:
    await fuzz_webhook(h, product_id, data)


@fuzzes(WEBHOOK)
@pytest.mark.parametrize("product_id", [INTERCOM, ZENDESK, SALESFORCE])
@pytest.mark.timeout(60)  # a failure's report (the app logs its traceback) takes seconds
@bounded(1000)  # their parsers read far more of the body than a bot event's
@given(data=st.data())
async def test_vendor_webhooks_never_fail(h: Harness, product_id: str, data: st.DataObject) -> None:
    await fuzz_webhook(h, product_id, data)


@fuzzes(POSTHOG)
@bounded(400)
@given(data=st.data())
async def test_posthog_events_never_fail(h: Harness, data: st.DataObject) -> None:
    """PostHog events, one or an array, signed, with the static header, or neither."""
    url = fill(data, POSTHOG[1])
    body = data.draw(POSTHOG_BODIES, label="body")
    headers = data.draw(request_headers(posthog_credentials(body, h.clock.now())), label="headers")
    await send(h, "POST", url, body=body, headers=headers)


@fuzzes(*SESSION_WRITES)
@bounded(250)
@given(data=st.data())
async def test_session_writes_never_fail(h: Harness, data: st.DataObject) -> None:
    """Links and proactive triggers, under every kind of ingest credential."""
    method, template = data.draw(st.sampled_from(sorted(SESSION_WRITES)), label="operation")
    url = fill(data, template)
    body = data.draw(SESSION_WRITES[method, template], label="body")
    headers = data.draw(request_headers(credentials(body, h.clock.now())), label="headers")
    await send(h, method, url, body=body, headers=headers)


@fuzzes(*READS)
@bounded(200)
@given(data=st.data())
async def test_reads_never_fail(h: Harness, data: st.DataObject) -> None:
    """Session state, the webhook URL check, probes and metrics, with or without a token."""
    method, template = data.draw(st.sampled_from(READS), label="operation")
    url = fill(data, template)
    auth = credentials(b"", h.clock.now())
    headers = data.draw(request_headers(auth, json_body=False), label="headers")
    params = data.draw(QUERIES, label="query")
    await send(h, method, url, headers=headers, params=params)


@fuzzes(*DEBUG)
@bounded(150)
@given(data=st.data())
async def test_debug_never_fails(h: Harness, data: st.DataObject) -> None:
    """The operator routes, mostly with the admin token, with odd ``limit`` values."""
    method, template = data.draw(st.sampled_from(DEBUG), label="operation")
    url = fill(data, template)
    admin = st.just({"authorization": f"Bearer {ADMIN_TOKEN}"})
    auth = mostly(admin, credentials(b"", h.clock.now()), ratio=2)
    headers = data.draw(request_headers(auth, json_body=False), label="headers")
    params = data.draw(st.fixed_dictionaries({}, optional={"limit": LIMITS}), label="query")
    await send(h, method, url, headers=headers, params=params)


@fuzzes(*DOCS)
@bounded(40)
@given(data=st.data())
async def test_docs_never_fail(h: Harness, data: st.DataObject) -> None:
    """The OpenAPI schema and the docs pages."""
    method, path = data.draw(st.sampled_from(DOCS), label="operation")
    headers = data.draw(request_headers(st.just({}), json_body=False), label="headers")
    await send(h, method, path, headers=headers, params=data.draw(QUERIES, label="query"))


@bounded(60)
@given(data=st.data())
async def test_unrouted_requests_never_fail(h: Harness, data: st.DataObject) -> None:
    """Unknown paths and unsupported methods: a JSON 404 or 405, never a 5xx."""
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    path = data.draw(st.text(max_size=30).map(lambda text: "/" + quote(text)), label="path")
    await send(h, method, path, body=data.draw(NOT_JSON, label="body"))


def test_every_served_operation_is_fuzzed() -> None:
    """The fuzzed operations are exactly what the app serves: a new route needs a fuzz test."""
    products = {p.id: p for p in fuzz_products()}
    app = create_app(Settings(admin_token=ADMIN_TOKEN), products=products, configure_logs=False)
    served = served_operations(app)
    assert INGEST in served, "the listing of operations found nothing"
    assert served - FUZZED == set(), "served but never fuzzed"
    assert FUZZED - served == set(), "fuzzed but no longer served"
