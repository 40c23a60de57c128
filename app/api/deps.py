"""Request dependencies, as ``Annotated`` aliases for the routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated

import httpx
import structlog
from fastapi import Depends, Path, Request

from app.api.errors import ApiError
from app.auth import is_admin
from app.clock import Clock
from app.delivery.worker import DeliveryWorker
from app.models import SESSION_ID_REGEX
from app.platforms.base import Platform, is_json_media_type
from app.products import ProductConfig
from app.settings import Settings
from app.store.keys import SHARDS
from app.store.redis_store import RedisStore, StoreUnavailable


@dataclass
class Services:
    """What the lifespan builds once per process and the routes share."""

    settings: Settings
    products: dict[str, ProductConfig]
    store: RedisStore
    platforms: dict[str, Platform]
    worker: DeliveryWorker
    clock: Clock
    http: httpx.AsyncClient
    accepting: bool = True
    worker_task: asyncio.Task[None] | None = None

    async def work_scheduled(self, due: Iterable[tuple[float | None, int | None]]) -> None:
        """Work now falls due at these (time, shard) pairs: wake this process's worker, or,
        in an api-only process, announce the shards to the worker processes."""
        due = [(at, shard) for at, shard in due if at is not None]
        if self.settings.role != "api":
            for at, shard in due:
                self.worker.notify(at, shard)
            return
        shards = {k for _, shard in due for k in (range(SHARDS) if shard is None else [shard])}
        if shards:
            with contextlib.suppress(StoreUnavailable):  # the workers' sweep finds it anyway
                await self.store.announce(shards)


# Dependencies are ``async`` so FastAPI runs them in the request's task (a sync one would run
# in a thread pool, which costs time and loses the log context it binds).
async def get_services(request: Request) -> Services:
    return services_of(request)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def lookup_product(services: Services, product_id: str) -> ProductConfig:
    """The configured product (404 otherwise), bound into the request's log context."""
    product = services.products.get(product_id)
    if product is None:
        raise ApiError(404, "unknown_product", f"no product {product_id!r} is configured")
    structlog.contextvars.bind_contextvars(product_id=product_id)
    return product


async def get_product(product_id: str, services: ServicesDep) -> ProductConfig:
    return lookup_product(services, product_id)


ProductDep = Annotated[ProductConfig, Depends(get_product)]


async def json_body(request: Request, services: ServicesDep) -> bytes:
    """The raw body (signatures need the exact bytes), checked for type, size and read time."""
    return await read_body(
        request, services, accepts=is_json_media_type, expected="application/json"
    )


async def read_body(
    request: Request, services: Services, *, accepts: Callable[[str], bool], expected: str
) -> bytes:
    """The raw body of a type ``accepts`` takes (by Content-Type; ``expected`` names it in
    the 415), within the size and read-time limits."""
    if not services.accepting:
        raise ApiError(
            503, "shutting_down", "this instance is shutting down", headers={"Retry-After": "1"}
        )
    if not accepts(request.headers.get("content-type", "")):
        raise ApiError(415, "unsupported_media_type", f"send the body as {expected}")
    limit = services.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and _declares_more_than(declared, limit):
        raise _too_large(limit)
    deadline_s = services.settings.body_read_timeout_s
    body = bytearray()
    try:
        # A client that trickles its body would otherwise hold the request (and a connection).
        async with asyncio.timeout(deadline_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise _too_large(limit)
    except TimeoutError:
        detail = f"the request body did not arrive within {deadline_s:g} s"
        raise ApiError(408, "request_timeout", detail, headers={"Connection": "close"}) from None
    return bytes(body)


def _declares_more_than(content_length: str, limit: int) -> bool:
    # Bounded before int(): thousands of digits are refused, not parsed, and only ASCII digits
    # count ("²" is a digit to str.isdigit(), not to int()).
    if not (content_length.isascii() and content_length.isdigit()):
        return False
    return len(content_length) > 18 or int(content_length) > limit


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")


JsonBody = Annotated[bytes, Depends(json_body)]


async def require_admin(request: Request, services: ServicesDep) -> None:
    """``/debug/*`` exists only when BRIDGE_ADMIN_TOKEN is set, and needs that token."""
    admin_token = services.settings.admin_token
    if not admin_token:
        raise ApiError(404, "not_found", "Not Found")
    if not is_admin(request.headers, admin_token):
        raise ApiError(401, "unauthorized", "the admin token is required")


AdminDep = Annotated[None, Depends(require_admin)]

# A session id in a path is checked like one in a body (a 422 names it), before it reaches Redis.
SessionIdPath = Annotated[str, Path(pattern=SESSION_ID_REGEX)]
