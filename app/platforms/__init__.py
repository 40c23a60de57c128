"""Chat platform adapters, keyed by the products file's ``platform`` name."""

from __future__ import annotations

import httpx

from app.clock import Clock
from app.platforms.base import Platform
from app.platforms.console import ConsolePlatform
from app.platforms.http import HttpPlatform
from app.platforms.intercom import IntercomPlatform
from app.platforms.zendesk import ZendeskPlatform
from app.products import ProductConfig

PLATFORMS: dict[str, type[Platform]] = {
    "http": HttpPlatform,
    "console": ConsolePlatform,
    "intercom": IntercomPlatform,
    "zendesk": ZendeskPlatform,
}


class UnknownPlatform(LookupError):
    """A product names a platform that has no adapter."""


def build_platform(product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> Platform:
    """The adapter for ``product``'s platform, sharing the given client and clock."""
    try:
        adapter = PLATFORMS[product.platform]
    except KeyError:
        known = ", ".join(sorted(PLATFORMS))
        raise UnknownPlatform(
            f"product {product.id!r}: platform {product.platform!r} has no adapter (known: {known})"
        ) from None
    return adapter(product, client, clock)
