"""A fake Intercom REST API served by uvicorn in a thread.

It checks the access token and headers like Intercom does, keeps each conversation's parts,
answers a reply with the whole conversation (the new note part authored by the admin last),
serves the contacts it is given (Get Contact), records every call, and can be told to fail the
next few calls (429 with ``X-RateLimit-Reset``, 5xx) or to forget a conversation (404).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.server import serve_in_thread

POLL_S = 0.02
MAX_PARTS = 500  # Intercom lists at most this many parts in a conversation object
FIRST_PART_ID = 31_894_420_001

Answer = tuple[int, Any]
Action = Callable[[dict[str, Any]], Answer]


@dataclass(frozen=True, slots=True)
class Call:
    """One request the fake received, whatever it answered."""

    path: str
    headers: dict[str, str]
    payload: Any
    status: int
    received_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


def error_list(code: str, message: str) -> dict[str, Any]:
    """Intercom's error body."""
    return {
        "type": "error.list",
        "request_id": f"req_{time.monotonic_ns()}",
        "errors": [{"code": code, "message": message}],
    }


class FakeIntercom:
    """The API's state; the ASGI app in ``self.app`` serves reply and redact."""

    def __init__(self, *, access_token: str, admin_id: str) -> None:
        self.access_token = access_token
        self.admin_id = admin_id
        self.api_base = ""
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._failures: list[Failure] = []
        self._parts: dict[str, list[dict[str, Any]]] = {}
        self._deleted: set[str] = set()
        self._contacts: dict[str, dict[str, Any]] = {}
        self._part_ids = itertools.count(FIRST_PART_ID)
        self.app = Starlette(
            routes=[
                Route("/conversations/redact", self._redact, methods=["POST"]),
                Route("/conversations/{conversation_id}/reply", self._reply, methods=["POST"]),
                Route("/contacts/{contact_id}", self._get_contact, methods=["GET"]),
            ]
        )

    @property
    def calls(self) -> list[Call]:
        """Every request, failed ones included, in arrival order."""
        with self._lock:
            return list(self._calls)

    @property
    def replies(self) -> list[Call]:
        """The reply calls the fake accepted (answered 200), in arrival order."""
        return [c for c in self.calls if c.path.endswith("/reply") and c.status == 200]

    def fail_next(
        self, n: int, status: int = 503, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer the next ``n`` authenticated calls with ``status`` (and ``headers``)."""
        with self._lock:
            self._failures.extend([Failure(status, dict(headers or {}))] * n)

    def rate_limit_next(self, *, reset_at: int) -> None:
        """Answer the next call with 429 and ``X-RateLimit-Reset: reset_at``."""
        headers = {
            "X-RateLimit-Limit": "167",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_at),
        }
        self.fail_next(1, 429, headers)

    def add_contact(self, contact_id: str, **custom_attributes: str) -> None:
        """A lead Intercom knows by ``contact_id`` only, with these custom attributes."""
        with self._lock:
            self._contacts[contact_id] = {
                "type": "contact",
                "id": contact_id,
                "workspace_id": "q7w2e9rt",
                "external_id": None,
                "role": "lead",
                "email": None,
                "name": None,
                "created_at": int(time.time()),
                "updated_at": int(time.time()),
                "custom_attributes": dict(custom_attributes),
            }

    def contact_reads(self) -> list[Call]:
        return [c for c in self.calls if c.path.startswith("/contacts/")]

    def delete_conversation(self, conversation_id: str) -> None:
        """From now on the conversation is gone (404)."""
        with self._lock:
            self._deleted.add(conversation_id)

    def parts(self, conversation_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(p) for p in self._parts.get(conversation_id, [])]

    def wait_for_replies(self, count: int, timeout_s: float) -> list[Call]:
        """Poll until at least ``count`` replies were accepted; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(replies := self.replies) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} repl(ies) in {timeout_s} s, got {replies}")
            time.sleep(POLL_S)
        return replies

    async def _reply(self, request: Request) -> JSONResponse:
        conversation_id = request.path_params["conversation_id"]
        return await self._handle(request, lambda payload: self._add_part(conversation_id, payload))

    async def _redact(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._redact_part)

    async def _get_contact(self, request: Request) -> JSONResponse:
        contact_id = request.path_params["contact_id"]
        return await self._handle(request, lambda _: self._contact(contact_id), body=False)

    def _contact(self, contact_id: str) -> Answer:
        with self._lock:
            found = self._contacts.get(contact_id)
        if found is None:
            return 404, error_list("not_found", "User Not Found")
        return 200, dict(found)

    async def _handle(self, request: Request, action: Action, *, body: bool = True) -> JSONResponse:
        raw = await request.body()
        try:
            payload: Any = json.loads(raw) if body else {}
        except ValueError:
            payload = None
        status, answer, headers = self._answer(request, payload, action)
        call = Call(request.url.path, dict(request.headers), payload, status, time.monotonic())
        with self._lock:
            self._calls.append(call)
        return JSONResponse(answer, status_code=status, headers=headers)

    def _answer(
        self, request: Request, payload: Any, action: Action
    ) -> tuple[int, Any, dict[str, str]]:
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return 401, error_list("unauthorized", "Access Token Invalid"), {}
        if "application/json" not in request.headers.get("accept", ""):
            return 406, error_list("client_error", "Accept must include application/json"), {}
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return failure.status, error_list("server_error", "simulated failure"), failure.headers
        if not isinstance(payload, dict):
            return 400, error_list("parameter_invalid", "the body is not a JSON object"), {}
        status, body = action(payload)
        return status, body, {}

    def _add_part(self, conversation_id: str, payload: dict[str, Any]) -> Answer:
        problem = self._reply_problem(payload)
        if problem:
            return 400, error_list("parameter_invalid", problem)
        with self._lock:
            if conversation_id in self._deleted:
                return 404, error_list("not_found", "Resource Not Found")
            part = self._new_part(payload)
            self._parts.setdefault(conversation_id, []).append(part)
            return 200, self._conversation(conversation_id)

    def _reply_problem(self, payload: Mapping[str, Any]) -> str | None:
        if payload.get("message_type") not in ("note", "comment"):
            return "message_type must be note or comment"
        if payload.get("type") != "admin":
            return "type must be admin"
        if payload.get("admin_id") != self.admin_id:
            return "admin_id does not name an admin of this workspace"
        if not isinstance(payload.get("body"), str) or not payload["body"]:
            return "body is required for notes"
        return None

    def _new_part(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        return {
            "type": "conversation_part",
            "id": str(next(self._part_ids)),
            "part_type": payload["message_type"],
            "body": f"<p>{payload['body']}</p>",
            "created_at": now,
            "updated_at": now,
            "notified_at": now,
            "assigned_to": None,
            "author": {
                "type": "admin",
                "id": payload["admin_id"],
                "name": "Session Bridge",
                "email": "bridge@acme.example",
            },
            "attachments": [],
            "external_id": None,
            "redacted": False,
        }

    def _redact_part(self, payload: dict[str, Any]) -> Answer:
        conversation_id = str(payload.get("conversation_id"))
        part_id = str(payload.get("conversation_part_id"))
        if payload.get("type") != "conversation_part":
            return 400, error_list("parameter_invalid", "type must be conversation_part")
        with self._lock:
            parts = self._parts.get(conversation_id, [])
            part = next((p for p in parts if p["id"] == part_id), None)
            if conversation_id in self._deleted or part is None:
                return 404, error_list("not_found", "Resource Not Found")
            part.update(body="<p><i>This message was deleted</i></p>", redacted=True)
            return 200, self._conversation(conversation_id)

    def _conversation(self, conversation_id: str) -> dict[str, Any]:
        parts = self._parts.get(conversation_id, [])
        return {
            "type": "conversation",
            "id": conversation_id,
            "created_at": parts[0]["created_at"] if parts else int(time.time()),
            "updated_at": parts[-1]["updated_at"] if parts else int(time.time()),
            "open": True,
            "state": "open",
            "read": True,
            "source": {
                "type": "conversation",
                "id": f"src_{conversation_id}",
                "delivered_as": "customer_initiated",
                "body": "<p>Help!</p>",
                "author": {"type": "user", "id": "contact-1", "email": "user@example.test"},
            },
            "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": "c-1"}]},
            "custom_attributes": {},
            "conversation_parts": {
                "type": "conversation_part.list",
                "conversation_parts": [dict(p) for p in parts[-MAX_PARTS:]],
                "total_count": len(parts),
            },
        }


@contextmanager
def running_intercom(*, access_token: str, admin_id: str) -> Iterator[FakeIntercom]:
    """Serve a FakeIntercom on a loopback port; ``api_base`` is its URL."""
    fake = FakeIntercom(access_token=access_token, admin_id=admin_id)
    with serve_in_thread(fake.app, name="Intercom") as base_url:
        fake.api_base = base_url
        yield fake
