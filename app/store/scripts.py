"""The Lua scripts, each with the shared prelude, registered by SHA.

Each script's ``KEYS``/``ARGV`` layout is declared once, in :data:`LAYOUTS`. The loader turns a
layout into a Lua header (``local K = {state = KEYS[1], ...}``, ``local A = {now_ms = ARGV[1],
...}`` and, for a variable-length tail, ``local REST = <its first ARGV index>``) placed between
``_common.lua`` and the script body, and :meth:`ScriptLayout.call` builds every call from named
values. The bodies read ``K.<name>`` and ``A.<name>`` (and a tail as ``ARGV[i]`` for ``i`` from
``REST``), never a numbered position, so the two sides cannot disagree on an offset.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, NamedTuple, get_args

ScriptName = Literal[
    "ingest",
    "link",
    "unpend",
    "claim_session",
    "ack",
    "fail",
    "summary",
    "requeue",
    "session",
    "proactive",
    "limit",
    "defer",
]
SCRIPT_NAMES: tuple[ScriptName, ...] = get_args(ScriptName)

_LUA_KEYWORDS = frozenset(
    {
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
        "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    }
)  # fmt: skip
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


class ScriptCall(NamedTuple):
    """One script invocation, as :meth:`ScriptLayout.call` builds it."""

    name: ScriptName
    keys: list[str]
    args: list[Any]


def _check_names(script: ScriptName, kind: str, names: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for name in names:
        if not _IDENTIFIER.fullmatch(name) or name in _LUA_KEYWORDS:
            raise ValueError(f"{script}: {kind} name {name!r} is not a plain Lua identifier")
        if name in seen:
            raise ValueError(f"{script}: {kind} name {name!r} is declared twice")
        seen.add(name)


def _ordered(
    script: ScriptName, kind: str, declared: tuple[str, ...], given: Mapping[str, Any]
) -> list[Any]:
    """The given values in declared order; a missing or unknown name is an error."""
    missing = [name for name in declared if name not in given]
    if missing:
        raise ValueError(f"{script}: missing {kind} {', '.join(map(repr, missing))}")
    unknown = [name for name in given if name not in declared]
    if unknown:
        raise ValueError(f"{script}: unknown {kind} {', '.join(map(repr, unknown))}")
    return [given[name] for name in declared]


@dataclass(frozen=True, slots=True)
class ScriptLayout:
    """A script's contract: its ``KEYS`` and ``ARGV`` names in order, and ``rest``, the name
    of a variable-length ``ARGV`` tail (read in Lua from index ``REST`` to ``#ARGV``)."""

    name: ScriptName
    keys: tuple[str, ...]
    args: tuple[str, ...]
    rest: str | None = None

    def __post_init__(self) -> None:
        _check_names(self.name, "key", self.keys)
        _check_names(self.name, "arg", self.args)

    @property
    def rest_index(self) -> int | None:
        """The 1-based ``ARGV`` index where the tail starts (``REST`` in Lua)."""
        return None if self.rest is None else len(self.args) + 1

    def header(self) -> str:
        """The Lua lines that name this layout's ``KEYS`` and ``ARGV`` for the script body."""
        fields = ", ".join(f"{name} = KEYS[{i}]" for i, name in enumerate(self.keys, 1))
        values = ", ".join(f"{name} = ARGV[{i}]" for i, name in enumerate(self.args, 1))
        lines = [
            f"-- Generated from LAYOUTS[{self.name!r}] in app/store/scripts.py.",
            f"local K = {{{fields}}}",
            f"local A = {{{values}}}",
        ]
        if self.rest_index is not None:
            lines.append(f"local REST = {self.rest_index}  -- {self.rest}: ARGV[REST..#ARGV]")
        return "\n".join(lines) + "\n"

    def call(
        self,
        *,
        keys: Mapping[str, str],
        args: Mapping[str, Any],
        rest: Sequence[Any] | None = None,
    ) -> ScriptCall:
        """Order named keys and args as declared. A missing or unknown name, a tail given to a
        layout without one, or a declared tail left out raises :class:`ValueError`."""
        key_list = _ordered(self.name, "key", self.keys, keys)
        arg_list = _ordered(self.name, "arg", self.args, args)
        if self.rest is None:
            if rest is not None:
                raise ValueError(f"{self.name}: takes no variable-length tail")
        elif rest is None:
            raise ValueError(f"{self.name}: missing tail {self.rest!r}")
        else:
            arg_list.extend(rest)
        return ScriptCall(self.name, key_list, arg_list)


# Every script's layout, in one place: the loader generates each Lua header from it and
# RedisStore builds each call with it, so both sides read the same declaration.
LAYOUTS: Mapping[ScriptName, ScriptLayout] = {
    layout.name: layout
    for layout in (
        ScriptLayout(
            "ingest",
            keys=("state", "pre", "out", "seen", "dead", "due"),
            args=(
                "now_ms", "member", "user_id", "email", "conversation_id", "window_s", "cap",
                "debounce_ms", "max_wait_ms", "session_ttl_s", "buffer_ttl_s", "replay_field",
            ),
            rest="actions",  # (digest, score, payload) per action
        ),
        ScriptLayout(
            "link",
            keys=("state", "pre", "out", "seen", "dead", "due"),
            args=(
                "now_ms", "member", "conversation_id", "event", "debounce_ms", "max_wait_ms",
                "session_ttl_s", "user_message", "replay_field",
            ),
        ),
        ScriptLayout("unpend", keys=("pending",), args=("conversation_id",)),
        ScriptLayout(
            "claim_session",
            keys=("state", "pre", "out", "dead", "due"),
            args=("now_ms", "member", "token", "lease_ms", "max_note_actions"),
        ),
        ScriptLayout(
            "ack",
            keys=("state", "pre", "out", "notes", "dead", "due"),
            args=(
                "now_ms", "member", "token", "kind", "note_id", "debounce_ms", "max_wait_ms",
                "session_ttl_s", "notes_kept", "summary", "conversation_id",
            ),
            rest="members",  # the note's action members
        ),
        ScriptLayout(
            "fail",
            keys=("state", "pre", "out", "dead", "due"),
            args=(
                "now_ms", "member", "token", "kind", "mode", "retry_at_ms", "error",
                "debounce_ms", "max_wait_ms", "session_ttl_s", "buffer_ttl_s", "letter_id",
                "dead_letter_entry",
            ),
            rest="members",  # the note's action members
        ),
        ScriptLayout(
            "summary",
            keys=("state", "pre", "out", "seen", "dead", "due"),
            args=(
                "now_ms", "member", "summary", "debounce_ms", "max_wait_ms", "session_ttl_s",
                "replay_field",
            ),
        ),
        ScriptLayout(
            "requeue",
            keys=("state", "pre", "out", "seen", "dead", "due"),
            args=(
                "now_ms", "member", "summary", "debounce_ms", "max_wait_ms", "session_ttl_s",
                "buffer_ttl_s", "replay_field",
            ),
            rest="actions",  # (score, payload) per action
        ),
        ScriptLayout(
            "session",
            keys=("state", "pre", "out"),
            args=("now_ms", "interaction_timeout_s", "cooldown_period_s"),
        ),
        ScriptLayout(
            "proactive",
            keys=("state", "seen"),
            args=(
                "now_ms", "interaction_timeout_s", "cooldown_period_s", "trigger_id",
                "session_ttl_s", "replay_field",
            ),
        ),
        ScriptLayout("limit", keys=("limiter",), args=("now_ms", "interval_ms", "burst", "take")),
        ScriptLayout("defer", keys=("state", "due"), args=("now_ms", "member", "until_ms")),
    )
}  # fmt: skip
assert tuple(LAYOUTS) == SCRIPT_NAMES, "one layout per script, in SCRIPT_NAMES order"


@dataclass(frozen=True, slots=True)
class Script:
    name: ScriptName
    source: str
    sha: str


def _script(name: ScriptName, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def _lua(filename: str) -> str:
    return (resources.files("app.store") / "lua" / filename).read_text(encoding="utf-8")


def script_body(name: ScriptName) -> str:
    """A script's own source (``lua/<name>.lua``), without the prelude or the header."""
    return _lua(f"{name}.lua")


def load_scripts(*, shebang: bool = True) -> dict[ScriptName, Script]:
    """Every script with the prelude and its generated header. ``shebang`` starts each with
    ``#!lua`` (Redis 7.0 and later): a cluster node then refuses any key the script did not
    declare in ``KEYS``, every time, instead of only when the key happens to live on another
    node. The embedded store's Lua does not understand the line, so it runs without it."""
    prelude = _lua("_common.lua")
    first = "#!lua\n" if shebang else ""
    return {
        name: _script(name, f"{first}{prelude}\n{LAYOUTS[name].header()}{script_body(name)}")
        for name in SCRIPT_NAMES
    }
