"""The Lua <-> Python contract: each script's KEYS/ARGV layout, declared once in LAYOUTS."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from app.store.scripts import (
    LAYOUTS,
    SCRIPT_NAMES,
    ScriptLayout,
    ScriptName,
    load_scripts,
    script_body,
)

SCRIPTS = load_scripts()
_COMMENT = re.compile(r"--.*$", re.MULTILINE)  # no script has '--' inside a string literal


def code(name: ScriptName) -> str:
    """A script body without its comments (a name in a comment is not a use)."""
    return _COMMENT.sub("", script_body(name))


def _prelude_key_names() -> set[str]:
    """The key names the prelude's helpers read from the ``K`` table a body hands them."""
    source = (resources.files("app.store") / "lua" / "_common.lua").read_text(encoding="utf-8")
    return set(re.findall(r"(?<![\w.])k\.([A-Za-z_]\w*)", _COMMENT.sub("", source)))


def used(prefix: str, name: ScriptName) -> set[str]:
    body = code(name)
    names = set(re.findall(rf"(?<![\w.]){prefix}\.([A-Za-z_]\w*)", body))
    if prefix == "K" and re.search(r"\(K\s*[,)]", body):  # K handed to schedule() or next_due()
        names |= _prelude_key_names()
    return names


def probe(layout: ScriptLayout) -> str:
    """The layout's header, then a body returning every name's value in declared order."""
    values = [f"K.{k}" for k in layout.keys] + [f"A.{a}" for a in layout.args]
    if layout.rest is not None:
        values += ["REST", "ARGV[REST]", "ARGV[#ARGV]"]
    return layout.header() + f"return {{{', '.join(values)}}}\n"


def sample_call(layout: ScriptLayout) -> tuple[list[str], list[Any], list[Any]]:
    """Call the layout with distinct values; returns what it sent and what the probe returns."""
    call = layout.call(
        keys={k: f"key:{k}" for k in layout.keys},
        args={a: f"arg:{a}" for a in layout.args},
        rest=None if layout.rest is None else ["first", "middle", "last"],
    )
    expected: list[Any] = [f"key:{k}".encode() for k in layout.keys]
    expected += [f"arg:{a}".encode() for a in layout.args]
    if layout.rest is not None:
        expected += [len(layout.args) + 1, b"first", b"last"]
    return call.keys, call.args, expected


def test_every_script_has_exactly_one_layout() -> None:
    assert tuple(LAYOUTS) == SCRIPT_NAMES
    assert all(LAYOUTS[name].name == name for name in SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
async def test_the_full_script_compiles_on_redis(
    name: ScriptName, redis_client: aioredis.Redis
) -> None:
    script = SCRIPTS[name]
    assert LAYOUTS[name].header() in script.source
    assert await redis_client.script_load(script.source) == script.sha


@pytest.mark.parametrize("name", SCRIPT_NAMES)
async def test_the_header_names_each_position(
    name: ScriptName, redis_client: aioredis.Redis
) -> None:
    script_keys, args, expected = sample_call(LAYOUTS[name])
    assert await redis_client.eval(probe(LAYOUTS[name]), len(script_keys), *script_keys, *args) == (
        expected
    )


async def test_the_embedded_store_runs_the_generated_headers() -> None:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    for name in SCRIPT_NAMES:
        assert await client.script_load(SCRIPTS[name].source) == SCRIPTS[name].sha
        script_keys, args, expected = sample_call(LAYOUTS[name])
        result = await client.eval(probe(LAYOUTS[name]), len(script_keys), *script_keys, *args)
        assert result == expected, name
    await client.aclose()


@pytest.mark.parametrize("name", ["_common", *SCRIPT_NAMES])
def test_no_script_body_reads_keys_or_argv_by_position(name: str) -> None:
    # Only the generated header indexes KEYS and ARGV by number; a body reads a variable-length
    # tail as ARGV[i] with i counted from REST.
    source = (resources.files("app.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    body = _COMMENT.sub("", source)
    assert "KEYS" not in body
    assert not re.search(r"ARGV\s*\[\s*\d", body)
    if name != "_common":
        assert "ARGV[" not in body or "REST" in body


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_body_uses_exactly_the_declared_names(name: ScriptName) -> None:
    layout, body = LAYOUTS[name], code(name)
    assert used("K", name) == set(layout.keys)
    assert used("A", name) == set(layout.args)
    assert (re.search(r"\bREST\b", body) is not None) == (layout.rest is not None)
    assert not re.search(r"(?<![\w.])[KA]\s*\[", body), "index K and A by name only"
    assert not re.search(r"\blocal\s+(K|A|REST)\b", body), "the header owns K, A and REST"


def test_a_call_orders_values_as_declared() -> None:
    call = LAYOUTS["fail"].call(
        keys={k: k.upper() for k in reversed(LAYOUTS["fail"].keys)},
        args={a: a for a in reversed(LAYOUTS["fail"].args)},
        rest=[b"m1", b"m2"],
    )
    assert call.name == "fail"
    assert call.keys == ["STATE", "PRE", "OUT", "DEAD", "DUE"]
    assert call.args == [*LAYOUTS["fail"].args, b"m1", b"m2"]


CLAIM = LAYOUTS["claim_session"]
CLAIM_KEYS = dict.fromkeys(CLAIM.keys, "k")


def _claim_args(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict.fromkeys(CLAIM.args, 1)
    args.update(changes)
    return {k: v for k, v in args.items() if v is not None}


def test_a_missing_key_is_named() -> None:
    with pytest.raises(ValueError, match="ingest: missing key 'seen'"):
        LAYOUTS["ingest"].call(
            keys={k: "" for k in LAYOUTS["ingest"].keys if k != "seen"},
            args=dict.fromkeys(LAYOUTS["ingest"].args, ""),
            rest=[],
        )


def test_an_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match="claim_session: unknown key 'due_key'"):
        CLAIM.call(keys={**CLAIM_KEYS, "due_key": "q"}, args=_claim_args())


def test_a_missing_arg_is_named() -> None:
    with pytest.raises(ValueError, match="claim_session: missing arg 'lease_ms'"):
        CLAIM.call(keys=CLAIM_KEYS, args=_claim_args(lease_ms=None))


def test_an_unknown_arg_is_named() -> None:
    with pytest.raises(ValueError, match="claim_session: unknown arg 'lease_s'"):
        CLAIM.call(keys=CLAIM_KEYS, args=_claim_args(lease_s=30))


def test_a_tail_must_match_the_declaration() -> None:
    with pytest.raises(ValueError, match="claim_session: takes no variable-length tail"):
        CLAIM.call(keys=CLAIM_KEYS, args=_claim_args(), rest=[])
    ack = LAYOUTS["ack"]
    ack_keys = dict.fromkeys(ack.keys, "k")
    with pytest.raises(ValueError, match="ack: missing tail 'members'"):
        ack.call(keys=ack_keys, args=dict.fromkeys(ack.args, ""))
    assert ack.call(keys=ack_keys, args=dict.fromkeys(ack.args, ""), rest=[]).args == [""] * (
        len(ack.args)
    )


@pytest.mark.parametrize(
    ("keys", "args", "message"),
    [
        (("state", "state"), (), "key name 'state' is declared twice"),
        (("state",), ("end",), "arg name 'end' is not a plain Lua identifier"),
        (("due-key",), (), "key name 'due-key' is not a plain Lua identifier"),
    ],
)
def test_a_layout_rejects_names_lua_cannot_hold(
    keys: tuple[str, ...], args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ScriptLayout("claim_session", keys=keys, args=args)
