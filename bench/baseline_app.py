"""The B1 baseline (docs/performance.md): a bare FastAPI endpoint with the work
``POST /actions`` cannot avoid, and nothing else. It reads the raw body, checks the same ingest
credentials (``app.auth.ingest_credential``), validates with the same models
(``app.models.parse_ingest``) and answers 202 with the same response model, serialised the way
the service does it (a ``Response`` built from ``IngestResponse.model_dump_json()``), without
storing anything: no middleware, no metrics, no logging, no Redis. It is served exactly like the
service (``app.server.serve``: uvicorn, one worker, the same settings), configured by the same
BRIDGE_* environment and products file.

    BRIDGE_PRODUCTS_FILE=... BRIDGE_PORT=... python -m bench.baseline_app
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import FastAPI, HTTPException, Request, Response

from app.auth import ingest_credential
from app.models import ActionsPayload, IngestResponse, Intake, InvalidPayload, parse_ingest
from app.products import ProductConfig, load_products
from app.server import serve
from app.settings import Settings


def create_baseline_app(products: Mapping[str, ProductConfig]) -> FastAPI:
    app = FastAPI(title="chatbot-bridge B1 baseline")

    @app.post("/actions/{product_id}", status_code=202, response_model=IngestResponse)
    async def ingest(product_id: str, request: Request) -> Response:
        """Authenticate and validate a batch like the service, then store nothing."""
        product = products.get(product_id)
        if product is None:
            raise HTTPException(404, "unknown product")
        body = await request.body()
        now = time.time()
        if ingest_credential(product, request.headers, body, now=now) is None:
            raise HTTPException(401, "unauthorized")
        try:
            payloads = parse_ingest(body, Intake(received_at=now))
        except InvalidPayload as exc:
            raise HTTPException(422, exc.fields) from exc
        accepted = sum(len(p.actions) if isinstance(p, ActionsPayload) else 1 for p in payloads)
        answer = IngestResponse(accepted=accepted, duplicates=0, linked=True)
        return Response(answer.model_dump_json(), status_code=202, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Readiness for the bench."""
        return {"status": "ok"}

    return app


def main() -> None:
    settings = Settings()
    app = create_baseline_app(load_products(settings.products_file))
    serve(app, host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
