"""Whatever the event pipeline's SDK (``autoplay-sdk``) serialises is accepted and delivered.

Payloads are built with the SDK's own dataclasses and serialised the two ways the SDK does:
``json.dumps(dataclasses.asdict(model))`` (no ``type`` key) and its Redis buffer's
``_payload_to_json(model)`` (with ``type``, without ``conversation_id``). Each test then links
the session, runs the worker and checks the exact note the bot received.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from autoplay_sdk.buffer import _payload_to_json
from autoplay_sdk.core.models import ActionsPayload, AnyPayload, SlimAction, SummaryPayload
from prometheus_client import REGISTRY

from tests.conftest import INGEST_TOKEN, NOTES_URL, REDACT_URL, ManualClock, make_product
from tests.harness import Harness, running_app

T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC; a 3-second bin starts at T0 + 1
AT_T0 = "2024-01-15 12:34:50"
# The harness clock: a whole second, so the few 0.2 s steps a test takes stay inside it.
NOW = T0 + 60
AT_NOW = "2024-01-15 12:35:50"
STEP_S = 0.2  # longer than make_product's post-link debounce (0.15 s)
HEADERS = {"authorization": f"Bearer {INGEST_TOKEN}", "content-type": "application/json"}

Dump = Callable[[AnyPayload], str]


def asdict_json(payload: AnyPayload) -> str:
    return json.dumps(dataclasses.asdict(payload))


def buffer_json(payload: AnyPayload) -> str:
    return _payload_to_json(payload)


each_serialisation = pytest.mark.parametrize(
    "dump", [asdict_json, buffer_json], ids=["asdict", "buffer"]
)


# -- SDK model factories (their defaults are the SDK's own, as ``from_dict`` fills them) ---------


def slim(description: str, at: float = T0, **fields: Any) -> SlimAction:
    fields.setdefault("title", "")
    fields.setdefault("canonical_url", "")
    return SlimAction(description=description, timestamp_start=at, **fields)


def actions(session_id: str | None, *items: SlimAction, **fields: Any) -> ActionsPayload:
    values: dict[str, Any] = {"product_id": "", "user_id": None, "email": None, "forwarded_at": 0.0}
    values.update(count=len(items), **fields)
    return ActionsPayload(session_id=session_id, actions=list(items), **values)


def summary(session_id: str | None, text: str, **fields: Any) -> SummaryPayload:
    values: dict[str, Any] = {"product_id": "", "replaces": 0, "forwarded_at": 0.0, **fields}
    return SummaryPayload(session_id=session_id, summary=text, **values)


def note(session_id: str, when: str, *lines: str) -> str:
    """The exact note text; an empty line is the blank line between two bins."""
    return f"session_id: {session_id}\ntimestamp: {when} UTC\n\n" + "\n".join(lines)


def accepted(count: int, *, duplicates: int = 0, linked: bool = False) -> dict[str, Any]:
    return {"status": "accepted", "accepted": count, "duplicates": duplicates, "linked": linked}


def counter(name: str, **labels: str) -> float:
    """A counter's value summed over the series matching ``labels`` (0 before the first)."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# -- the bot, the app and how a test drives them ------------------------------------------------


class Bot:
    """respx routes for the http platform's bot: records every note it accepts."""

    def __init__(self, mock: respx.MockRouter) -> None:
        self.notes: list[dict[str, Any]] = []
        mock.post(NOTES_URL).mock(side_effect=self._note)
        mock.post(REDACT_URL).mock(return_value=httpx.Response(204))

    def _note(self, request: httpx.Request) -> httpx.Response:
        self.notes.append(json.loads(request.content))
        return httpx.Response(200, json={"id": f"n{len(self.notes)}"})

    def bodies(self, session_id: str | None = None) -> list[str]:
        return [n["body"] for n in self.notes if session_id in (None, n["session_id"])]

    def kinds(self, session_id: str | None = None) -> list[str]:
        return [n["kind"] for n in self.notes if session_id in (None, n["session_id"])]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def bot() -> Iterator[Bot]:
    with respx.mock(assert_all_called=False) as mock:
        yield Bot(mock)


@pytest.fixture
async def h(redis_client: aioredis.Redis, clock: ManualClock, bot: Bot) -> AsyncIterator[Harness]:
    async with running_app(
        products=[make_product()], clock=clock, redis_client=redis_client
    ) as harness:
        yield harness


def array(*raws: str) -> str:
    return "[" + ",".join(raws) + "]"


async def post(h: Harness, raw: str) -> httpx.Response:
    """Post the SDK's bytes as they are (``Harness.post_batch`` would re-serialise them)."""
    return await h.client.post("/actions/acme", content=raw.encode(), headers=HEADERS)


async def ingest(h: Harness, raw: str, expected: dict[str, Any]) -> None:
    r = await post(h, raw)
    assert r.status_code == 202, r.text
    assert r.json() == expected


async def link(h: Harness, session_id: str = "s1", conversation_id: str = "c1") -> None:
    body = {"event": "conversation.created", "conversation_id": conversation_id}
    r = await h.post_webhook("acme", {**body, "session_id": session_id})
    assert r.json()["status"] == "linked", r.text


async def deliver(h: Harness) -> None:
    """Send what is due now, then what the post-link debounce held back."""
    await h.deliver()
    h.clock.advance(STEP_S)
    await h.deliver()


async def link_and_deliver(h: Harness, session_id: str = "s1") -> None:
    await link(h, session_id)
    await deliver(h)


# -- action batches ------------------------------------------------------------------------------


@each_serialisation
async def test_fully_populated_batch_is_delivered(h: Harness, bot: Bot, dump: Dump) -> None:
    identity = {"session_id": "s1", "user_id": "u1", "email": "u1@example.com"}
    payload = ActionsPayload(
        product_id="acme",
        actions=[
            SlimAction(
                title=f"Button {name}",
                description=f"clicked {name}",
                canonical_url="https://app.test/projects/:id",
                index=i,
                type="click",
                timestamp_start=at,
                timestamp_end=at + 0.1,
                raw_url="https://app.test/projects/42?tab=1",
                **identity,
            )
            for i, (name, at) in enumerate([("A", T0), ("B", T0 + 0.5), ("C", T0 + 1.2)])
        ],
        count=3,
        forwarded_at=T0 + 2,
        **identity,
    )
    await ingest(h, dump(payload), accepted(3))
    await link_and_deliver(h)
    assert bot.bodies() == [
        note("s1", AT_T0, "[1] clicked A", "[2] clicked B", "", "[3] clicked C")
    ]
    (delivered,) = bot.notes
    assert delivered["actions"][0] == {
        "description": "clicked A",
        "timestamp_start": T0,
        "timestamp_end": T0 + 0.1,
        "type": "click",
        "title": "Button A",
        "canonical_url": "https://app.test/projects/:id",
        "raw_url": "https://app.test/projects/42?tab=1",
    }


@each_serialisation
async def test_sdk_defaults_are_absent_fields_not_errors(h: Harness, bot: Bot, dump: Dump) -> None:
    # product_id "", type/title/urls "", timestamp_end 0.0, forwarded_at 0.0: the SDK's defaults.
    payload = actions("s1", slim("A"), slim("B", T0 + 4))
    await ingest(h, dump(payload), accepted(2))
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A", "", "[2] B")]
    assert bot.notes[0]["actions"] == [
        {"description": "A", "timestamp_start": T0},
        {"description": "B", "timestamp_start": T0 + 4},
    ]


@each_serialisation
@pytest.mark.parametrize("blank", [None, ""], ids=["null", "empty"])
async def test_blank_optional_fields_mean_absent(
    h: Harness, bot: Bot, dump: Dump, blank: str | None
) -> None:
    optional = dict.fromkeys(("session_id", "user_id", "email", "conversation_id"), blank)
    item = slim("A", **optional, type=blank, title=blank, raw_url=blank, canonical_url=blank)
    batch_fields = {"product_id": blank, "user_id": blank, "email": blank}
    payload = actions("s1", item, conversation_id=blank, **batch_fields)
    # A blank conversation_id links nothing.
    await ingest(h, dump(payload), accepted(1, linked=False))
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A")]
    assert bot.notes[0]["actions"] == [{"description": "A", "timestamp_start": T0}]


@each_serialisation
@pytest.mark.parametrize("batch_session", [None, ""], ids=["null", "empty"])
async def test_batch_without_a_session_takes_the_one_its_actions_carry(
    h: Harness, bot: Bot, dump: Dump, batch_session: str | None
) -> None:
    payload = actions(batch_session, slim("A", session_id="s7"), slim("B", session_id="s7"))
    await ingest(h, dump(payload), accepted(2))
    await link_and_deliver(h, "s7")
    assert bot.bodies() == [note("s7", AT_T0, "[1] A", "[2] B")]


@each_serialisation
async def test_count_disagreeing_with_the_actions_is_accepted(
    h: Harness, bot: Bot, dump: Dump
) -> None:
    payload = actions("s1", slim("A"), slim("B", T0 + 0.5))
    payload.count = 7  # the constructor corrects it; a pipeline dict need not
    assert json.loads(dump(payload))["count"] == 7
    await ingest(h, dump(payload), accepted(2))
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A", "[2] B")]


@each_serialisation
@pytest.mark.parametrize(
    "forwarded_at", [T0 + 0.75, (T0 + 0.75) * 1000], ids=["seconds", "milliseconds"]
)
async def test_zero_timestamp_start_takes_forwarded_at(
    h: Harness, bot: Bot, dump: Dump, forwarded_at: float
) -> None:
    before = counter("bridge_timestamps_defaulted_total")
    payload = actions("s1", slim("A", 0.0), slim("B", 0.0), forwarded_at=forwarded_at)
    await ingest(h, dump(payload), accepted(2))
    assert counter("bridge_timestamps_defaulted_total") == before + 2
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A", "[2] B")]
    assert [a["timestamp_start"] for a in bot.notes[0]["actions"]] == [T0 + 0.75] * 2


@each_serialisation
@pytest.mark.parametrize("zero", [0, 0.0], ids=["int", "float"])
async def test_zero_timestamp_without_forwarded_at_takes_the_time_of_receipt(
    h: Harness, bot: Bot, dump: Dump, zero: float
) -> None:
    before = counter("bridge_timestamps_defaulted_total")
    # The receipt time is in a later bin than T0 + 1 (the clock is a minute on).
    payload = actions("s1", slim("A", zero), slim("B", T0 + 1), forwarded_at=0.0)
    await ingest(h, dump(payload), accepted(2))
    assert counter("bridge_timestamps_defaulted_total") == before + 1
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", "2024-01-15 12:34:51", "[1] B", "", "[2] A")]


@pytest.mark.parametrize("missing", ["null", "absent"])
async def test_null_or_missing_timestamp_start_takes_forwarded_at(
    h: Harness, bot: Bot, missing: str
) -> None:
    body = dataclasses.asdict(actions("s1", slim("A", 0.0), forwarded_at=T0 + 0.75))
    if missing == "null":
        body["actions"][0]["timestamp_start"] = None
    else:
        del body["actions"][0]["timestamp_start"]
    before = counter("bridge_timestamps_defaulted_total")
    await ingest(h, json.dumps(body), accepted(1))
    assert counter("bridge_timestamps_defaulted_total") == before + 1
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A")]


@each_serialisation
async def test_millisecond_timestamps_are_delivered_as_seconds(
    h: Harness, bot: Bot, dump: Dump
) -> None:
    item = slim("A", T0 * 1000, timestamp_end=(T0 + 1) * 1000)
    payload = actions("s1", item, slim("B", (T0 + 4) * 1000), forwarded_at=(T0 + 5) * 1000)
    await ingest(h, dump(payload), accepted(2))
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A", "", "[2] B")]
    assert bot.notes[0]["actions"][0] == {
        "description": "A",
        "timestamp_start": T0,
        "timestamp_end": T0 + 1,
    }


@each_serialisation
async def test_long_text_fields_are_cut_not_rejected(h: Harness, bot: Bot, dump: Dump) -> None:
    limits = {"title": 1000, "raw_url": 8192, "canonical_url": 8192, "type": 64}
    long = slim(
        "A",
        title="t" * 1500,
        raw_url="https://app.test/" + "r" * 9000,
        canonical_url="https://app.test/" + "c" * 9000,
        type="k" * 100,
    )
    # Exactly at the limits: kept whole and not counted.
    exact = slim("B", T0 + 0.5, **{field: "x" * limit for field, limit in limits.items()})
    before = {field: counter("bridge_fields_truncated_total", field=field) for field in limits}
    await ingest(h, dump(actions("s1", long, exact)), accepted(2))
    after = {field: counter("bridge_fields_truncated_total", field=field) for field in limits}
    assert after == {field: value + 1 for field, value in before.items()}

    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A", "[2] B")]
    cut, whole = bot.notes[0]["actions"]
    assert {field: len(cut[field]) for field in limits} == limits
    assert cut["title"] == "t" * 1000
    assert cut["raw_url"] == ("https://app.test/" + "r" * 9000)[:8192]
    assert cut["canonical_url"] == ("https://app.test/" + "c" * 9000)[:8192]
    assert cut["type"] == "k" * 64
    assert {field: whole[field] for field in limits} == {f: "x" * n for f, n in limits.items()}


@each_serialisation
async def test_unicode_and_emoji_descriptions_are_delivered_verbatim(
    h: Harness, bot: Bot, dump: Dump
) -> None:
    texts = ["Clicked \u201cExport\u201d \U0001f4ca", "Caf\u00e9 \u65e5\u672c\u8a9e \u2705"]
    texts.append("\U0001f469\u200d\U0001f4bb opened \u00bbSettings\u00ab \U0001f1e9\U0001f1ea")
    payload = actions(
        "s1", *(slim(t, T0 + i * 0.1, title=f"\u2728 {i}") for i, t in enumerate(texts))
    )
    assert "\\ud83d" in dump(payload)  # ASCII-escaped surrogate pairs on the wire
    await ingest(h, dump(payload), accepted(3))
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, *(f"[{i}] {t}" for i, t in enumerate(texts, 1)))]
    assert [a["title"] for a in bot.notes[0]["actions"]] == ["\u2728 0", "\u2728 1", "\u2728 2"]


@each_serialisation
async def test_merged_payloads_are_delivered_as_one_batch(h: Harness, bot: Bot, dump: Dump) -> None:
    merged = ActionsPayload.merge(
        [
            actions("s1", slim("C", T0 + 4), forwarded_at=T0 + 5),
            actions("s1", slim("A"), slim("B", T0 + 0.5), user_id="u1", forwarded_at=T0 + 1),
            actions("s1", slim("D", T0 + 4.5), email="u1@example.com", forwarded_at=T0 + 6),
        ]
    )
    assert [a.index for a in merged.actions] == [0, 1, 2, 3]
    await ingest(h, dump(merged), accepted(4))
    # The merge took user_id from the second payload: a link by user finds the session.
    body = {"event": "conversation.created", "conversation_id": "c1", "user_id": "u1"}
    r = await h.post_webhook("acme", body)
    assert r.json() == {"status": "linked", "session_id": "s1", "conversation_id": "c1"}
    await deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A", "[2] B", "", "[3] C", "[4] D")]


SPARSE = [
    pytest.param(
        {"session_id": "s1", "actions": [{"description": "A", "timestamp_start": T0}]},
        note("s1", AT_T0, "[1] A"),
        id="session-and-one-action",
    ),
    pytest.param(
        {"actions": [{"description": "A", "timestamp_start": T0, "session_id": "s1"}]},
        note("s1", AT_T0, "[1] A"),
        id="session-on-the-action-only",
    ),
    pytest.param(
        {
            "session_id": "s1",
            "forwarded_at": T0,
            "actions": [{"description": "A"}, {"description": "B", "timestamp_start": T0 + 4}],
        },
        note("s1", AT_T0, "[1] A", "", "[2] B"),
        id="action-without-a-time",
    ),
    pytest.param(
        {"session_id": "s1", "actions": [{"description": "A", "timestamp_start": T0 * 1000}]},
        note("s1", AT_T0, "[1] A"),
        id="milliseconds",
    ),
]


@each_serialisation
@pytest.mark.parametrize(("sparse", "expected"), SPARSE)
async def test_from_dict_of_a_sparse_dict_is_delivered(
    h: Harness, bot: Bot, dump: Dump, sparse: dict[str, Any], expected: str
) -> None:
    payload = ActionsPayload.from_dict(sparse)
    r = await post(h, dump(payload))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == len(sparse["actions"])
    await link_and_deliver(h)
    assert bot.bodies() == [expected]


@each_serialisation
async def test_redelivery_in_the_other_serialisation_is_a_duplicate(
    h: Harness, bot: Bot, dump: Dump
) -> None:
    payload = actions("s1", slim("A", type="click"), slim("B", T0 + 4, canonical_url="/b"))
    other = buffer_json if dump is asdict_json else asdict_json
    await ingest(h, dump(payload), accepted(2))
    await ingest(h, other(payload), accepted(0, duplicates=2))
    await link_and_deliver(h)
    assert bot.bodies() == [note("s1", AT_T0, "[1] A", "", "[2] B")]


async def test_asdict_conversation_id_links_the_session_on_arrival(h: Harness, bot: Bot) -> None:
    payload = actions("s1", slim("A"), conversation_id="c9")
    await ingest(h, asdict_json(payload), accepted(1, linked=True))
    await deliver(h)
    assert [(n["conversation_id"], n["body"]) for n in bot.notes] == [
        ("c9", note("s1", AT_T0, "[1] A"))
    ]


async def test_buffer_serialisation_drops_conversation_id_so_nothing_links(
    h: Harness, bot: Bot
) -> None:
    payload = actions("s1", slim("A"), conversation_id="c9")
    assert "conversation_id" not in buffer_json(payload)
    await ingest(h, buffer_json(payload), accepted(1, linked=False))
    await deliver(h)
    assert bot.notes == []
    await link_and_deliver(h)
    assert [(n["conversation_id"], n["body"]) for n in bot.notes] == [
        ("c1", note("s1", AT_T0, "[1] A"))
    ]


# -- summaries -----------------------------------------------------------------------------------


@each_serialisation
@pytest.mark.parametrize(
    "make_summary",
    [
        lambda: summary("s1", "The user compared plans.", product_id="acme", replaces=2),
        lambda: SummaryPayload.from_dict(
            {"session_id": "s1", "summary": "The user compared plans."}
        ),
    ],
    ids=["full", "from-sparse-dict"],
)
async def test_summary_is_delivered_after_the_queued_action_notes(
    h: Harness, bot: Bot, dump: Dump, make_summary: Callable[[], SummaryPayload]
) -> None:
    await ingest(h, dump(actions("s1", slim("A"))), accepted(1))
    await link_and_deliver(h)  # the at-link flush
    await ingest(h, dump(actions("s1", slim("B", T0 + 5))), accepted(1, linked=True))
    await ingest(h, dump(make_summary()), accepted(1, linked=True))
    await deliver(h)
    assert bot.kinds() == ["actions", "actions", "summary"]
    assert bot.bodies() == [
        note("s1", AT_T0, "[1] A"),
        note("s1", "2024-01-15 12:34:55", "[1] B"),
        note("s1", AT_NOW, "The user compared plans."),
    ]


@each_serialisation
async def test_summary_without_a_session_is_a_field_error(h: Harness, dump: Dump) -> None:
    r = await post(h, dump(summary(None, "Did X.", product_id="acme")))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_payload"
    assert [f["loc"] for f in body["fields"]] == ["session_id"]
    assert body["fields"][0]["message"]


@each_serialisation
async def test_summary_without_a_session_in_an_array_rejects_the_whole_request(
    h: Harness, dump: Dump
) -> None:
    good = dump(actions("s1", slim("A")))
    r = await post(h, array(good, dump(summary(None, "Did X."))))
    assert r.status_code == 422, r.text
    assert [f["loc"] for f in r.json()["fields"]] == ["[1].session_id"]
    await ingest(h, good, accepted(1))  # nothing of the rejected request was stored


async def test_array_mixing_both_models_and_both_serialisations_is_accepted_whole(
    h: Harness, bot: Bot
) -> None:
    body = array(
        asdict_json(actions("s1", slim("A"), slim("B", T0 + 1.5))),
        asdict_json(summary("s1", "One summary.")),
        buffer_json(actions("s2", slim("X", T0 + 2))),
        buffer_json(summary("s2", "Another summary.", replaces=1)),
    )
    await ingest(h, body, accepted(5))
    await link(h, "s1", "c1")
    await link(h, "s2", "c2")
    await deliver(h)
    assert bot.kinds("s1") == bot.kinds("s2") == ["actions", "summary"]
    assert bot.bodies("s1") == [
        note("s1", AT_T0, "[1] A", "", "[2] B"),
        note("s1", AT_NOW, "One summary."),
    ]
    assert bot.bodies("s2") == [
        note("s2", "2024-01-15 12:34:52", "[1] X"),
        note("s2", AT_NOW, "Another summary."),
    ]
