"""The fake self-hosted bot (tests/fakes/bot.py) served from its own process for `make bench`.

In its own process, the load generator's work (and its GIL) cannot delay the bot's receive
times, which are ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every process on a
Linux machine, so the bench compares them with its own send and 202 times.

    python -m bench.fakebot --port 8765

``GET /records?since=N`` returns the signed posts received after the first N.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tests.conftest import HTTP_SECRET
from tests.fakes.bot import Attempt, FakeBot


def record(attempt: Attempt) -> dict[str, Any]:
    """What the bench needs from one post: when, for whom, which actions."""
    payload = attempt.payload
    return {
        "at": attempt.received_at,
        "status": attempt.status,
        "product_id": payload.get("product_id"),
        "session_id": payload.get("session_id"),
        "kind": payload.get("kind"),
        "webhook_id": attempt.webhook_id,
        "descriptions": [a.get("description") for a in payload.get("actions", [])],
    }


def build_app(bot: FakeBot) -> Starlette:
    async def records(request: Request) -> JSONResponse:
        attempts = bot.attempts
        since = min(int(request.query_params.get("since", "0")), len(attempts))
        body = {"next": len(attempts), "rejected": bot.rejected}
        return JSONResponse({**body, "records": [record(a) for a in attempts[since:]]})

    return Starlette(routes=[Route("/records", records), Mount("/", app=bot.app)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build_app(FakeBot(HTTP_SECRET))
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="off"
    )


if __name__ == "__main__":
    main()
