"""One PostHog event as one action: type, description (byte for byte) and page."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.posthog.describe import Described, current_url, describe, event_time, session_id

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "posthog"
EXPORT_CSV_CHAIN = (
    'button.btn.btn-primary:attr__class="btn btn-primary"nth-child="2"nth-of-type="1"'
    'text="Export CSV";div.toolbar:nth-child="1";body'
)


def payload(name: str) -> dict[str, Any]:
    """A whole webhook body, as PostHog's HTTP Webhook destination posts it."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def event(
    name: str = "$autocapture",
    chain: str | None = None,
    /,
    **properties: Any,
) -> dict[str, Any]:
    """An event object with ``$pathname`` /app unless given, and ``elements_chain`` if given."""
    built: dict[str, Any] = {
        "uuid": "0195937c-4e2a-7d61-b8f3-2c9a0e4d7b15",
        "event": name,
        "distinct_id": "user-1",
        "properties": {"$pathname": "/app", **properties},
        "timestamp": "2025-03-14T09:26:53.589Z",
        "url": "https://eu.posthog.com/project/1/events/x",
    }
    if chain is not None:
        built["elements_chain"] = chain
    return built


def clicked(chain: str | None = None, **properties: Any) -> str:
    """The description of a click on the chain's first element, on /app."""
    built = event("$autocapture", chain, **{"$event_type": "click", **properties})
    return describe(built).description


# --- real payloads ---------------------------------------------------------------------------


def test_an_autocapture_click_from_a_real_payload() -> None:
    body = payload("autocapture_click")
    assert describe(body["event"]) == Described(
        type="click",
        description='User clicked button "Export CSV" on /dashboard',
        page="/dashboard",
    )
    assert session_id(body["event"]) == "0195937a-0b8e-7c13-a6d4-91f2e5b3c870"
    assert current_url(body["event"]) == "https://app.example.com/dashboard?range=30d"
    assert event_time(body["event"]) == pytest.approx(1_741_944_413.589)


def test_the_real_chain_alone_names_the_button() -> None:
    """Without ``$el_text`` the label comes from parsing the payload's ``elements_chain``."""
    body = payload("autocapture_click")
    del body["event"]["properties"]["$el_text"]
    assert describe(body["event"]).description == 'User clicked button "Export CSV" on /dashboard'


def test_a_pageview_from_a_real_payload() -> None:
    body = payload("pageview")
    assert describe(body["event"]) == Described("pageview", "User viewed /pricing", "/pricing")
    assert session_id(body["event"]) == "0195a1c9-3e62-7d4b-8a10-e6f5b2c9d703"
    assert event_time(body["event"]) == pytest.approx(1_742_207_702.004)


def test_a_pageview_without_pathname_uses_the_path_of_its_url() -> None:
    body = payload("pageview")
    del body["event"]["properties"]["$pathname"]
    assert describe(body["event"]).description == "User viewed /pricing"


# --- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "kind", "description"),
    [
        (
            event("$autocapture", EXPORT_CSV_CHAIN, **{"$event_type": "click"}),
            "click",
            'User clicked button "Export CSV" on /app',
        ),
        (
            event("$autocapture", 'form:nth-child="1"', **{"$event_type": "submit"}),
            "submit",
            "User submitted form on /app",
        ),
        (
            event("$rageclick", EXPORT_CSV_CHAIN),
            "rageclick",
            'User rage-clicked button "Export CSV" on /app',
        ),
        (
            event("$dead_click", EXPORT_CSV_CHAIN),
            "dead_click",
            'User clicked button "Export CSV" on /app and nothing happened',
        ),
        (event("$pageview"), "pageview", "User viewed /app"),
        (event("$pageleave"), "pageleave", "User left /app"),
        (event("$screen", **{"$screen_name": "Settings"}), "screen", "User viewed screen Settings"),
        (event("Signed up"), "custom", "User triggered Signed up on /app"),
        (event("$identify"), "custom", "User triggered $identify on /app"),
    ],
)
def test_each_event_kind(built: dict[str, Any], kind: str, description: str) -> None:
    assert describe(built) == Described(kind, description, "/app")


@pytest.mark.parametrize(
    ("event_type", "kind", "verb"),
    [
        ("click", "click", "clicked"),
        ("submit", "submit", "submitted"),
        ("change", "change", "changed"),
        ("copy", "copy", "interacted with"),
        ("Click", "Click", "interacted with"),
        (None, "autocapture", "interacted with"),
        ("", "autocapture", "interacted with"),
        (7, "autocapture", "interacted with"),
    ],
)
def test_the_autocapture_verb(event_type: object, kind: str, verb: str) -> None:
    properties = {} if event_type is None else {"$event_type": event_type}
    described = describe(event("$autocapture", 'input:attr__name="q"', **properties))
    assert described == Described(kind, f"User {verb} field on /app", "/app")


@pytest.mark.parametrize(
    ("screen_name", "description"),
    [
        ("Checkout", "User viewed screen Checkout"),
        ("  Order\n  details ", "User viewed screen Order details"),
        ("x" * 81, f"User viewed screen {'x' * 80}…"),
        (None, "User viewed a screen"),
        ("   ", "User viewed a screen"),
        (["Home"], "User viewed a screen"),
    ],
)
def test_a_screen(screen_name: object, description: str) -> None:
    properties = {} if screen_name is None else {"$screen_name": screen_name}
    assert describe(event("$screen", **properties)).description == description


@pytest.mark.parametrize("name", [None, "", "  ", 42])
def test_an_event_without_a_name(name: object) -> None:
    built = event()
    built["event"] = name
    assert describe(built) == Described("custom", "User triggered an unnamed event on /app", "/app")


# --- the page --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "page"),
    [
        ({"$pathname": "/pricing", "$current_url": "https://x.io/other"}, "/pricing"),
        ({"$current_url": "https://app.example.com/settings/billing"}, "/settings/billing"),
        ({"$current_url": "https://app.example.com/a/b?tab=plans&x=1#invoices"}, "/a/b"),
        ({"$current_url": "https://app.example.com"}, "/"),
        ({"$current_url": "https://app.example.com?q=1"}, "/"),
        ({"$pathname": "", "$current_url": "https://x.io/from-url"}, "/from-url"),
        ({"$current_url": "http://[::1/broken"}, "the page"),
        ({"$current_url": 12}, "the page"),
        ({}, "the page"),
    ],
)
def test_the_page(properties: dict[str, Any], page: str) -> None:
    built = {"event": "$pageview", "properties": properties}
    assert describe(built) == Described("pageview", f"User viewed {page}", page)


def test_properties_that_are_not_an_object_count_as_none() -> None:
    described = describe({"event": "$rageclick", "properties": "oops", "elements_chain": "a"})
    assert described.description == "User rage-clicked link on the page"


# --- the noun --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "noun"),
    [
        ("a", "link"),
        ("button", "button"),
        ("input", "field"),
        ("textarea", "field"),
        ("select", "field"),
        ("img", "image"),
        ("form", "form"),
        ("div", "div"),
        ("svg", "svg"),
        ("SPAN", "span"),
        ("my-widget", "my-widget"),
    ],
)
def test_the_noun_of_a_tag(tag: str, noun: str) -> None:
    assert clicked(f'{tag}.x:nth-child="1"') == f"User clicked {noun} on /app"
    assert (
        describe(event("$rageclick", **{"$elements": [{"tag_name": tag}]})).description
        == f"User rage-clicked {noun} on /app"
    )


@pytest.mark.parametrize(
    ("chain", "target"),
    [
        (None, "element"),
        ("", "element"),
        ("   ", "element"),
        (";", "element"),
        # Attributes with no tag in front of them.
        (':text="x"', 'element "x"'),
        # No colon: the whole entry would be the tag, and it does not look like one.
        ('text="x"', "element"),
    ],
)
def test_no_element_is_an_element(chain: str | None, target: str) -> None:
    assert clicked(chain) == f"User clicked {target} on /app"


# --- the label -------------------------------------------------------------------------------


def test_el_text_comes_before_the_element_text() -> None:
    chain = 'button:attr__aria-label="Aria"text="Chain text"'
    assert clicked(chain, **{"$el_text": "Property"}) == 'User clicked button "Property" on /app'


def test_the_element_text_comes_before_the_aria_label() -> None:
    chain = 'button:attr__aria-label="Aria"text="Chain text"'
    assert clicked(chain) == 'User clicked button "Chain text" on /app'


def test_the_aria_label_names_an_icon_button() -> None:
    chain = 'button.icon:attr__aria-label="Close dialog"nth-child="3"nth-of-type="1"'
    assert clicked(chain) == 'User clicked button "Close dialog" on /app'


def test_a_blank_text_falls_through_to_the_next() -> None:
    chain = 'button:attr__aria-label="Close"text="  "'
    assert clicked(chain, **{"$el_text": " \n "}) == 'User clicked button "Close" on /app'


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("  Export\n\t CSV  ", "Export CSV"),
        ("Pay\u00a0now\u2003\u3000please", "Pay now please"),
        ("a\u2028b\r\nc", "a b c"),
    ],
)
def test_whitespace_runs_become_one_space(text: str, label: str) -> None:
    assert clicked("button", **{"$el_text": text}) == f'User clicked button "{label}" on /app'


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("é" * 80, "é" * 80),
        ("é" * 81, "é" * 80 + "…"),
        # Cut at 80 characters exactly, even when the 80th is a space.
        ("word " * 40, "word " * 16 + "…"),
        ("  " + "x" * 80 + "  ", "x" * 80),
    ],
)
def test_a_label_is_cut_at_80_characters(text: str, label: str) -> None:
    assert clicked("button", **{"$el_text": text}) == f'User clicked button "{label}" on /app'


def test_a_very_long_text_in_the_chain_is_cut() -> None:
    chain = 'a:href="/x"text="' + "ü" * 10_000 + '";div'
    assert clicked(chain) == f'User clicked link "{"ü" * 80}…" on /app'


# --- the chain -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chain", "target"),
    [
        # PostHog escapes a quote inside a value as \" and nothing else.
        (r'button:text="Say \"hi\""', 'button "Say "hi""'),
        (r'button:attr__title="a \"b\""text="Real"', 'button "Real"'),
        # A backslash is written as is; it stays, and one before a quote escapes the quote.
        (r'a:text="C:\temp\\logs"', r'link "C:\temp\\logs"'),
        (r'a:text="\\\"x"', r'link "\\"x"'),
        # ; and : inside quotes belong to the value.
        ('a:href="/terms;v=2"text="Terms; Conditions";div', 'link "Terms; Conditions"'),
        ('a:text="at 10:30:00";p:text="Other"', 'link "at 10:30:00"'),
        # Another attribute's value that looks like a text pair is not the text.
        (r'button:attr__data-x="text=\"No\""text="Yes"', 'button "Yes"'),
        ('button:attr__data-text="No"', "button"),
        # Classes, Tailwind ones with colons included, are read past.
        ('button.btn.btn-primary:attr__class="btn btn-primary"text="Go"', 'button "Go"'),
        ('button.hover:bg-blue-600.md:px-4:text="Save"', 'button "Save"'),
        ('div.data-[state=open]:bg-accent:text="Menu"', 'div "Menu"'),
        # The attributes PostHog always adds, before and after the text.
        ('li:nth-child="4"nth-of-type="2"text="Fourth"', 'li "Fourth"'),
        ('li:href="/4"nth-child="4"nth-of-type="2"text="Fourth"attr__id="i4"', 'li "Fourth"'),
        # No attributes at all; a trailing colon; an entry of only a tag.
        ("button.primary", "button"),
        ("button:", "button"),
        ("body", "body"),
        # The first entry is the element; empty ones before it are skipped.
        (';;  button:text="First";a:text="Second"', 'button "First"'),
        # Unicode.
        ('button:text="Zahlung bestätigen ✓"', 'button "Zahlung bestätigen ✓"'),
        ('a:text="注文を確定 🛒"', 'link "注文を確定 🛒"'),
    ],
)
def test_the_chain(chain: str, target: str) -> None:
    assert clicked(chain) == f"User clicked {target} on /app"


@pytest.mark.parametrize(
    ("chain", "target"),
    [
        # A value that never closes is dropped; the pairs before it stay.
        ('button:text="Export CSV', "button"),
        ('button:attr__aria-label="Close"text="Export CSV;div', 'button "Close"'),
        ('button:text="ends in a backslash\\', "button"),
        ('button:text=Export"nth-child="1"', "button"),
        ('button:="x"', "button"),
        ('"', "element"),
        ('"";div', "element"),
        ("\\", "element"),
        ("=", "element"),
        (':=";', "element"),
        ('b<u>tton:text="x"', 'element "x"'),
    ],
)
def test_a_malformed_chain_yields_fewer_fields(chain: str, target: str) -> None:
    assert clicked(chain) == f"User clicked {target} on /app"


def test_the_chain_in_properties_when_the_event_has_none() -> None:
    built = event("$rageclick", "", **{"$elements_chain": 'a:text="Pricing";nav'})
    assert describe(built).description == 'User rage-clicked link "Pricing" on /app'


def test_the_events_chain_comes_before_the_properties_chain() -> None:
    built = event("$rageclick", 'a:text="Event"', **{"$elements_chain": 'img:text="Props"'})
    assert describe(built).description == 'User rage-clicked link "Event" on /app'


@pytest.mark.parametrize(
    ("element", "target"),
    [
        ({"tag_name": "button", "$el_text": "Buy now", "text": "Other"}, 'button "Buy now"'),
        ({"tag_name": "a", "text": "Docs"}, 'link "Docs"'),
        ({"tag_name": "button", "attr__aria-label": "Close"}, 'button "Close"'),
        ({"tag_name": "button", "attributes": {"attr__aria-label": "Menu"}}, 'button "Menu"'),
        ({"tag_name": "input", "attr__class": "search", "nth_child": 1}, "field"),
        ({"tag_name": None, "$el_text": 5}, "element"),
    ],
)
def test_the_first_of_elements_when_there_is_no_chain(element: dict[str, Any], target: str) -> None:
    built = event("$dead_click", **{"$elements": [element, {"tag_name": "form", "text": "No"}]})
    assert describe(built).description == f"User clicked {target} on /app and nothing happened"


@pytest.mark.parametrize("elements", [[], ["button"], "button", {"tag_name": "a"}, None])
def test_elements_that_are_not_a_list_of_objects(elements: object) -> None:
    built = event("$dead_click", **{"$elements": elements})
    assert describe(built).description == "User clicked element on /app and nothing happened"


def test_a_chain_wins_over_elements() -> None:
    built = event("$rageclick", "img", **{"$elements": [{"tag_name": "a"}]})
    assert describe(built).description == "User rage-clicked image on /app"


# --- the helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"$session_id": "0195937a-0b8e-7c13"}, "0195937a-0b8e-7c13"),
        ({"$session_id": ""}, None),
        ({"$session_id": "  "}, None),
        ({"$session_id": 42}, None),
        ({}, None),
    ],
)
def test_session_id(properties: dict[str, Any], expected: str | None) -> None:
    assert session_id({"properties": properties}) == expected


def test_helpers_without_properties() -> None:
    assert session_id({}) is None
    assert current_url({"properties": ["x"]}) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://app.example.com/a?b=1#c", "https://app.example.com/a?b=1#c"),
        ("", None),
        (None, None),
        (3, None),
    ],
)
def test_current_url(url: object, expected: str | None) -> None:
    assert current_url({"properties": {"$current_url": url}}) == expected


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2025-03-17T10:35:02Z", 1_742_207_702.0),
        ("2025-03-17T10:35:02.004Z", 1_742_207_702.004),
        ("2025-03-17T10:35:02.004+00:00", 1_742_207_702.004),
        ("2025-03-17T12:35:02.004+02:00", 1_742_207_702.004),
        ("2025-03-17T05:05:02-05:30", 1_742_207_702.0),
        ("2025-03-17T10:35:02.004123456Z", 1_742_207_702.004123),
        ("2025-03-17 10:35:02", 1_742_207_702.0),
        (" 2025-03-17T10:35:02Z ", 1_742_207_702.0),
        ("2025-13-17T10:35:02Z", None),
        ("yesterday", None),
        ("", None),
        (1_742_207_702, None),
        (None, None),
    ],
)
def test_event_time(timestamp: object, expected: float | None) -> None:
    found = event_time({"timestamp": timestamp})
    assert found == (None if expected is None else pytest.approx(expected, abs=1e-6))


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local time zone 10 hours from UTC, so reading a timestamp as local time would show."""
    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_a_timestamp_without_offset_is_utc_whatever_the_local_zone() -> None:
    assert time.localtime(0).tm_hour == 14  # the fixture took effect
    assert event_time({"timestamp": "2025-03-17T10:35:02.004"}) == pytest.approx(1_742_207_702.004)


def test_described_is_frozen() -> None:
    described = describe(event("$pageview"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        described.page = "/other"  # type: ignore[misc]
