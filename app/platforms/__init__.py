"""Chat platform adapters, keyed by the products file's ``platform`` name.

Every adapter is a plug-in (app/plugins.py): the built-in ones are registered in this project's
``pyproject.toml`` like a third-party package's would be.
"""

from __future__ import annotations

import httpx

from app import plugins
from app.clock import Clock
from app.platforms.base import Platform
from app.products import ProductConfig

UnknownPlatform = plugins.PluginError


def build_platform(product: ProductConfig, client: httpx.AsyncClient, clock: Clock) -> Platform:
    """The adapter for ``product``'s platform, sharing the given client and clock."""
    adapter: type[Platform] = plugins.platform_class(product.platform)
    return adapter(product, client, clock)
