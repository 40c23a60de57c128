"""The import layering of app/, read from the source with ``ast`` (nothing here imports app).

Every ``import`` counts, at module level or inside a function or an ``if TYPE_CHECKING:``
block. A rule on "what a module may reach" follows the imports of app's own modules
transitively: the store importing a helper that imports a platform adapter breaks the rule as
surely as importing the adapter itself.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"

# The web framework: FastAPI and the Starlette it is built on.
WEB_FRAMEWORK = ("fastapi", "starlette")
# Clients of the outside world: HTTP, Redis and the web framework.
IO_CLIENTS = ("httpx", "redis", *WEB_FRAMEWORK)
# Modules outside app/api/ that import the web framework, each for a reason: main.py builds the
# app, openapi.py post-processes FastAPI's document, server.py serves a FastAPI app with uvicorn.
WEB_FRAMEWORK_OUTSIDE_API = {"app.main", "app.openapi", "app.server"}
# Plain values and pure functions: no client of the outside world, even through app's modules.
PURE_MODULES = ("app.domain", "app.notes", "app.models", "app.security")
DOMAIN_NAMES = {"LinkEvent", "WebhookEvent", "Note", "NoteKind"}


# --- the import graph ------------------------------------------------------------------------


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> frozenset[str]:
    """The modules a source imports, dotted. ``from a import b`` yields ``a`` and ``a.b``
    (``b`` may be a submodule: ``from app import openapi``); relative imports are resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(found)


@cache
def app_modules() -> dict[str, frozenset[str]]:
    """Every module under app/ and what it imports."""
    graph: dict[str, frozenset[str]] = {}
    for path in sorted(APP.rglob("*.py")):
        name = module_name(path)
        graph[name] = imports_of(
            path.read_text(encoding="utf-8"), name, is_package=path.name == "__init__.py"
        )
    return graph


def within(name: str, prefixes: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def reached(start: str, forbidden: Iterable[str]) -> Iterator[list[str]]:
    """The import chains from ``start`` to a forbidden module, following app's own modules."""
    graph = app_modules()
    forbidden = tuple(forbidden)
    seen = {start}
    queue: deque[list[str]] = deque([[start]])
    while queue:
        chain = queue.popleft()
        for imported in sorted(graph[chain[-1]]):
            if within(imported, forbidden):
                yield [*chain, imported]
            elif imported in graph and imported not in seen:
                seen.add(imported)
                queue.append([*chain, imported])


def violations(modules: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    forbidden = tuple(forbidden)
    return [" -> ".join(chain) for module in modules for chain in reached(module, forbidden)]


# --- the scanner itself ----------------------------------------------------------------------


def test_the_scanner_sees_every_kind_of_import() -> None:
    source = (
        "import redis.asyncio as redis\n"
        "from app import metrics\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from app.platforms.base import Platform\n"
        "def later() -> None:\n"
        "    import httpx\n"
        "    from . import codec\n"
        "    from ..api.deps import Services\n"
    )
    found = imports_of(source, "app.store.redis_store")
    assert {
        "redis.asyncio",
        "app",
        "app.metrics",
        "app.platforms.base",
        "httpx",
        "app.store",
        "app.store.codec",
        "app.api.deps",
    } <= found
    assert imports_of("from . import keys\n", "app.store", is_package=True) == {
        "app.store",
        "app.store.keys",
    }


def test_the_graph_covers_app() -> None:
    graph = app_modules()
    assert {"app", "app.main", "app.domain", "app.store.redis_store", "app.api.webhooks"} <= set(
        graph
    )
    assert "app.domain" in graph["app.store.redis_store"]
    assert "app.platforms.base" in graph["app.delivery.worker"]


# --- the rules -------------------------------------------------------------------------------


def test_the_store_reaches_no_adapter_api_or_worker() -> None:
    store = [name for name in app_modules() if within(name, ["app.store"])]
    assert "app.store.redis_store" in store
    assert violations(store, ["app.platforms", "app.api", "app.delivery"]) == []


@pytest.mark.parametrize("module", PURE_MODULES)
def test_a_pure_module_reaches_no_io_client(module: str) -> None:
    assert violations([module], IO_CLIENTS) == []


def test_the_domain_imports_only_the_standard_library() -> None:
    imported = app_modules()["app.domain"]
    assert {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names} == set()


def test_adapters_reach_neither_the_web_framework_nor_the_api() -> None:
    platforms = [name for name in app_modules() if within(name, ["app.platforms"])]
    assert "app.platforms.base" in platforms
    assert violations(platforms, [*WEB_FRAMEWORK, "app.api"]) == []


def test_only_the_api_imports_the_web_framework() -> None:
    importers = {
        name
        for name, imported in app_modules().items()
        if any(within(module, WEB_FRAMEWORK) for module in imported)
    }
    assert any(within(name, ["app.api"]) for name in importers)
    # Equal, not a subset: an exception that no longer holds leaves the list too.
    assert {name for name in importers if not within(name, ["app.api"])} == (
        WEB_FRAMEWORK_OUTSIDE_API
    )


def domain_names_used(path: Path) -> Iterator[tuple[str, str]]:
    """(``defined``, name) for a domain name defined in the file, and (``from <module>``, name)
    for one imported from a module of app other than app.domain."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            names = {node.name}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {target.id for target in targets if isinstance(target, ast.Name)}
        else:
            names = set()
        yield from (("defined", name) for name in sorted(names & DOMAIN_NAMES))
        if (
            isinstance(node, ast.ImportFrom)
            and within(node.module or "", ["app"])
            and node.module != "app.domain"
        ):
            yield from (
                (f"from {node.module}", alias.name)
                for alias in node.names
                if alias.name in DOMAIN_NAMES
            )


def test_domain_types_come_from_app_domain_only() -> None:
    """One place per name: defined in app/domain.py, imported from app.domain everywhere."""
    found = [
        f"{path.relative_to(ROOT).as_posix()}: {name} {how}"
        for folder in ("app", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for how, name in domain_names_used(path)
    ]
    assert sorted(found) == sorted(f"app/domain.py: {name} defined" for name in DOMAIN_NAMES)
