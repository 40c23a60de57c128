"""The Lua scripts, each with the shared prelude, registered by SHA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Literal, get_args

ScriptName = Literal[
    "ingest",
    "link",
    "resolve",
    "claim",
    "ack",
    "fail",
    "summary",
    "requeue",
    "session",
    "proactive",
]
SCRIPT_NAMES: tuple[ScriptName, ...] = get_args(ScriptName)


@dataclass(frozen=True, slots=True)
class Script:
    name: ScriptName
    source: str
    sha: str


def _script(name: ScriptName, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def load_scripts() -> dict[ScriptName, Script]:
    folder = resources.files("app.store") / "lua"
    prelude = (folder / "_common.lua").read_text(encoding="utf-8")
    return {
        name: _script(name, prelude + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8"))
        for name in SCRIPT_NAMES
    }
