"""The note body format (docs/delivery.md), byte for byte. Pure functions."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

# Any line break inside a description would let untrusted text fake extra note lines.
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x0b\x0c\x85]")


@dataclass(frozen=True, slots=True)
class NoteLine:
    """What the formatter needs of one action."""

    timestamp: float
    description: str


def replay_link(project_url: str, session_id: str) -> str:
    """The session's recording in PostHog: ``<project_url>/replay/<session_id>``."""
    return f"{project_url.rstrip('/')}/replay/{session_id}"


def format_header(
    session_id: str | None, timestamp: float, *, replay_url: str | None = None
) -> str:
    """``session_id`` and ``timestamp`` lines, a ``replay`` line when ``replay_url`` is given,
    then a blank line."""
    # floor first: fromtimestamp rounds microseconds, so x.9999996 would show the next second.
    when = datetime.fromtimestamp(math.floor(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    replay = f"replay: {replay_url}\n" if replay_url else ""
    return f"session_id: {session_id or 'unknown'}\ntimestamp: {when}\n{replay}\n"


def _bin(timestamp: float, bin_seconds: float) -> int:
    return math.floor(timestamp / bin_seconds)


def format_note(
    session_id: str | None,
    actions: Sequence[NoteLine],
    *,
    bin_seconds: float,
    now: float,
    replay_url: str | None = None,
) -> str:
    """Header plus ``[n] description`` lines sorted by time (ties keep arrival order).

    With ``bin_seconds > 0`` a blank line separates actions in different epoch-aligned bins.
    ``now`` is used for the header only when there are no actions. ``replay_url`` adds the
    header's ``replay`` line.
    """
    ordered = sorted(actions, key=lambda a: a.timestamp)
    when = ordered[0].timestamp if ordered else now
    header = format_header(session_id, when, replay_url=replay_url)
    lines: list[str] = []
    previous_bin: int | None = None
    for n, action in enumerate(ordered, start=1):
        if bin_seconds > 0:
            current_bin = _bin(action.timestamp, bin_seconds)
            if previous_bin is not None and current_bin != previous_bin:
                lines.append("")
            previous_bin = current_bin
        lines.append(f"[{n}] {_LINE_BREAKS.sub(' ', action.description)}")
    return header + "\n".join(lines)


def format_summary(session_id: str | None, summary: str, *, now: float) -> str:
    return format_header(session_id, now) + summary


def to_html(body: str) -> str:
    """Escape untrusted text for platforms that render HTML; newlines become ``<br>``."""
    return html.escape(body, quote=False).replace("\n", "<br>")
