"""The products file: one TOML table per product (tenant), validated strictly."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from app import plugins
from app.domain import NoteBudget
from app.security import decode_whsec

# \Z, not $: "$" would also accept a trailing newline.
PRODUCT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")

# Keys whose values are masked wherever a product is shown.
SECRET_KEYS = frozenset(
    {
        "ingest_token",
        "ingest_secret",
        "access_token",
        "client_secret",
        "api_token",
        "oauth_token",
        "webhook_secret",
        "signing_secret",
        "ingest_webhook_secret",
        "header_secret",
        "webhook_token",
    }
)
MIN_SECRET_CHARS = 16
# The error type of a product whose platform section is missing (or unusable).
MISSING_SECTION = "missing_platform_section"


class ProductsFileError(Exception):
    """The products file cannot be used. ``problems`` lists each one, naming the product and
    the key; the message shows them all."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else problems
        count = len(self.problems)
        if count == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{count} problems:\n  " + "\n  ".join(self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be empty")
    return value


def secret_value(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("must not be empty (an empty secret never means 'accept all')")
    if len(value) < MIN_SECRET_CHARS:
        raise ValueError(f"is too short: a secret needs at least {MIN_SECRET_CHARS} characters")
    return value


def http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("https://", "http://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


def whsec_value(value: str) -> str:
    decode_whsec(value)
    return value


def optional_whsec(value: str | None) -> str | None:
    return None if value is None else whsec_value(value)


class PlatformSettings(_Strict):
    """A platform adapter's section of a product (``[products.<id>.<platform>]``): each
    adapter declares its own subclass as its ``config_model``."""

    @property
    def inbound_secret(self) -> str | None:
        """The secret that verifies the platform's webhooks (``webhook_secret`` by default)."""
        value = getattr(self, "webhook_secret", None)
        return value if isinstance(value, str) else None


_Settings = TypeVar("_Settings", bound=PlatformSettings)


# The PostHog events kept by default: what a user did in the UI, not custom or internal events.
DEFAULT_POSTHOG_EVENTS = (
    "$autocapture",
    "$pageview",
    "$pageleave",
    "$rageclick",
    "$dead_click",
    "$screen",
)
ALL_EVENTS = "*"
# An HTTP header name (RFC 9110 token characters).
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")


def _header_name(value: str | None) -> str | None:
    if value is not None and not _HEADER_NAME.match(value):
        raise ValueError("must be an HTTP header name (1-64 letters, digits or -_.)")
    return value


def _event_names(value: list[str]) -> list[str]:
    if any(not name.strip() for name in value):
        raise ValueError("an event name must not be empty")
    return value


class PosthogConfig(_Strict):
    """PostHog's HTTP Webhook destination posting events to ``/posthog/<id>``."""

    # Standard Webhooks key (whsec_...): the destination's signing secret.
    webhook_secret: str | None = None
    # Or a static header the destination sends, for PostHog versions that do not sign.
    header_name: str | None = None
    header_secret: str | None = None
    events: list[str] = Field(default_factory=lambda: list(DEFAULT_POSTHOG_EVENTS), min_length=1)
    replay_links: bool = False
    project_url: str | None = None

    _whsec = field_validator("webhook_secret")(optional_whsec)
    _secrets = field_validator("header_secret")(secret_value)
    _names = field_validator("header_name")(_header_name)
    _events = field_validator("events")(_event_names)
    _urls = field_validator("project_url")(http_url)

    @model_validator(mode="after")
    def _check_verification(self) -> Self:
        if (self.header_name is None) != (self.header_secret is None):
            raise ValueError("set header_name and header_secret together, or neither")
        if self.webhook_secret is None and self.header_name is None:
            raise ValueError("set webhook_secret, or header_name and header_secret")
        return self

    @property
    def webhook_key(self) -> bytes | None:
        """The key bytes of ``webhook_secret`` (validated at load)."""
        return None if self.webhook_secret is None else decode_whsec(self.webhook_secret)

    def keeps(self, event_name: str | None) -> bool:
        """Whether an event of this name becomes an action (``["*"]`` keeps every event)."""
        return ALL_EVENTS in self.events or (event_name is not None and event_name in self.events)


class ProductConfig(_Strict):
    """One tenant: its credentials, delivery timings and platform."""

    id: str
    # A registered platform adapter's name (app.plugins); its section becomes ``settings``.
    platform: str
    ingest_token: str | None = None
    ingest_secret: str | None = None
    # Standard Webhooks on ingest (whsec_...): signed, timestamped, replay-proof by message id.
    ingest_webhook_secret: str | None = None
    allow_unauthenticated: bool = False
    # TOML has inf and nan literals; an infinite timer would overflow due-time arithmetic.
    pre_link_window_s: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    post_link_debounce_s: float = Field(default=0.15, ge=0, allow_inf_nan=False)
    post_link_max_wait_s: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    bin_seconds: float = Field(default=3, ge=0, allow_inf_nan=False)
    max_pending_actions: int = Field(default=1000, ge=1)
    session_attribute: str = "posthog_session_id"
    interaction_timeout_s: float = Field(default=20.0, ge=0, allow_inf_nan=False)
    cooldown_period_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    # Outbound notes per minute across every process (None: the platform's default; 0: no
    # limit), and concurrent outbound calls per process.
    max_notes_per_minute: int | None = Field(default=None, ge=0)
    max_notes_in_flight: int = Field(default=16, ge=1)
    # The platform's section, validated by its adapter's config_model.
    settings: SerializeAsAny[PlatformSettings] | None = None
    posthog: PosthogConfig | None = None

    _secrets = field_validator("ingest_token", "ingest_secret")(secret_value)
    _ingest_whsec = field_validator("ingest_webhook_secret")(optional_whsec)

    @field_validator("platform")
    @classmethod
    def _registered(cls, platform: str) -> str:
        _adapter(platform)
        return platform

    @model_validator(mode="before")
    @classmethod
    def _platform_section(cls, data: Any) -> Any:
        """Move the platform's section (``[products.<id>.<platform>]``) into ``settings``,
        validated by the adapter's own model."""
        if not isinstance(data, dict) or not isinstance(data.get("platform"), str):
            return data
        platform = data["platform"]
        if platform not in plugins.platform_names():
            return data  # the platform field's own check names it
        adapter = _adapter(platform)
        data = dict(data)
        for name in plugins.platform_names():
            if name != platform and name in data:
                raise ValueError(f"has a [{name}] section but platform is {platform!r}")
        section = data.pop(platform, None)
        if section is not None and not isinstance(section, PlatformSettings):
            try:
                section = adapter.config_model.model_validate(section)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, (platform, *e['loc'])))}: {e['msg']}" for e in exc.errors()
                )
                raise ValueError(problems) from None
        if section is not None:
            data["settings"] = section
        return data

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.post_link_max_wait_s < self.post_link_debounce_s:
            raise ValueError("post_link_max_wait_s must be >= post_link_debounce_s")
        if self.allow_unauthenticated:
            if not _adapter(self.platform).allows_unauthenticated:
                raise ValueError(
                    f"allow_unauthenticated is not allowed with platform = {self.platform!r}"
                )
            return self
        if not (self.ingest_token or self.ingest_secret or self.ingest_webhook_secret):
            raise ValueError("needs ingest_token, ingest_secret or ingest_webhook_secret")
        if self.webhook_secret is None:
            raise PydanticCustomError(
                MISSING_SECTION,
                "needs its platform's webhook secret ([{platform}] section)",
                {"platform": self.platform},
            )
        return self

    @property
    def note_budget(self) -> NoteBudget | None:
        """The shared outbound budget: ``max_notes_per_minute``, else the platform's
        default; None when unlimited."""
        per_minute = self.max_notes_per_minute
        if per_minute is None:
            per_minute = int(_adapter(self.platform).default_notes_per_minute)
        return NoteBudget.of(per_minute) if per_minute > 0 else None

    @property
    def ingest_webhook_key(self) -> bytes | None:
        """The key bytes of ``ingest_webhook_secret`` (validated at load)."""
        secret = self.ingest_webhook_secret
        return None if secret is None else decode_whsec(secret)

    @property
    def webhook_secret(self) -> str | None:
        """The secret that verifies this product's inbound platform webhooks."""
        return self.settings.inbound_secret if self.settings is not None else None

    def settings_of(self, model: type[_Settings]) -> _Settings:
        """The platform section as the adapter's ``model``; raises ValueError without one."""
        if not isinstance(self.settings, model):
            raise ValueError(f"product {self.id!r} has no [{self.platform}] section")
        return self.settings


def _adapter(platform: str) -> Any:
    """The adapter class registered as ``platform``; a ValueError for the products file."""
    try:
        return plugins.platform_class(platform)
    except plugins.PluginError as exc:
        raise ValueError(str(exc)) from None


Products = Mapping[str, ProductConfig]


def _section_model(name: str) -> type[BaseModel] | None:
    """The model of a product's nested table ``name``: ``posthog`` or a platform's."""
    if name == "posthog":
        return PosthogConfig
    if name in plugins.platform_names():
        model: type[BaseModel] = _adapter(name).config_model
        return model
    return None


_UNSET_STAND_IN = "unset-variable-0123456789abcdef"


@dataclass
class _Interpolation:
    """``${NAME}`` references resolved for one product, and the keys whose variable is unset."""

    env: Mapping[str, str]
    missing: dict[tuple[str, ...], str] = field(default_factory=dict)

    def resolve(self, value: Any, loc: tuple[str, ...] = ()) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve(v, (*loc, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, (*loc, str(i))) for i, v in enumerate(value)]
        if isinstance(value, str) and (match := _ENV_REFERENCE.match(value)):
            name = match.group(1)
            if name in self.env:
                return self.env[name]
            self.missing[loc] = name
            # A stand-in that passes the common checks (a secret's length), so the rest of the
            # product is still validated without knock-on errors ("needs ingest_token").
            return _UNSET_STAND_IN
        return value


def _key(product_id: str, loc: Sequence[Any]) -> str:
    return ".".join(["products", product_id, *(str(part) for part in loc)])


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = ProductConfig
    if len(loc) == 2 and (section := _section_model(str(loc[0]))) is not None:
        model = section
    elif len(loc) != 1:
        return ""
    key = str(loc[-1])
    known = [name for name in model.model_fields if name != "id"]
    # A typo is close by edit distance; a shortened name ("window") is part of the real one.
    close = difflib.get_close_matches(key, known, n=1) or [k for k in known if key in k][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _problem(product_id: str, error: ErrorDetails) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{_key(product_id, loc)}: unknown key{_did_you_mean(loc)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{_key(product_id, loc)}: {message}"


def _product_problems(
    product_id: str, table: Any, env: Mapping[str, str]
) -> tuple[ProductConfig | None, list[str]]:
    if not PRODUCT_ID_PATTERN.match(product_id):
        return None, [f"product id {product_id!r} must be 1-64 chars of [A-Za-z0-9_-]"]
    if not isinstance(table, dict):
        return None, [f"products.{product_id}: must be a table"]
    problems = []
    if "id" in table:
        # The id comes from the table name; a key would be silently overwritten.
        problems.append(f"products.{product_id}.id: unknown key (the id is the table name)")
    interpolation = _Interpolation(env)
    values = interpolation.resolve({k: v for k, v in table.items() if k != "id"})
    problems += [
        f"{_key(product_id, loc)}: refers to environment variable {name}, which is not set"
        for loc, name in interpolation.missing.items()
    ]
    values, section_problems = _validate_platform_section(product_id, values)
    try:
        product = ProductConfig.model_validate({**values, "id": product_id})
    except ValidationError as exc:
        # A key whose variable is unset was reported above; its knock-on errors are noise.
        errors = [
            e
            for e in exc.errors()
            if tuple(map(str, e["loc"])) not in interpolation.missing
            and not (section_problems and e["type"] == MISSING_SECTION)
        ]
        return None, problems + [_problem(product_id, e) for e in errors] + section_problems
    problems += section_problems
    return (None if problems else product), problems


def _validate_platform_section(
    product_id: str, values: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Validate the platform section with its adapter's model, reporting its problems key by
    key (with the products file's names). Valid, it is passed on as the model (validated
    once); invalid, it is left out, so the rest of the product is still checked without it."""
    platform = values.get("platform")
    section = values.get(platform) if isinstance(platform, str) else None
    if not isinstance(platform, str) or not isinstance(section, dict):
        return values, []
    try:
        model = plugins.platform_class(platform).config_model
    except plugins.PluginError:
        return values, []  # ProductConfig reports the unknown platform
    try:
        return {**values, platform: model.model_validate(section)}, []
    except ValidationError as exc:
        problems = [_problem(product_id, {**e, "loc": (platform, *e["loc"])}) for e in exc.errors()]
        return {k: v for k, v in values.items() if k != platform}, problems


def parse_products(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, ProductConfig]:
    """Validate a parsed products document. Raises ProductsFileError listing every problem of
    every product at once, each naming the product and the key."""
    problems = [
        f"{key}: unknown top-level key (the file holds [products.<id>] tables)"
        for key in sorted(set(raw) - {"products"})
    ]
    tables = raw.get("products")
    if not isinstance(tables, dict) or not tables:
        raise ProductsFileError([*problems, "the file defines no [products.<id>] tables"])
    products: dict[str, ProductConfig] = {}
    for product_id, table in tables.items():
        product, found = _product_problems(product_id, table, env)
        problems += found
        if product is not None:
            products[product_id] = product
    if problems:
        raise ProductsFileError(problems)
    return products


def load_products(path: Path, env: Mapping[str, str] | None = None) -> dict[str, ProductConfig]:
    """Read, interpolate and validate the products file at ``path``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProductsFileError(f"products file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProductsFileError(f"products file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProductsFileError(f"products file {path} is not valid TOML: {exc}") from exc
    return parse_products(raw, os.environ if env is None else env)


def mask(value: str) -> str:
    """Show just enough of a secret to recognise it."""
    return "****" if len(value) < 16 else f"****{value[-4:]}"


def masked_view(product: ProductConfig) -> dict[str, Any]:
    """The product as a plain dict with every secret masked."""

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if key in SECRET_KEYS and isinstance(node, str):
            return mask(node)
        return node

    view = product.model_dump(exclude_none=True)
    # The platform section under its name, as in the products file.
    if "settings" in view:
        view[product.platform] = view.pop("settings")
    return dict(walk(view))
