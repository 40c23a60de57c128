"""The documentation stays honest: its links resolve, it is self-contained, and every setting,
products-file key and metric the code defines is documented."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from app import metrics, plugins
from app.products import ProductConfig, parse_products
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
CONFIGURATION = DOCS / "configuration.md"
PRODUCT_TABLE = "[products.<id>]"
OPERATIONS = DOCS / "operations.md"

# Built from pieces so that this file does not match its own patterns.
_SPEC = "SP" + "EC"
FORBIDDEN = {
    "a path outside the repository": re.compile(re.escape(".." + "/shared")),
    "a reference to a specification file": re.compile(re.escape(_SPEC + ".md")),
    "a reference to a specification": re.compile(rf"\b{_SPEC}\b"),
    "a section reference nobody can look up": re.compile("\u00a7" + r"\s*\d"),
}
# BRIDGE_* names the test suite reads (tests/conftest.py); they are not service settings.
TEST_ONLY_VARIABLES = {
    "BRIDGE_TEST_REDIS_URL",
    "BRIDGE_TEST_REDIS_CLUSTER_URL",
    "BRIDGE_REQUIRE_REDIS",
}

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HREF = re.compile(r"<a\s[^>]*?href\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
_HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


# --- markdown helpers ------------------------------------------------------------------------


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = None
            continue
        if fence is None:
            yield number, line


def links(text: str) -> Iterator[tuple[int, str]]:
    """Every link target of a markdown text: ``[text](target)``, ``[ref]: target`` and
    ``<a href="target">``, outside code."""
    for number, line in prose_lines(text):
        line = _INLINE_CODE.sub("", line)
        definition = _REF_DEFINITION.match(line)
        if definition:
            yield number, definition.group(1)
            continue
        for pattern in (_MD_LINK, _HREF):
            for match in pattern.finditer(line):
                yield number, match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text without markup, lower case, punctuation other
    than '-' and '_' dropped, each space a '-'."""
    parts = re.split(r"(`+[^`]*`+)", heading)  # code spans keep their text literally
    text = "".join(
        part.strip("`")
        if part.startswith("`")
        else re.sub(r"<[^>]+>", "", re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part))
        for part in parts
    )
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a markdown file defines: its headings' slugs (GitHub numbers repeats
    ``-1``, ``-2``, …) and explicit ``<a name|id>`` anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def section(path: Path, heading_contains: str) -> str:
    """The text under the first heading that contains ``heading_contains``, up to the next
    heading of the same or a higher level."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    start, level = None, 0
    for number, line in prose_lines(text):
        heading = _HEADING.match(line)
        if heading is None:
            continue
        depth = len(heading.group(1))
        if start is None and heading_contains in heading.group(2):
            start, level = number, depth
        elif start is not None and depth <= level:
            return "\n".join(lines[start : number - 1])
    assert start is not None, f"{path.name} has no heading containing {heading_contains!r}"
    return "\n".join(lines[start:])


def documented(text: str, name: str) -> bool:
    """Whether ``name`` appears as code (in backticks, alone or inside a longer span)."""
    return re.search(rf"`[^`\n]*(?<![\w.]){re.escape(name)}(?![\w])[^`\n]*`", text) is not None


# --- (a) links -------------------------------------------------------------------------------


def _link_problem(doc: Path, target: str) -> str | None:
    if not target or _SCHEME.match(target) or target.startswith("//"):
        return None  # external (http:, https:, mailto:) links are not checked here
    path_part, _, fragment = target.partition("#")
    destination = (doc.parent / unquote(path_part)).resolve() if path_part else doc
    if not destination.is_relative_to(ROOT):
        return f"{target}: leaves the repository"
    if not destination.exists():
        return f"{target}: {destination.relative_to(ROOT)} does not exist"
    if fragment:
        if destination.is_dir() or destination.suffix.lower() != ".md":
            return f"{target}: an anchor into a file that is not markdown"
        if unquote(fragment) not in anchors(destination):
            return f"{target}: no heading #{fragment} in {destination.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    problems = [
        f"{doc.relative_to(ROOT)}:{number}: {problem}"
        for number, target in links(doc.read_text(encoding="utf-8"))
        if (problem := _link_problem(doc, target)) is not None
    ]
    assert problems == []


def test_the_link_checker_sees_what_it_must() -> None:
    text = "\n".join(
        [
            "# Top `code` heading!",
            "See [a](docs/api.md#errors) and <a href='x.md'>x</a>.",
            "`[not](a-link.md)` and [ref]: ref.md",
            "[def]: defined.md",
            "```",
            "[not](inside-a-fence.md)",
            "# not a heading",
            "```",
        ]
    )
    assert [target for _, target in links(text)] == ["docs/api.md#errors", "x.md", "defined.md"]
    assert (
        slug("`POST /actions/{product_id}`: action batches")
        == "post-actionsproduct_id-action-batches"
    )
    assert slug("3. Your bot calls the bridge") == "3-your-bot-calls-the-bridge"
    assert slug("`[products.<id>.http]`") == "productsidhttp"


def test_the_docs_index_lists_every_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for _, target in links(readme)}
    pages = {str(page.relative_to(ROOT)) for page in DOCS.rglob("*.md")}
    assert pages - linked == set()


# --- (b) self-contained ----------------------------------------------------------------------


def _repository_files() -> list[Path]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({ROOT / name for name in listed.split("\0") if name})


def test_nothing_in_the_repository_refers_outside_it() -> None:
    problems = []
    for path in _repository_files():
        if not path.is_file():
            continue  # deleted in the work tree
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), start=1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert problems == []


# --- (c) configuration -----------------------------------------------------------------------


def _section_models(model: type[BaseModel], table: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The products file's tables: ``[products.<id>]``, one per nested model, and one per
    registered platform (its adapter's config model, which the products file names after it)."""
    yield table, model
    for name, field in model.model_fields.items():
        for candidate in typing.get_args(field.annotation) or (field.annotation,):
            if (
                name != "settings"
                and isinstance(candidate, type)
                and issubclass(candidate, BaseModel)
            ):
                yield from _section_models(candidate, f"{table[:-1]}.{name}]")
    if model is ProductConfig:
        for platform in plugins.platform_names():
            config = plugins.platform_class(platform).config_model
            yield from _section_models(config, f"{table[:-1]}.{platform}]")


def _products_file_keys() -> list[tuple[str, str]]:
    keys = []
    for table, model in _section_models(ProductConfig, PRODUCT_TABLE):
        for name, field in model.model_fields.items():
            nested = typing.get_args(field.annotation) or (field.annotation,)
            is_table = any(isinstance(t, type) and issubclass(t, BaseModel) for t in nested)
            # The id is the table name, not a key; settings is the platform's table.
            if not (model is ProductConfig and name in ("id", "settings")) and not is_table:
                keys.append((table, name))
    return keys


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    variable = f"BRIDGE_{name.upper()}"
    text = CONFIGURATION.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith(f"| `{variable}` |")]
    assert rows, f"{variable} has no row in the table of docs/configuration.md"


def test_no_page_documents_a_setting_that_does_not_exist() -> None:
    known = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields} | TEST_ONLY_VARIABLES
    mentioned = set()
    for doc in DOC_FILES:
        mentioned |= set(re.findall(r"\bBRIDGE_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text("utf-8")))
    assert mentioned - known == set()


@pytest.mark.parametrize(
    ("table", "key"),
    [pytest.param(table, key, id=f"{table}.{key}") for table, key in _products_file_keys()],
)
def test_every_products_file_key_is_documented_in_its_section(table: str, key: str) -> None:
    heading = "Product keys" if table == PRODUCT_TABLE else f"`{table}`"
    rows = section(CONFIGURATION, heading).splitlines()
    assert any(line.startswith(f"| `{key}` |") for line in rows), (
        f"{key} of {table} has no row under its heading in docs/configuration.md"
    )


def test_every_platform_has_a_section_and_a_page() -> None:
    platforms = plugins.platform_names()
    assert platforms
    for platform in platforms:
        section(CONFIGURATION, f"`[products.<id>.{platform}]`")
        assert (DOCS / "platforms" / f"{platform}.md").is_file()


def test_the_complete_examples_load() -> None:
    examples = section(CONFIGURATION, "Complete examples")
    blocks = re.findall(r"```toml\n(.*?)```", examples, flags=re.DOTALL)
    whsec = "whsec_" + base64.b64encode(b"k" * 32).decode()
    platforms = set()
    for block in blocks:
        names = re.findall(r'"\$\{([A-Za-z_][A-Za-z0-9_]*)\}"', block)
        env = {
            name: whsec if name.endswith("WHSEC") else f"{name.lower()}-0123456789"
            for name in names
        }
        products = parse_products(tomllib.loads(block), env)
        platforms |= {product.platform for product in products.values()}
    assert platforms == set(plugins.platform_names())


# --- (d) metrics -----------------------------------------------------------------------------


def _registered_metrics() -> list[MetricWrapperBase]:
    return [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]


def _exposed_name(metric: MetricWrapperBase) -> str:
    # prometheus_client keeps a counter's name without its "_total" suffix.
    name: str = metric._name
    return f"{name}_total" if metric._type == "counter" else name


def test_metrics_are_found() -> None:
    assert len(_registered_metrics()) >= 10


@pytest.mark.parametrize("metric", _registered_metrics(), ids=_exposed_name)
def test_every_metric_is_documented_with_its_labels(metric: MetricWrapperBase) -> None:
    name = _exposed_name(metric)
    text = section(OPERATIONS, "Metrics")
    rows = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"{name} has no row in the metrics table of docs/operations.md"
    labels: tuple[str, ...] = metric._labelnames
    missing = [label for label in labels if not documented(rows[0], label)]
    assert missing == [], f"{name}: labels {missing} are not in its row"


def test_operations_names_no_metric_that_does_not_exist() -> None:
    known = {_exposed_name(metric) for metric in _registered_metrics()}
    text = OPERATIONS.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"\bbridge_[a-z_]*[a-z]\b", text))
    suffixes = ("_bucket", "_count", "_sum", "_created")
    unknown = {
        name
        for name in mentioned
        if name not in known and not any(name.removesuffix(s) in known for s in suffixes)
    }
    assert unknown == set()
