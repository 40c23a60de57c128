"""The one place errors become HTTP: ``{"error": code, "detail": sentence}``."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.models import format_loc
from app.store.redis_store import StoreError, StoreUnavailable

STORE_RETRY_AFTER_S = 1
log = structlog.get_logger(__name__)


class ApiError(Exception):
    """An error answer a route chose deliberately."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.fields = fields
        self.headers = headers
        self.extra = extra


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> JSONResponse:
    content: dict[str, object] = {"error": code, "detail": detail, **(extra or {})}
    if fields is not None:
        content["fields"] = fields
    return JSONResponse(content, status_code=status, headers=headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.code, exc.detail, fields=exc.fields, headers=exc.headers, extra=exc.extra
    )


async def _store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return error_response(
        503,
        "store_unavailable",
        "the session store is not answering; nothing was stored, retry later",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    # Nothing was stored, so the sender may retry; the cause is for the operator's log only.
    log.error("store_error", error=str(exc), exc_info=exc)
    return error_response(
        503,
        "store_error",
        "the session store refused the operation; nothing was stored, retry later",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [{"loc": format_loc(tuple(e["loc"])), "message": str(e["msg"])} for e in exc.errors()]
    return error_response(422, "invalid_request", "the request failed validation", fields=fields)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else phrase
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, detail, headers=headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("request_failed", error=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "the bridge failed to handle the request")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
