"""The OpenAPI document: what the routes declare, plus what FastAPI cannot see.

Routes read their raw body (signatures cover the exact bytes) and validate it themselves, so
FastAPI sees no request bodies and assumes its own 422 shape. Routes therefore declare, with the
helpers here, their request body (``request_body``), who may call them (``security``) and every
error they can answer (``error_responses``); ``build_openapi`` adds the request models' schemas
and the security schemes to the components, and swaps FastAPI's validation error for ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute

from app.models import ErrorBody, FieldError

REF_PREFIX = "#/components/schemas/"
REF_TEMPLATE = REF_PREFIX + "{model}"
ERROR_BODY_REF = REF_PREFIX + ErrorBody.__name__
# FastAPI's own 422 schemas: the bridge never answers them.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

DESCRIPTION = """\
Every error answer is a JSON object `{"error": code, "detail": sentence}` (the `ErrorBody`
schema): `error` is a stable machine-readable code, `detail` is for people. A 422 adds `fields`,
one `{"loc", "message"}` per invalid field; some errors add keys such as `reason`. A 503 error
carries `Retry-After` (seconds): nothing was stored, so the same request may be sent again.
"""

TAGS: list[dict[str, str]] = [
    {"name": "ingest", "description": "Action batches and summaries from the event pipeline."},
    {"name": "webhooks", "description": "Conversation events from each product's chat platform."},
    {"name": "posthog", "description": "Events from PostHog's HTTP Webhook destination."},
    {"name": "sessions", "description": "Linking and session state for custom integrations."},
    {"name": "operations", "description": "Probes and metrics."},
    {
        "name": "debug",
        "description": "What the bridge holds (only when BRIDGE_ADMIN_TOKEN is set).",
    },
]

# --- security -------------------------------------------------------------------------------

INGEST_BEARER = "ingestToken"
CONNECTOR_SIGNATURE = "connectorSignature"
STANDARD_WEBHOOKS = "standardWebhooks"
INTERCOM_SIGNATURE = "intercomSignature"
ZENDESK_SIGNATURE = "zendeskSignature"
SALESFORCE_TOKEN = "salesforceToken"  # noqa: S105 (a scheme name)
POSTHOG_HEADER = "posthogHeader"
ADMIN_BEARER = "adminToken"

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    INGEST_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "The product's `ingest_token` from the products file.",
    },
    CONNECTOR_SIGNATURE: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Connector-Signature",
        "description": "`sha256=<hex HMAC-SHA256 of the raw body>` keyed with the product's "
        "`ingest_secret`.",
    },
    STANDARD_WEBHOOKS: {
        "type": "apiKey",
        "in": "header",
        "name": "webhook-signature",
        "description": "Standard Webhooks: `webhook-signature` holds `v1,<base64 HMAC-SHA256 of "
        "'{webhook-id}.{webhook-timestamp}.{raw body}'>` (several space-separated during a "
        "secret rotation), and the request also carries `webhook-id` (at most 256 characters, "
        "unique per message) and `webhook-timestamp` (Unix seconds, within 5 minutes). The key "
        "is the `whsec_` secret: the product's `ingest_webhook_secret` for /actions and "
        "/sessions, its `[http]` or `[console]` `webhook_secret` for /chatbot-webhook, its "
        "`[posthog]` `webhook_secret` for /posthog.",
    },
    INTERCOM_SIGNATURE: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Hub-Signature",
        "description": "Intercom: `sha1=<hex HMAC-SHA1 of the raw body>` keyed with the app's "
        "client secret.",
    },
    ZENDESK_SIGNATURE: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Zendesk-Webhook-Signature",
        "description": "Zendesk: base64 HMAC-SHA256 of `X-Zendesk-Webhook-Signature-Timestamp` "
        "followed by the raw body, keyed with the webhook's signing secret; the timestamp "
        "(ISO 8601, also sent) must be within 5 minutes.",
    },
    SALESFORCE_TOKEN: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Bridge-Token",
        "description": "Salesforce: the product's `[salesforce]` `webhook_token`, sent by the "
        "Flow's Named Credential, compared in constant time.",
    },
    POSTHOG_HEADER: {
        "type": "apiKey",
        "in": "header",
        "name": "X-PostHog-Secret",
        "description": "A static header for PostHog versions that do not sign: the header "
        "named by the product's `[posthog]` `header_name` (shown here as X-PostHog-Secret), "
        "carrying its `header_secret`.",
    },
    ADMIN_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "BRIDGE_ADMIN_TOKEN.",
    },
}

INGEST_CREDENTIALS = (INGEST_BEARER, CONNECTOR_SIGNATURE, STANDARD_WEBHOOKS)
PLATFORM_SIGNATURES = (INTERCOM_SIGNATURE, ZENDESK_SIGNATURE, SALESFORCE_TOKEN, STANDARD_WEBHOOKS)
POSTHOG_CREDENTIALS = (STANDARD_WEBHOOKS, POSTHOG_HEADER)


def security(*alternatives: str) -> dict[str, Any]:
    """``openapi_extra`` for an operation that any one of these schemes authorizes."""
    unknown = set(alternatives) - set(SECURITY_SCHEMES)
    assert not unknown, f"unknown security schemes {unknown}"
    return {"security": [{name: []} for name in alternatives]}


# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorCase:
    """One error answer a route can give: its status, ``error`` code and meaning."""

    status: int
    code: str
    meaning: str
    retry_after: bool = False
    # The answer's ``reason`` key (what refused a transition), as an example of it.
    reason: str | None = None


UNKNOWN_PRODUCT = ErrorCase(404, "unknown_product", "No product with this id is configured.")
POSTHOG_NOT_CONFIGURED = ErrorCase(
    404, "posthog_not_configured", "The product has no `[posthog]` section."
)
UNKNOWN_SESSION = ErrorCase(404, "unknown_session", "The bridge holds no such session.")
INVALID_PARAMETER = ErrorCase(
    422, "invalid_request", "A path or query parameter failed validation; `fields` names it."
)
INVALID_PAYLOAD = ErrorCase(
    422, "invalid_payload", "The body failed validation; `fields` lists every problem."
)
UNAUTHORIZED = ErrorCase(401, "unauthorized", "No valid credential for this operation.")
INVALID_SIGNATURE = ErrorCase(
    401, "invalid_signature", "The platform's webhook signature is missing, stale or wrong."
)
INVALID_WEBHOOK = ErrorCase(
    400, "invalid_webhook", "The webhook is authentic but its body cannot be understood."
)
ADMIN_DISABLED = ErrorCase(404, "not_found", "BRIDGE_ADMIN_TOKEN is unset: /debug/* is off.")
UNSUPPORTED_MEDIA_TYPE = ErrorCase(
    415, "unsupported_media_type", "The body is not `application/json` (or `+json`)."
)
BODY_TOO_LARGE = ErrorCase(413, "body_too_large", "The body is larger than BRIDGE_MAX_BODY_BYTES.")
REQUEST_TIMEOUT = ErrorCase(
    408,
    "request_timeout",
    "The headers (BRIDGE_HEADER_READ_TIMEOUT_S) or the body (BRIDGE_BODY_READ_TIMEOUT_S) did "
    "not arrive in time; the connection is closed.",
)
HEADERS_TOO_LARGE = ErrorCase(
    431, "headers_too_large", "The request headers are larger than BRIDGE_MAX_HEADER_BYTES."
)
OVERLOADED = ErrorCase(
    503, "overloaded", "The server is at BRIDGE_MAX_CONNECTIONS connections.", retry_after=True
)
SHUTTING_DOWN = ErrorCase(
    503, "shutting_down", "This instance is draining; send to another.", retry_after=True
)
STORE_UNAVAILABLE = ErrorCase(
    503, "store_unavailable", "Redis is not answering; nothing was stored.", retry_after=True
)
STORE_ERROR = ErrorCase(
    503, "store_error", "Redis refused the operation; nothing was stored.", retry_after=True
)
PLATFORM_UNAVAILABLE = ErrorCase(
    503,
    "platform_unavailable",
    "Reading the webhook's details from the platform's API failed; nothing was linked.",
    retry_after=True,
)
REPLAYED_REQUEST = ErrorCase(
    409, "replayed_request", "This exact request was already applied.", reason="replayed_request"
)
PROACTIVE_NOT_ALLOWED = ErrorCase(
    409,
    "proactive_not_allowed",
    "The gate is closed: `reason` is `v2_state_<state>` or `v2_cooldown_active`.",
    reason="v2_cooldown_active",
)
INTERNAL_ERROR = ErrorCase(500, "internal_error", "A bug: the bridge failed to handle it.")
# What reading a JSON body can answer (``app.api.deps.json_body``), and what the store can.
BODY_ERRORS = (SHUTTING_DOWN, UNSUPPORTED_MEDIA_TYPE, BODY_TOO_LARGE, REQUEST_TIMEOUT)
STORE_ERRORS = (STORE_UNAVAILABLE, STORE_ERROR)
# What any request can get: from the server (``app.server``) before the app sees it, or a bug.
ANY_REQUEST_ERRORS = (REQUEST_TIMEOUT, HEADERS_TOO_LARGE, OVERLOADED, INTERNAL_ERROR)

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the request again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}


_REASON = {"reason": {"type": "string", "description": "What refused the request."}}


def _error_schema(cases: list[ErrorCase]) -> dict[str, Any]:
    reasons = [case.reason is not None for case in cases]
    if not any(reasons):
        return {"$ref": ERROR_BODY_REF}
    addition: dict[str, Any] = {"type": "object", "properties": _REASON}
    if all(reasons):
        addition["required"] = list(_REASON)
    return {"allOf": [{"$ref": ERROR_BODY_REF}, addition]}


def _example(case: ErrorCase) -> dict[str, Any]:
    value = {"error": case.code, "detail": case.meaning}
    if case.reason is not None:
        value["reason"] = case.reason
    return {"value": value}


def _error_response(cases: list[ErrorCase]) -> dict[str, Any]:
    description = " ".join(f"`{case.code}`: {case.meaning}" for case in cases)
    examples = {case.code: _example(case) for case in cases}
    schema = _error_schema(cases)
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema, "examples": examples}},
    }
    if any(case.retry_after for case in cases):
        response["headers"] = RETRY_AFTER_HEADER
    return response


def error_responses(*cases: ErrorCase) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer these errors (and those any request can)."""
    by_status: dict[int, list[ErrorCase]] = {}
    for case in (*cases, *ANY_REQUEST_ERRORS):
        if case not in by_status.setdefault(case.status, []):
            by_status[case.status].append(case)
    return {status: _error_response(group) for status, group in sorted(by_status.items())}


def or_answer(
    responses: dict[int | str, dict[str, Any]], status: int, schema: dict[str, Any], meaning: str
) -> dict[int | str, dict[str, Any]]:
    """``responses`` where ``status`` is also an answer that is not an error (``schema``)."""
    response = responses[status]
    media = response["content"]["application/json"]
    media["schema"] = {"oneOf": [schema, media["schema"]]}
    response["description"] = f"{meaning} Or an error: {response['description']}"
    if "headers" in response:
        # Only the error answers carry Retry-After.
        response["headers"] = {
            name: {**header, "required": False} for name, header in response["headers"].items()
        }
    return responses


# --- request bodies -------------------------------------------------------------------------

_BODY_MODELS: dict[str, type[BaseModel]] = {}


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to ``model``'s (validation) schema, which ``build_openapi`` hoists into the
    components."""
    known = _BODY_MODELS.setdefault(model.__name__, model)
    assert known is model, f"two request models are named {model.__name__}"
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def request_body(schema: dict[str, Any], *, description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a JSON body of this schema itself."""
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def path_parameter(name: str, title: str) -> dict[str, Any]:
    """A string path parameter, as FastAPI documents one, for a route that reads it from the
    request itself (``openapi_extra``)."""
    parameter = {"name": name, "in": "path", "required": True}
    return {"parameters": [{**parameter, "schema": {"type": "string", "title": title}}]}


def operation(*parts: dict[str, Any]) -> dict[str, Any]:
    """Merge ``openapi_extra`` parts (``request_body``, ``security``)."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def _body_schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "validation") for _, model in sorted(_BODY_MODELS.items())
    ]
    _, document = models_json_schema(models, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = document.get("$defs", {})
    return schemas


# --- the document ---------------------------------------------------------------------------


def _add_schemas(schemas: dict[str, Any], added: dict[str, Any]) -> None:
    for name, schema in added.items():
        if schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are named {name!r}")


def _operations(document: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for op in item.values():
            yield path, op


def _is_fastapi_validation_error(response: dict[str, Any]) -> bool:
    stale = {REF_PREFIX + name for name in _FASTAPI_VALIDATION_SCHEMAS}
    media = response.get("content", {}).get("application/json", {})
    return media.get("schema", {}).get("$ref") in stale


def _can_fail_validation(parameter: dict[str, Any]) -> bool:
    """Whether FastAPI can refuse a value of this parameter (a plain string path one, never)."""
    schema = parameter.get("schema", {})
    if parameter["in"] != "path" and parameter.get("required"):
        return True
    return schema.get("type") != "string" or bool(set(schema) - {"type", "title", "description"})


def _use_error_body(op: dict[str, Any]) -> None:
    """The 422 FastAPI documents for a route that declares none: the bridge's, where a parameter
    can fail validation; gone where none can."""
    responses = op.get("responses", {})
    reachable = any(_can_fail_validation(p) for p in op.get("parameters", []))
    for status, response in list(responses.items()):
        if _is_fastapi_validation_error(response):
            if reachable:
                responses[status] = _error_response([INVALID_PARAMETER])
            else:
                del responses[status]
    op["responses"] = dict(sorted(responses.items()))


def _order_parameters(path: str, op: dict[str, Any]) -> None:
    """Path parameters in the order of the path (FastAPI lists them by dependency), so a
    generated client's arguments read like the URL."""

    def position(parameter: dict[str, Any]) -> int:
        if parameter["in"] != "path":
            return len(path)
        return path.index("{" + parameter["name"] + "}")

    if "parameters" in op:
        op["parameters"] = sorted(op["parameters"], key=position)


def _tidy_operations(document: dict[str, Any]) -> None:
    for path, op in _operations(document):
        _use_error_body(op)
        _order_parameters(path, op)
    schemas = document["components"]["schemas"]
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)


def _error_schemas() -> dict[str, Any]:
    """ErrorBody, with ``fields`` as answered: a list of ``{"loc", "message"}``."""
    error = ErrorBody.model_json_schema(mode="serialization", ref_template=REF_TEMPLATE)
    error["description"] = "Every error answer: a stable `error` code and a `detail` sentence."
    error["properties"]["fields"] = {
        "type": "array",
        "items": {"$ref": REF_TEMPLATE.format(model=FieldError.__name__)},
        "description": "Every invalid field (422 only).",
    }
    field_error = FieldError.model_json_schema(mode="serialization", ref_template=REF_TEMPLATE)
    return {ErrorBody.__name__: error, FieldError.__name__: field_error}


def operation_id(route: APIRoute) -> str:
    """The route function's name: what a generated client calls the method."""
    return route.name


def build_openapi(app: FastAPI, routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """FastAPI's document for ``app``'s ``routes``, completed (see the module docstring)."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=DESCRIPTION,
        routes=routes,
        tags=TAGS,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _add_schemas(schemas, _body_schemas())
    _add_schemas(schemas, _error_schemas())
    _tidy_operations(document)
    components["securitySchemes"] = SECURITY_SCHEMES
    components["schemas"] = dict(sorted(schemas.items()))
    return document
