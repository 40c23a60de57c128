"""A fake Zendesk Support API served by uvicorn in a thread, and Zendesk's webhook signing.

It answers Show User from the users it was given, records every private comment added with
Update Ticket (answering with the ticket and an audit holding the ``Comment`` event), checks the
Authorization header, and can be told to fail the next few calls of either endpoint.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.platforms.zendesk import zendesk_signature
from tests.fakes.server import serve_in_thread

POLL_S = 0.02
FIRST_COMMENT_ID = 26311870522001

Endpoint = Literal["users", "tickets"]


def iso_timestamp(when: float) -> str:
    """Zendesk's ``X-Zendesk-Webhook-Signature-Timestamp`` format, e.g. 2024-01-15T12:34:50Z."""
    return datetime.fromtimestamp(int(when), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_headers(
    body: bytes, *, secret: str, when: float, invocation_id: str | None = None
) -> dict[str, str]:
    """The headers Zendesk sends with a webhook signed at ``when``."""
    timestamp = iso_timestamp(when)
    return {
        "content-type": "application/json",
        "x-zendesk-webhook-signature": zendesk_signature(secret, timestamp=timestamp, body=body),
        "x-zendesk-webhook-signature-timestamp": timestamp,
        "x-zendesk-webhook-invocation-id": invocation_id or str(uuid.uuid4().int % 10**10),
    }


@dataclass(frozen=True, slots=True)
class PostedComment:
    """One comment added with PUT /api/v2/tickets/{id}.json."""

    ticket_id: str
    body: str
    public: Any
    authorization: str
    comment_id: int


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after: str | None


@dataclass
class FakeZendesk:
    """The fake's state; ``self.app`` serves the two API endpoints the bridge calls."""

    authorization: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._comments: list[PostedComment] = []
        self._failures: dict[Endpoint, list[_Failure]] = {"users": [], "tickets": []}
        self._calls: dict[Endpoint, int] = {"users": 0, "tickets": 0}
        self._comment_ids = itertools.count(FIRST_COMMENT_ID)
        self.unauthorized = 0
        self.app = Starlette(
            routes=[
                Route("/api/v2/users/{user_id}.json", self._show_user, methods=["GET"]),
                Route("/api/v2/tickets/{ticket_id}.json", self._update_ticket, methods=["PUT"]),
            ]
        )

    def add_user(self, user_id: str, *, external_id: str | None, email: str | None) -> None:
        self.users[user_id] = {
            "id": int(user_id),
            "external_id": external_id,
            "email": email,
            "role": "end-user",
        }

    def fail_next(
        self, endpoint: Endpoint, n: int, status: int = 503, *, retry_after: str | None = None
    ) -> None:
        """Answer the next ``n`` calls of ``endpoint`` with ``status`` (and ``Retry-After``)."""
        with self._lock:
            self._failures[endpoint].extend([_Failure(status, retry_after)] * n)

    def calls(self, endpoint: Endpoint) -> int:
        """Authorized calls of ``endpoint`` so far, failed ones included."""
        with self._lock:
            return self._calls[endpoint]

    @property
    def comments(self) -> list[PostedComment]:
        with self._lock:
            return list(self._comments)

    def wait_for_comments(self, count: int, timeout_s: float) -> list[PostedComment]:
        """Poll until at least ``count`` comments were added; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(comments := self.comments) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} comment(s) in {timeout_s} s: {comments}")
            time.sleep(POLL_S)
        return comments

    def _admit(self, request: Request, endpoint: Endpoint) -> JSONResponse | None:
        """An error response when the call is unauthorized or told to fail, else None."""
        if request.headers.get("authorization") != self.authorization:
            with self._lock:
                self.unauthorized += 1
            return JSONResponse({"error": "Couldn't authenticate you"}, status_code=401)
        with self._lock:
            self._calls[endpoint] += 1
            failure = self._failures[endpoint].pop(0) if self._failures[endpoint] else None
        if failure is None:
            return None
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
        return JSONResponse({"error": "simulated"}, status_code=failure.status, headers=headers)

    async def _show_user(self, request: Request) -> JSONResponse:
        if (refusal := self._admit(request, "users")) is not None:
            return refusal
        user = self.users.get(request.path_params["user_id"])
        if user is None:
            return JSONResponse({"error": "RecordNotFound"}, status_code=404)
        return JSONResponse({"user": user})

    async def _update_ticket(self, request: Request) -> JSONResponse:
        if (refusal := self._admit(request, "tickets")) is not None:
            return refusal
        ticket_id = request.path_params["ticket_id"]
        comment = json.loads(await request.body())["ticket"]["comment"]
        with self._lock:
            comment_id = next(self._comment_ids)
            self._comments.append(
                PostedComment(
                    ticket_id=ticket_id,
                    body=comment["body"],
                    public=comment.get("public"),
                    authorization=request.headers["authorization"],
                    comment_id=comment_id,
                )
            )
        return JSONResponse(_update_response(ticket_id, comment, comment_id))


def _update_response(ticket_id: str, comment: dict[str, Any], comment_id: int) -> dict[str, Any]:
    event = {"id": comment_id, "type": "Comment", "body": comment["body"], "public": False}
    return {
        "ticket": {"id": int(ticket_id), "status": "open"},
        "audit": {
            "id": comment_id - 1,
            "ticket_id": int(ticket_id),
            "events": [{"id": comment_id + 1, "type": "Change", "field_name": "status"}, event],
        },
    }


@contextmanager
def running_zendesk(authorization: str) -> Iterator[FakeZendesk]:
    """Serve a FakeZendesk on a loopback port for the duration of the block."""
    fake = FakeZendesk(authorization)
    with serve_in_thread(fake.app, name="Zendesk") as base_url:
        fake.url = base_url
        yield fake
