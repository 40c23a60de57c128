"""A fake Salesforce org served by uvicorn in a thread: the OAuth token endpoint and the
CaseComment create and delete calls of the REST API.

The token endpoint runs the client-credentials grant (checking the client id and secret) and
answers like Salesforce, with no expiry and this server as ``instance_url``. API calls need a
live token: after ``expire_tokens()`` every token issued so far is refused with
``401 INVALID_SESSION_ID``, as when a session times out or is revoked. Comments are recorded in
the order they were created; a deleted case answers ``400 ENTITY_IS_DELETED``, a comment that does
not exist ``404 NOT_FOUND``.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.platforms.salesforce import case_safe_id
from tests.fakes.server import serve_in_thread

POLL_S = 0.02
API_VERSION = "62.0"
ORG_ID = "00DHs000000ABCDMA4"
RUN_AS_USER_ID = "005Hs00000C8xYzIAJ"
COMMENTS = f"/services/data/v{API_VERSION}/sobjects/CaseComment"


@dataclass(frozen=True, slots=True)
class PostedComment:
    """One CaseComment created through the REST API."""

    comment_id: str
    parent_id: str
    body: str
    is_published: Any


def _errors(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse([{"message": message, "errorCode": code, "fields": []}], status_code=status)


@dataclass
class FakeSalesforce:
    """The fake's state; ``self.app`` serves the token endpoint and the CaseComment calls."""

    client_id: str
    client_secret: str
    url: str = ""
    deleted_cases: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._live_tokens: set[str] = set()
        self._comments: dict[str, PostedComment] = {}
        self._deleted: list[str] = []
        self._ids = itertools.count(1)
        self.token_calls = 0
        self.refused = 0  # API calls answered 401 INVALID_SESSION_ID
        self.app = Starlette(
            routes=[
                Route("/services/oauth2/token", self._token, methods=["POST"]),
                Route(COMMENTS, self._create_comment, methods=["POST"]),
                Route(COMMENTS + "/{comment_id}", self._delete_comment, methods=["DELETE"]),
            ]
        )

    def expire_tokens(self) -> None:
        """Refuse every token issued so far (the next call with one answers 401)."""
        with self._lock:
            self._live_tokens.clear()

    def delete_case(self, case_id: str) -> None:
        with self._lock:
            self.deleted_cases.add(case_id)

    @property
    def comments(self) -> list[PostedComment]:
        """The comments that exist, in the order they were created."""
        with self._lock:
            return list(self._comments.values())

    @property
    def deleted_comments(self) -> list[str]:
        with self._lock:
            return list(self._deleted)

    def wait_for_comments(self, count: int, timeout_s: float) -> list[PostedComment]:
        """Poll until at least ``count`` comments exist; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(comments := self.comments) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} comment(s) in {timeout_s} s: {comments}")
            time.sleep(POLL_S)
        return comments

    async def _token(self, request: Request) -> JSONResponse:
        form = {
            name: values[0] for name, values in parse_qs((await request.body()).decode()).items()
        }
        if form.get("grant_type") != "client_credentials":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                status_code=400,
            )
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return JSONResponse(
                {"error": "invalid_client", "error_description": "invalid client credentials"},
                status_code=400,
            )
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        with self._lock:
            self.token_calls += 1
            self._live_tokens.add(token)
        return JSONResponse(
            {
                "access_token": token,
                "signature": secrets.token_urlsafe(32),
                "scope": "api",
                "instance_url": self.url,
                "id": f"{self.url}/id/{ORG_ID}/{RUN_AS_USER_ID}",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            }
        )

    def _refusal(self, request: Request) -> JSONResponse | None:
        """The 401 for a call without a live token, else None."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            if scheme == "Bearer" and token in self._live_tokens:
                return None
            self.refused += 1
        return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")

    async def _create_comment(self, request: Request) -> JSONResponse:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        fields = json.loads(await request.body())
        parent_id = case_safe_id(str(fields.get("ParentId", "")))
        with self._lock:
            if parent_id in self.deleted_cases:
                return _errors(400, "ENTITY_IS_DELETED", "entity is deleted")
            comment_id = case_safe_id(f"00aHs{next(self._ids):010d}")
            self._comments[comment_id] = PostedComment(
                comment_id=comment_id,
                parent_id=parent_id,
                body=fields.get("CommentBody", ""),
                is_published=fields.get("IsPublished"),
            )
        return JSONResponse({"id": comment_id, "success": True, "errors": []}, status_code=201)

    async def _delete_comment(self, request: Request) -> Response:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        comment_id = request.path_params["comment_id"]
        with self._lock:
            if self._comments.pop(comment_id, None) is None:
                return _errors(404, "NOT_FOUND", "The requested resource does not exist")
            self._deleted.append(comment_id)
        return Response(status_code=204)


@contextmanager
def running_salesforce(client_id: str, client_secret: str) -> Iterator[FakeSalesforce]:
    """Serve a FakeSalesforce on a loopback port for the duration of the block."""
    fake = FakeSalesforce(client_id, client_secret)
    with serve_in_thread(fake.app, name="Salesforce") as base_url:
        fake.url = base_url
        yield fake


def webhook_headers(token: str) -> dict[str, str]:
    """What the Named Credential sends with the Flow's callout."""
    return {"content-type": "application/json", "x-bridge-token": token}
