r"""One PostHog event as one line a support agent can read: ``User clicked button "Export CSV"``.

PostHog's HTTP Webhook destination posts ``{"event": {...}, "person": {...}}``. Everything here
takes the inner ``event`` object: its name (``event``), its ``properties``, its ``timestamp`` and,
for clicks, the element the user acted on. Pure functions over decoded JSON; no value inside the
event makes them raise: a field that is missing, blank or of the wrong type counts as absent.

The element comes as PostHog's ``elements_chain``: the clicked element first, then each of its
ancestors, joined by ``;``::

    button.btn.btn-primary:attr__class="btn btn-primary"nth-child="2"text="Export CSV";div;body

An entry is the tag name and its classes joined by dots, a colon, then ``key="value"`` pairs
written back to back. The keys we read are ``text`` and ``attr__aria-label``; others such as
``href``, ``nth-child`` or ``attr__id`` are parsed and ignored. PostHog escapes only one thing in
a value, a double quote, as ``\"``: a backslash, a ``;`` or a ``:`` is written as it is. So a
``;`` splits entries only outside quotes, and a backslash inside quotes always travels with the
next character, the way PostHog's own parser reads it; only ``\"`` is turned back into ``"``.
Classes can hold colons themselves (``hover:underline``), so the tag part ends at the first colon
that starts a ``key=`` (or ends the entry), not at the first colon.

Older events carry the chain as ``properties.$elements_chain``, older still as a list of dicts in
``properties.$elements``; both are read when ``elements_chain`` is empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

MAX_LABEL_CHARS = 80
ELLIPSIS = "\u2026"
NO_PAGE = "the page"

_VERBS = {"click": "clicked", "submit": "submitted", "change": "changed"}
_NOUNS = {
    "a": "link",
    "button": "button",
    "input": "field",
    "textarea": "field",
    "select": "field",
    "img": "image",
    "form": "form",
}

# The colon that ends "tag.class.class": the one followed by an attribute key and "=", or the
# last character of the entry. Keys are letters, digits, "_" and "-" (attr__aria-label).
_ATTRIBUTES_START = re.compile(r":(?=[A-Za-z0-9_-]*=|\Z)")
# The rest of a quoted value after its opening quote: any character but a quote or a backslash,
# or a backslash with whatever follows it, up to the closing quote. Possessive: one pass, no
# backtracking on a value that never closes.
_QUOTED_TAIL = re.compile(r'((?:[^"\\]|\\.)*+)"', re.DOTALL)
# What a tag name looks like, custom elements (my-widget) included. Anything else, such as what
# is left of a malformed entry, is not put into a sentence.
_TAG = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True, slots=True)
class Described:
    """What the action shows: a short ``type``, the sentence, and the page it happened on."""

    type: str
    description: str
    page: str


@dataclass(frozen=True, slots=True)
class _Element:
    """The little of an element a description uses. ``tag`` is lowercased, "" when unknown."""

    tag: str
    text: str | None
    aria_label: str | None


def describe(event: Mapping[str, Any]) -> Described:
    """The action for one event (see the module docstring for where each field comes from).

    ``$screen`` without a ``$screen_name`` reads "User viewed a screen"; an ``$autocapture``
    without ``$event_type`` gets the type ``autocapture`` and the verb "interacted with"; an
    event with no name reads "User triggered an unnamed event on ...". ``page`` is the same text
    the sentence uses, so it is "the page" when the event says nothing about where it happened.
    """
    properties = _properties(event)
    page = _page(properties)
    name = string_field(event, "event")
    match name:
        case "$autocapture":
            event_type = string_field(properties, "$event_type")
            verb = _VERBS.get(event_type or "", "interacted with")
            target = _target(event, properties)
            return Described(event_type or "autocapture", f"User {verb} {target} on {page}", page)
        case "$rageclick":
            target = _target(event, properties)
            return Described("rageclick", f"User rage-clicked {target} on {page}", page)
        case "$dead_click":
            target = _target(event, properties)
            text = f"User clicked {target} on {page} and nothing happened"
            return Described("dead_click", text, page)
        case "$pageview":
            return Described("pageview", f"User viewed {page}", page)
        case "$pageleave":
            return Described("pageleave", f"User left {page}", page)
        case "$screen":
            screen = _clean(string_field(properties, "$screen_name"))
            text = f"User viewed screen {screen}" if screen else "User viewed a screen"
            return Described("screen", text, page)
        case _:
            return Described(
                "custom", f"User triggered {name or 'an unnamed event'} on {page}", page
            )


def session_id(event: Mapping[str, Any]) -> str | None:
    """``properties.$session_id``, the key that ties the event to a support conversation."""
    return string_field(_properties(event), "$session_id")


def current_url(event: Mapping[str, Any]) -> str | None:
    """``properties.$current_url``, the full address of the page, query string included."""
    return string_field(_properties(event), "$current_url")


def event_time(event: Mapping[str, Any]) -> float | None:
    """The event's ISO 8601 ``timestamp`` in epoch seconds, None when missing or unreadable.

    PostHog sends UTC with ``Z`` or ``+00:00`` and milliseconds; any offset and any number of
    fractional digits are read. A timestamp without an offset is taken as UTC, which is how
    PostHog stores them.
    """
    stamp = string_field(event, "timestamp")
    if stamp is None:
        return None
    try:
        moment = datetime.fromisoformat(stamp.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- fields ------------------------------------------------------------------------------------


def string_field(mapping: object, key: str) -> str | None:
    """The value under ``key`` if ``mapping`` is one and the value is a string with something
    other than whitespace in it (the one reading of an event's text fields)."""
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return value if isinstance(value, str) and value.strip() else None


def _properties(event: Mapping[str, object]) -> Mapping[str, object]:
    properties = event.get("properties")
    return properties if isinstance(properties, Mapping) else {}


def _page(properties: Mapping[str, object]) -> str:
    """``$pathname``, else the path of ``$current_url`` ("/" for a bare host), else "the page"."""
    pathname = string_field(properties, "$pathname")
    if pathname is not None:
        return pathname
    url = string_field(properties, "$current_url")
    if url is not None:
        try:
            return urlsplit(url.strip()).path or "/"
        except ValueError:  # e.g. an unclosed "[" in the host
            pass
    return NO_PAGE


def _clean(text: str | None) -> str:
    """One line of at most 80 characters (plus "…"): whitespace runs become one space."""
    if text is None:
        return ""
    text = " ".join(text.split())
    return text[:MAX_LABEL_CHARS] + ELLIPSIS if len(text) > MAX_LABEL_CHARS else text


# --- the element -------------------------------------------------------------------------------


def _target(event: Mapping[str, object], properties: Mapping[str, object]) -> str:
    """``button "Export CSV"``: what the user acted on, as a noun and an optional quoted label."""
    element = _element(event, properties)
    noun = _NOUNS.get(element.tag, element.tag) if element and element.tag else "element"
    candidates = (
        string_field(properties, "$el_text"),
        element.text if element else None,
        element.aria_label if element else None,
    )
    # The first one that is not blank: an icon button has no text but often an aria-label.
    label = next((cleaned for text in candidates if (cleaned := _clean(text))), "")
    return f'{noun} "{label}"' if label else noun


def _element(event: Mapping[str, object], properties: Mapping[str, object]) -> _Element | None:
    """The target element, from the first place that has one, newest format first."""
    for chain in (
        string_field(event, "elements_chain"),
        string_field(properties, "$elements_chain"),
    ):
        if chain is not None and (entry := _first_entry(chain)):
            return _parse_entry(entry)
    elements = properties.get("$elements")
    if isinstance(elements, list) and elements and isinstance(elements[0], Mapping):
        return _from_dict(elements[0])
    return None


def _tag(raw: str) -> str:
    """The tag name lowercased, or "" when it does not look like one (a broken entry)."""
    tag = raw.strip().lower()
    return tag if _TAG.fullmatch(tag) else ""


def _from_dict(element: Mapping[str, object]) -> _Element:
    """An entry of ``$elements``: ``tag_name``, ``$el_text`` (or ``text``), ``attr__*`` keys,
    which PostHog's own element model keeps under ``attributes`` instead."""
    attributes = element.get("attributes")
    nested: Mapping[str, object] = attributes if isinstance(attributes, Mapping) else {}
    return _Element(
        tag=_tag(string_field(element, "tag_name") or ""),
        text=string_field(element, "$el_text") or string_field(element, "text"),
        aria_label=string_field(element, "attr__aria-label")
        or string_field(nested, "attr__aria-label"),
    )


# --- the chain ---------------------------------------------------------------------------------


def _first_entry(chain: str) -> str:
    """The chain up to its first ``;`` outside quotes, stripped; empty entries are skipped.

    A quote that never closes keeps the rest of the chain in the entry; the entry's parser then
    drops the unfinished value.
    """
    start = index = 0
    while index < len(chain):
        char = chain[index]
        if char == '"':
            closed = _QUOTED_TAIL.match(chain, index + 1)
            if closed is None:
                return chain[start:].strip()
            index = closed.end()
            continue
        if char == ";":
            if entry := chain[start:index].strip():
                return entry
            start = index + 1
        index += 1
    return chain[start:].strip()


def _parse_entry(entry: str) -> _Element:
    """``tag.class.class:key="value"key="value"`` as an element; classes are read past."""
    split = _ATTRIBUTES_START.search(entry)
    head, pairs = (entry[: split.start()], entry[split.end() :]) if split else (entry, "")
    attributes = dict(_attributes(pairs))
    return _Element(
        tag=_tag(head.split(".", 1)[0]),
        text=attributes.get("text"),
        aria_label=attributes.get("attr__aria-label"),
    )


def _attributes(pairs: str) -> Iterator[tuple[str, str]]:
    """The ``key="value"`` pairs written back to back, values unescaped; stops at the first
    pair that does not close, so a broken chain yields the pairs before the break."""
    position = 0
    while (opening := pairs.find('="', position)) != -1:
        closed = _QUOTED_TAIL.match(pairs, opening + 2)
        if closed is None:
            return
        yield pairs[position:opening], closed.group(1).replace('\\"', '"')
        position = closed.end()
