"""The OpenAPI document is valid and complete enough to generate a client from, and the docs
pages work without internet.

Complete means: every POST that reads a body documents it (the routes read raw bytes, so FastAPI
cannot see them), every error answer is the bridge's ``ErrorBody`` (never FastAPI's default 422
shape), every operation that needs a credential names its security schemes, every answer is
typed, and ``/metrics`` is plain text. Real payloads (the event pipeline SDK's, the platforms'
fixtures) validate against the documented request bodies.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from autoplay_sdk.buffer import _payload_to_json
from autoplay_sdk.core.models import ActionsPayload, SlimAction, SummaryPayload
from fastapi import FastAPI
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from app.main import create_app
from app.settings import Settings
from tests.conftest import batch, make_product

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ADMIN_TOKEN = "openapi-admin-token-0123"
ERROR_BODY = "#/components/schemas/ErrorBody"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

INGEST = ["ingestToken", "connectorSignature", "standardWebhooks"]
WRITE = [*INGEST, "adminToken"]
ADMIN = ["adminToken"]
# Every operation and the security schemes that authorize it (any one of them); [] is public.
SECURITY: dict[tuple[str, str], list[str]] = {
    ("post", "/actions/{product_id}"): INGEST,
    ("head", "/chatbot-webhook/{product_id}"): [],
    ("post", "/chatbot-webhook/{product_id}"): [
        "intercomSignature",
        "zendeskSignature",
        "salesforceToken",
        "standardWebhooks",
    ],
    ("post", "/posthog/{product_id}"): ["standardWebhooks", "posthogHeader"],
    ("post", "/sessions/link"): WRITE,
    ("get", "/sessions/{product_id}/{session_id}"): ["ingestToken", "adminToken"],
    ("post", "/sessions/{product_id}/{session_id}/proactive"): WRITE,
    ("get", "/healthz"): [],
    ("get", "/readyz"): [],
    ("get", "/metrics"): [],
    ("get", "/debug/products"): ADMIN,
    ("get", "/debug/sessions/{product_id}/{session_id}"): ADMIN,
    ("get", "/debug/dead-letters/{product_id}"): ADMIN,
    ("get", "/debug/delivery/{product_id}"): ADMIN,
    ("post", "/debug/dead-letters/{product_id}/replay"): ADMIN,
}
# The schema of each operation's success answer.
SUCCESS: dict[tuple[str, str], tuple[str, str]] = {
    ("post", "/actions/{product_id}"): ("202", "IngestResponse"),
    ("post", "/chatbot-webhook/{product_id}"): ("200", "WebhookResponse"),
    ("post", "/posthog/{product_id}"): ("202", "PosthogResponse"),
    ("post", "/sessions/link"): ("200", "WebhookResponse"),
    ("get", "/sessions/{product_id}/{session_id}"): ("200", "SessionState"),
    ("post", "/sessions/{product_id}/{session_id}/proactive"): ("200", "SessionState"),
    ("get", "/healthz"): ("200", "Health"),
    ("get", "/readyz"): ("200", "Readiness"),
    ("get", "/debug/products"): ("200", "ProductList"),
    ("get", "/debug/sessions/{product_id}/{session_id}"): ("200", "SessionView"),
    ("get", "/debug/dead-letters/{product_id}"): ("200", "DeadLetterList"),
    ("get", "/debug/delivery/{product_id}"): ("200", "DeliveryView"),
    ("post", "/debug/dead-letters/{product_id}/replay"): ("200", "DeadLetterReplay"),
}
BODY = {"unsupported_media_type", "body_too_large", "shutting_down"}  # and request_timeout
STORE = {"store_unavailable", "store_error"}
# What any request can get: from the server before the app sees it, and a bug.
ANY_REQUEST = {"request_timeout", "headers_too_large", "overloaded", "internal_error"}
PRODUCT_READ = {"unknown_product", "unknown_session", "invalid_request"}
ADMIN_ONLY = {"not_found", "unauthorized"}
# Every error code each operation can answer, besides ANY_REQUEST.
ERRORS: dict[tuple[str, str], set[str]] = {
    ("post", "/actions/{product_id}"): {"unknown_product", "unauthorized", "invalid_payload"}
    | BODY
    | STORE,
    ("head", "/chatbot-webhook/{product_id}"): {"unknown_product"},
    ("post", "/chatbot-webhook/{product_id}"): {"unknown_product", "invalid_signature"}
    | {"invalid_webhook", "platform_unavailable"}
    | BODY
    | STORE,
    ("post", "/posthog/{product_id}"): {"unknown_product", "posthog_not_configured"}
    | {"unauthorized", "invalid_payload"}
    | BODY
    | STORE,
    ("post", "/sessions/link"): {"unknown_product", "unauthorized", "invalid_payload"}
    | BODY
    | STORE,
    ("get", "/sessions/{product_id}/{session_id}"): PRODUCT_READ | {"unauthorized"} | STORE,
    ("post", "/sessions/{product_id}/{session_id}/proactive"): PRODUCT_READ
    | {"unauthorized", "invalid_payload", "replayed_request", "proactive_not_allowed"}
    | BODY
    | STORE,
    ("get", "/healthz"): set(),
    ("get", "/readyz"): set(),
    ("get", "/metrics"): set(),
    ("get", "/debug/products"): ADMIN_ONLY,
    ("get", "/debug/sessions/{product_id}/{session_id}"): ADMIN_ONLY
    | PRODUCT_READ
    | {"store_unavailable"},
    ("get", "/debug/dead-letters/{product_id}"): ADMIN_ONLY
    | {"unknown_product", "invalid_request", "store_unavailable"},
    ("get", "/debug/delivery/{product_id}"): ADMIN_ONLY
    | {"unknown_product", "invalid_request", "store_unavailable"},
    ("post", "/debug/dead-letters/{product_id}/replay"): ADMIN_ONLY
    | {"unknown_product", "invalid_request"}
    | STORE,
}
# POSTs that read no body.
BODILESS_POSTS = {"/debug/dead-letters/{product_id}/replay"}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    products = {p.id: p for p in [make_product("acme")]}
    return create_app(Settings(admin_token=ADMIN_TOKEN), products=products, configure_logs=False)


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # The docs and the document need no services, so the app's lifespan is not started.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as client:
        yield client


def operations(document: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield (method, path), item[method]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema validator for ``schema``, whose ``#/components/...`` refs resolve."""
    return Draft202012Validator({**schema, "components": document["components"]})


def body_schema(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    body = document["paths"][path][method]["requestBody"]
    assert body["required"] is True
    assert list(body["content"]) == ["application/json"]
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


# --- the document -----------------------------------------------------------------------------


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


async def test_the_served_document_is_the_apps(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json() == json.loads(json.dumps(document))


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    prefix = "#/components/schemas/"
    for ref in set(refs(document)):
        assert ref.startswith(prefix), ref
        assert ref.removeprefix(prefix) in document["components"]["schemas"], ref


def test_every_operation_is_classified(document: dict[str, Any]) -> None:
    """A new operation fails here until its security and answers are decided."""
    assert {key for key, _ in operations(document)} == set(SECURITY)


def test_operation_ids_are_the_route_names(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, op in operations(document)]
    assert len(ids) == len(set(ids))
    assert document["paths"]["/actions/{product_id}"]["post"]["operationId"] == "ingest_actions"


def test_path_parameters_follow_the_path(document: dict[str, Any]) -> None:
    for (_, path), op in operations(document):
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        assert names == re.findall(r"{(\w+)}", path), path


# --- request bodies ---------------------------------------------------------------------------


def test_every_post_documents_its_body(document: dict[str, Any]) -> None:
    for (method, path), op in operations(document):
        if method != "post":
            continue
        if path in BODILESS_POSTS:
            assert "requestBody" not in op, path
        else:
            assert body_schema(document, method, path), path


def test_ingest_takes_a_payload_or_an_array_of_them(document: dict[str, Any]) -> None:
    schema = body_schema(document, "post", "/actions/{product_id}")
    one = [
        {"$ref": "#/components/schemas/ActionsPayload"},
        {"$ref": "#/components/schemas/SummaryPayload"},
    ]
    array = {"type": "array", "minItems": 1, "maxItems": 100, "items": {"oneOf": one}}
    assert schema == {"oneOf": [*one, array]}


def test_session_bodies_are_their_models(document: dict[str, Any]) -> None:
    link = body_schema(document, "post", "/sessions/link")
    assert link == {"$ref": "#/components/schemas/LinkRequest"}
    proactive = body_schema(document, "post", "/sessions/{product_id}/{session_id}/proactive")
    assert proactive == {"$ref": "#/components/schemas/ProactiveRequest"}


def test_a_webhook_body_is_one_platforms(document: dict[str, Any]) -> None:
    schema = body_schema(document, "post", "/chatbot-webhook/{product_id}")
    names = [ref.rsplit("/", 1)[-1] for ref in refs(schema)]
    assert names == [
        "IntercomNotification",
        "ZendeskTicketEvent",
        "ZendeskTrigger",
        "CaseEvent",
        "BotEvent",
    ]
    for name in names:
        assert document["components"]["schemas"][name]["description"], name


def _sdk_actions(**fields: Any) -> ActionsPayload:
    action = SlimAction(
        description="Clicked Export", timestamp_start=1_705_322_090.0, title="", canonical_url=""
    )
    values: dict[str, Any] = {"product_id": "", "user_id": None, "email": None, **fields}
    return ActionsPayload(session_id="s1", actions=[action], count=1, forwarded_at=0.0, **values)


def _sdk_summary() -> SummaryPayload:
    return SummaryPayload(
        session_id="s1", summary="Tried to export", product_id="", replaces=3, forwarded_at=0.0
    )


def test_what_the_pipeline_sends_matches_the_ingest_body(document: dict[str, Any]) -> None:
    check = validator(document, body_schema(document, "post", "/actions/{product_id}"))
    sdk = [_sdk_actions(), _sdk_summary()]
    bodies: list[Any] = [dataclasses.asdict(p) for p in sdk]
    bodies += [json.loads(_payload_to_json(p)) for p in sdk]
    bodies += [
        batch("s1", ("clicked A", 100.0)),
        [batch("s1", ("a", 1.0)), batch("s2", ("b", 2.0))],
    ]
    for body in bodies:
        check.validate(body)
    assert not check.is_valid([]), "an empty array is refused"
    assert not check.is_valid({"session_id": "s1"}), "a batch needs actions"


def test_the_platforms_fixtures_match_the_webhook_body(document: dict[str, Any]) -> None:
    check = validator(document, body_schema(document, "post", "/chatbot-webhook/{product_id}"))
    fixtures = [
        path
        for platform in ("intercom", "zendesk", "salesforce")
        for path in sorted((FIXTURES / platform).glob("*.json"))
    ]
    webhooks = [
        f
        for f in fixtures
        if f.stem.startswith(("conversation_", "event_", "trigger_", "ping", "webhook_"))
    ]
    assert len(webhooks) >= 8
    for fixture in webhooks:
        check.validate(json.loads(fixture.read_text()))
    check.validate({"event": "conversation.created", "conversation_id": "c1", "session_id": "s1"})


def test_posthog_takes_an_event_or_an_array_of_them(document: dict[str, Any]) -> None:
    check = validator(document, body_schema(document, "post", "/posthog/{product_id}"))
    fixtures = [json.loads(f.read_text()) for f in sorted((FIXTURES / "posthog").glob("*.json"))]
    assert len(fixtures) >= 2
    for fixture in fixtures:
        check.validate(fixture)
    check.validate(fixtures)
    assert not check.is_valid([])
    assert not check.is_valid(fixtures[:1] * 101)
    assert not check.is_valid({"person": {}})


# --- answers ----------------------------------------------------------------------------------


def _refers_to_error_body(schema: dict[str, Any]) -> bool:
    return schema.get("$ref") == ERROR_BODY or any(
        part.get("$ref") == ERROR_BODY for part in schema.get("allOf", [])
    )


def _error_codes(op: dict[str, Any]) -> set[str]:
    """The ``error`` of every documented error answer (each has an example)."""
    return {
        example["value"]["error"]
        for status, response in op["responses"].items()
        if int(status) >= 400
        for example in response["content"]["application/json"]["examples"].values()
    }


def test_every_error_an_operation_can_answer_is_documented(document: dict[str, Any]) -> None:
    for key, op in operations(document):
        assert _error_codes(op) == ERRORS[key] | ANY_REQUEST, key


def test_every_error_example_is_an_error_body(document: dict[str, Any]) -> None:
    for key, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            media = response["content"]["application/json"]
            check = validator(document, media["schema"])
            for example in media["examples"].values():
                check.validate(example["value"])
                assert example["value"]["error"] in response["description"], (key, status)


def test_every_error_answer_is_an_error_body(document: dict[str, Any]) -> None:
    for key, op in operations(document):
        errors = {status for status in op["responses"] if int(status) >= 400}
        for status in errors:
            content = op["responses"][status]["content"]
            assert list(content) == ["application/json"], (key, status)
            schema = content["application/json"]["schema"]
            if key == ("get", "/readyz") and status == "503":
                # Not ready is the probe's own body, with the failing check, not an error.
                readiness = {"$ref": "#/components/schemas/Readiness"}
                assert schema == {"oneOf": [readiness, {"$ref": ERROR_BODY}]}
                continue
            assert _refers_to_error_body(schema), (key, status, schema)


def test_every_503_error_says_when_to_retry(document: dict[str, Any]) -> None:
    for key, op in operations(document):
        header = op["responses"]["503"]["headers"]["Retry-After"]
        # A not-ready /readyz is a 503 without it.
        assert header["required"] is (key != ("get", "/readyz")), key
        assert header["schema"]["type"] == "integer", key


def test_the_error_body_is_the_bridges(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert "HTTPValidationError" not in json.dumps(document)
    error = schemas["ErrorBody"]
    assert error["required"] == ["error", "detail"]
    assert error["properties"]["fields"]["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert schemas["FieldError"]["required"] == ["loc", "message"]


def test_a_409_carries_its_reason(document: dict[str, Any]) -> None:
    path = "/sessions/{product_id}/{session_id}/proactive"
    media = document["paths"][path]["post"]["responses"]["409"]["content"]["application/json"]
    check = validator(document, media["schema"])
    for example in media["examples"].values():
        check.validate(example["value"])
    assert not check.is_valid({"error": "proactive_not_allowed", "detail": "no"})


def test_every_success_answer_is_typed(document: dict[str, Any]) -> None:
    for key, (status, model) in SUCCESS.items():
        method, path = key
        response = document["paths"][path][method]["responses"][status]
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}, key


def test_metrics_are_plain_text(document: dict[str, Any]) -> None:
    response = document["paths"]["/metrics"]["get"]["responses"]["200"]
    assert response["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert "Prometheus" in response["description"]


def test_the_webhook_probe_answers_no_body(document: dict[str, Any]) -> None:
    response = document["paths"]["/chatbot-webhook/{product_id}"]["head"]["responses"]["200"]
    assert "content" not in response


# --- security ---------------------------------------------------------------------------------


def test_the_security_schemes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    for name in ("ingestToken", "adminToken"):
        assert schemes[name]["type"] == "http"
        assert schemes[name]["scheme"] == "bearer"
    headers = {
        "connectorSignature": "X-Connector-Signature",
        "standardWebhooks": "webhook-signature",
        "intercomSignature": "X-Hub-Signature",
        "zendeskSignature": "X-Zendesk-Webhook-Signature",
        "salesforceToken": "X-Bridge-Token",
        "posthogHeader": "X-PostHog-Secret",
    }
    for name, header in headers.items():
        assert schemes[name] | {"description": ""} == {
            "type": "apiKey",
            "in": "header",
            "name": header,
            "description": "",
        }
    described = schemes["standardWebhooks"]["description"]
    assert "webhook-id" in described
    assert "webhook-timestamp" in described
    assert "X-Zendesk-Webhook-Signature-Timestamp" in schemes["zendeskSignature"]["description"]


def test_every_operation_names_who_may_call_it(document: dict[str, Any]) -> None:
    for key, op in operations(document):
        alternatives = op.get("security", [])
        assert all(len(requirement) == 1 for requirement in alternatives), key
        assert [next(iter(requirement)) for requirement in alternatives] == SECURITY[key], key
        if alternatives:
            assert "401" in op["responses"], key


# --- the docs pages ---------------------------------------------------------------------------


class _Assets(HTMLParser):
    """Every URL a page loads: script sources, stylesheets and icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        url = {"script": attributes.get("src"), "link": attributes.get("href")}.get(tag)
        if tag == "img":
            url = attributes.get("src")
        if url:
            self.urls.append(url)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_only_local_assets(client: httpx.AsyncClient, page: str) -> None:
    r = await client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(r.text)
    assert any(url.endswith(".js") for url in parser.urls), parser.urls
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    assert "/openapi.json" in r.text
    assert "fonts.googleapis" not in r.text
    assert "cdn.jsdelivr" not in r.text


async def test_swagger_ui_has_no_online_validator(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert '"validatorUrl": null' in r.text


async def test_the_oauth2_redirect_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs/oauth2-redirect")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
