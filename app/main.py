"""The ASGI app: ``create_app()`` wires settings, store, platforms and the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import redis.asyncio as redis
import structlog
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.routing import Route

from app import __version__, openapi
from app.api import debug, health, ingest, posthog, sessions, webhooks
from app.api.deps import Services
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.middleware import RequestContextMiddleware
from app.clock import Clock, SystemClock
from app.delivery.worker import DeliveryWorker
from app.logs import configure_logging
from app.platforms import build_platform
from app.platforms.client import http_client
from app.products import ProductConfig, ProductsFileError, load_products
from app.settings import Settings, get_settings
from app.store.redis_store import Client, RedisStore

log = structlog.get_logger(__name__)


class BridgeApp(FastAPI):
    """FastAPI with the bridge's OpenAPI document (``app.openapi.build_openapi``), and plain
    Starlette routes for the hot paths (``include_plain``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plain_routes: list[APIRoute] = []

    def include_plain(self, router: APIRouter) -> None:
        """Serve ``router``'s endpoints as plain Starlette routes, documented as declared.

        A plain route skips FastAPI's per-request machinery (dependency solving, exit stacks,
        the included router's matching): about 110 µs of the ~700 µs of CPU an ingested batch
        cost (bench/ingest_calls.py). Its endpoint takes the request and returns a Response.
        """
        for route in router.routes:
            if not isinstance(route, APIRoute):
                raise TypeError(f"{route!r} is not an API route")
            methods = sorted(route.methods or ())
            plain = Route(
                route.path,
                route.endpoint,
                methods=methods,
                name=route.name,
                include_in_schema=False,
            )
            self.router.routes.append(plain)
            self.plain_routes.append(route)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = openapi.build_openapi(self, [*self.routes, *self.plain_routes])
        return self.openapi_schema


def _redis_client(settings: Settings) -> Client:
    if settings.redis_url is None:
        # Imported lazily: the embedded store is for demos and dry runs only, and the container
        # image does not install it.
        try:
            import fakeredis
        except ImportError as exc:
            raise RuntimeError(
                "BRIDGE_REDIS_URL is unset and the embedded store is not installed: set "
                "BRIDGE_REDIS_URL, or install chatbot-bridge[embedded]"
            ) from exc

        log.warning(
            "embedded_store",
            detail="BRIDGE_REDIS_URL is unset: using an in-process store; state is lost on exit",
        )
        client: redis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        return client
    # Redis runs next to the bridge: fail fast (one quick retry) so a request answers 503
    # within a platform's webhook deadline instead of hanging on a dead server.
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1)
    if settings.redis_cluster:
        # The cluster client learns every node from the one in the URL, follows MOVED/ASK
        # itself and re-reads the slot map after a failover; few retries keep a request
        # within a webhook deadline while a slot has no primary (the API answers 503).
        cluster: redis.RedisCluster = redis.RedisCluster.from_url(
            settings.redis_url,
            socket_timeout=3,
            socket_connect_timeout=2,
            retry=retry,
        )
        return cluster
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=3,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=retry,
    )


async def _build_services(
    settings: Settings,
    products: dict[str, ProductConfig],
    clock: Clock,
    client: Client,
    http_transport: httpx.AsyncBaseTransport | None,
) -> Services:
    store = RedisStore(
        client,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_s=settings.redis_wait_timeout_s,
    )
    with contextlib.suppress(Exception):
        await store.load_scripts()  # scripts also load on first use, so a down Redis can wait
    http = http_client(http_transport)
    platforms = {pid: build_platform(p, http, clock) for pid, p in products.items()}
    worker = DeliveryWorker(
        store=store,
        products=products,
        platforms=platforms,
        clock=clock,
        lease_s=settings.lease_s,
        poll_s=settings.worker_poll_s,
        concurrency=settings.worker_concurrency,
        listen=settings.role == "worker",
    )
    return Services(settings, products, store, platforms, worker, clock, http)


def create_app(
    settings: Settings | None = None,
    *,
    products: Mapping[str, ProductConfig] | None = None,
    clock: Clock | None = None,
    redis_client: Client | None = None,
    run_worker: bool | None = None,
    configure_logs: bool = True,
    http_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the service for ``settings.role``: the HTTP API, the delivery worker, or both.
    Tests pass settings, products, a clock or a Redis client directly, may keep the worker
    from running (``run_worker=False``) to drive deliveries themselves, and may replace the
    platforms' transport (httpx's own one, which respx mocks)."""
    settings = settings or get_settings()
    clock = clock or SystemClock()
    serves_api = settings.role in ("all", "api")
    if run_worker is None:
        run_worker = settings.role in ("all", "worker")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(fmt=settings.log_format, level=settings.log_level)
        try:
            loaded = (
                dict(products) if products is not None else load_products(settings.products_file)
            )
        except ProductsFileError as exc:
            log.error("startup_failed", error=str(exc))
            raise
        client = redis_client or _redis_client(settings)
        services = await _build_services(settings, loaded, clock, client, http_transport)
        app.state.services = services
        if run_worker:
            services.worker_task = asyncio.create_task(services.worker.run())
        store_name = "embedded" if redis_client is None and settings.redis_url is None else "redis"
        log.info("service_started", products=sorted(loaded), store=store_name, role=settings.role)
        try:
            yield
        finally:
            services.accepting = False
            services.worker.stop(settings.shutdown_grace_s)
            if services.worker_task is not None:
                await services.worker_task
            await services.http.aclose()
            if redis_client is None:
                await client.aclose()
            log.info("service_stopped")

    app = BridgeApp(
        title="chatbot-bridge",
        summary="Posts what a user just did in the product into their support conversation.",
        version=__version__,
        lifespan=lifespan,
        # Served from local assets by install_docs: the defaults load them from a CDN.
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=openapi.operation_id,
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    # A worker serves only its probes and metrics: intake goes to the api processes.
    if serves_api:
        app.include_plain(ingest.router)
        app.include_plain(posthog.router)
    for module in (webhooks, sessions, health, debug) if serves_api else (health,):
        app.include_router(module.router)
    install_docs(app)
    return app


def __getattr__(name: str) -> Any:
    # ``app.main:app`` for uvicorn, built on first access so importing this module is cheap.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
