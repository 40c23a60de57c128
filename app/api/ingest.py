"""``POST /actions/{product_id}``: action batches and summaries from the event pipeline."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from app import metrics, openapi
from app.api.deps import json_body, lookup_product, services_of
from app.api.errors import ApiError
from app.auth import ingest_credential
from app.models import (
    MAX_PAYLOADS_PER_REQUEST,
    ActionsPayload,
    IngestResponse,
    Intake,
    InvalidPayload,
    SummaryPayload,
    is_array_body,
    parse_ingest,
)
from app.products import ProductConfig
from app.store.redis_store import IngestOutcome

# Served as plain routes by BridgeApp.include_plain: the hottest path of the service.
router = APIRouter(tags=["ingest"], generate_unique_id_function=openapi.operation_id)
log = structlog.get_logger(__name__)

_PAYLOADS = [openapi.schema_ref(ActionsPayload), openapi.schema_ref(SummaryPayload)]
_PAYLOAD_ARRAY = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_PAYLOADS_PER_REQUEST,
    "items": {"oneOf": _PAYLOADS},
}
INGEST_BODY = openapi.request_body(
    {"oneOf": [*_PAYLOADS, _PAYLOAD_ARRAY]},
    description="One payload or an array of them, in order: an action batch (`type` "
    "`actions` or absent) or a summary (`type` `summary`; without a `type`, a body with a "
    "`summary` and no `actions` is one). Unknown fields are ignored.",
)


UNAUTHORIZED = ApiError(
    401,
    "unauthorized",
    "a valid ingest token, X-Connector-Signature or Standard Webhooks signature is required",
)


def _reject(product: ProductConfig, reason: str, error: ApiError) -> ApiError:
    metrics.BATCHES_REJECTED.labels(product.id, reason).inc()
    return error


def _parse(
    product: ProductConfig, body: bytes, intake: Intake
) -> list[ActionsPayload | SummaryPayload]:
    try:
        payloads = parse_ingest(body, intake)
    except InvalidPayload as exc:
        raise _reject(
            product,
            "invalid",
            ApiError(422, "invalid_payload", "the batch failed validation", fields=exc.fields),
        ) from exc
    for i, payload in enumerate(payloads):
        if payload.product_id is not None and payload.product_id != product.id:
            loc = f"[{i}].product_id" if is_array_body(body) else "product_id"
            raise _reject(
                product,
                "invalid",
                ApiError(
                    422,
                    "invalid_payload",
                    "product_id in the body differs from the URL",
                    fields=[{"loc": loc, "message": f"must equal {product.id!r} or be absent"}],
                ),
            )
    return payloads


def count_intake(intake: Intake) -> None:
    """What parsing cut short or filled in (batches and PostHog events)."""
    for name, count in intake.truncated.items():
        metrics.FIELDS_TRUNCATED.labels(name).inc(count)
    if intake.timestamps_defaulted:
        metrics.TIMESTAMPS_DEFAULTED.inc(intake.timestamps_defaulted)


def _count(product: ProductConfig, outcomes: list[IngestOutcome]) -> None:
    if any(o.replayed for o in outcomes):
        metrics.REQUESTS_REPLAYED.labels(product.id, "actions").inc()
    for outcome in outcomes:
        count_stored(product, outcome, via="batch")


def count_stored(product: ProductConfig, outcome: IngestOutcome, *, via: str) -> None:
    """The metrics and the ``link_created`` line of one stored payload (``via``: what sent it,
    a batch or a PostHog event)."""
    metrics.ACTIONS_RECEIVED.labels(product.id).inc(outcome.accepted)
    if outcome.duplicates:
        metrics.ACTIONS_DUPLICATE.labels(product.id).inc(outcome.duplicates)
    if outcome.dropped_window:
        metrics.ACTIONS_DROPPED.labels(product.id, "prelink_window").inc(outcome.dropped_window)
    if outcome.dropped_cap:
        metrics.ACTIONS_DROPPED.labels(product.id, "prelink_cap").inc(outcome.dropped_cap)
    if outcome.linked_now:
        log.info(
            "link_created",
            product_id=product.id,
            session_id=outcome.session_id,
            conversation_id=outcome.conversation_id,
            link_event="new",
            via=via,
        )


@router.post(
    "/actions/{product_id}",
    status_code=202,
    response_model=IngestResponse,
    responses=openapi.error_responses(
        openapi.UNKNOWN_PRODUCT,
        *openapi.BODY_ERRORS,
        openapi.UNAUTHORIZED,
        openapi.INVALID_PAYLOAD,
        *openapi.STORE_ERRORS,
    ),
    openapi_extra=openapi.operation(
        openapi.path_parameter("product_id", "Product Id"),
        INGEST_BODY,
        openapi.security(*openapi.INGEST_CREDENTIALS),
    ),
)
async def ingest_actions(request: Request) -> Response:
    """Store action batches (or summaries) for a product; 202 once they are durable."""
    # A plain route resolves what would be its dependencies itself, in the same order.
    services = services_of(request)
    product = lookup_product(services, request.path_params["product_id"])
    body = await json_body(request, services)
    now = services.clock.now()
    credential = ingest_credential(product, request.headers, body, now=now)
    if credential is None:
        raise _reject(product, "unauthorized", UNAUTHORIZED)
    intake = Intake(received_at=now)
    payloads = _parse(product, body, intake)
    if len(payloads) == 1:
        structlog.contextvars.bind_contextvars(session_id=payloads[0].sid)
    outcomes = await services.store.ingest(
        product,
        payloads,
        now=now,
        replay_fields=credential.replay_fields(product.id, body, len(payloads)),
    )
    count_intake(intake)
    _count(product, outcomes)
    await services.work_scheduled((o.due_at, o.shard) for o in outcomes)
    answer = IngestResponse(
        accepted=sum(o.accepted for o in outcomes),
        duplicates=sum(o.duplicates for o in outcomes),
        linked=all(o.linked for o in outcomes),
    )
    return accepted_answer(answer)


def accepted_answer(answer: BaseModel) -> Response:
    """A plain route's ``202`` answer, serialised once here: a returned Response skips
    FastAPI's re-validation (the hot paths)."""
    return Response(answer.model_dump_json(), status_code=202, media_type="application/json")
