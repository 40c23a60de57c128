"""Platform adapters as plug-ins: every adapter, built in or installed with pip, registers
under the ``chatbot_bridge.platforms`` entry-point group.

An entry point's name is the products file's ``platform`` value and its object is the adapter
class (a ``app.platforms.base.Platform`` subclass with a ``config_model``). The built-in
adapters are registered the same way, in this project's ``pyproject.toml``. Loading is lazy:
nothing is imported until a products file or the service needs an adapter, so a broken plug-in
is reported by name instead of breaking every import.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

ENTRY_POINT_GROUP = "chatbot_bridge.platforms"


class PluginError(LookupError):
    """No adapter is registered under a name, or a registered one cannot be used."""


@cache
def _registered() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        # Two distributions claiming one name: the first found wins, as importlib orders them.
        found.setdefault(point.name, point)
    return found


def platform_names() -> list[str]:
    """Every registered platform name, sorted."""
    return sorted(_registered())


@cache
def platform_class(name: str) -> Any:
    """The adapter class registered as ``name``; raises PluginError."""
    point = _registered().get(name)
    if point is None:
        known = ", ".join(platform_names()) or "none"
        raise PluginError(f"no platform adapter is registered as {name!r} (known: {known})")
    try:
        adapter = point.load()
    except Exception as exc:  # a third-party package can fail in any way on import
        raise PluginError(
            f"the platform adapter {name!r} ({point.value}) cannot be loaded: {exc!r}"
        ) from exc
    if getattr(adapter, "config_model", None) is None:
        raise PluginError(f"the platform adapter {name!r} ({point.value}) has no config_model")
    return adapter


def refresh() -> None:
    """Forget what was discovered (after installing a package into a running process)."""
    _registered.cache_clear()
    platform_class.cache_clear()
