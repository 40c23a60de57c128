"""Who may write for a product, and which request a replay repeats. Pure functions over headers
and the raw body."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from app.products import ProductConfig
from app.security import SignatureError, equals, verify_prefixed_hex, verify_standard_webhook

CredentialKind = Literal["token", "signature", "webhook", "admin", "open"]
MAX_TOKEN_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Credential:
    """How a request proved who sent it; ``webhook_id`` for Standard Webhooks."""

    kind: CredentialKind
    webhook_id: str | None = None

    def replay_fields(self, product_id: str, body: bytes, count: int = 1) -> list[bytes]:
        """The store's records of a request's ``count`` payloads, for replay protection.

        A request is identified by its Standard Webhooks id (unique per message, and signed),
        otherwise by the same body under the same kind of credential; each payload of it gets
        its own record (a request may hold several)."""
        digest = hashlib.blake2b(digest_size=16, person=b"cb-request")
        digest.update(f"{product_id}\x1f{self.kind}\x1f".encode())
        digest.update(self.webhook_id.encode() if self.webhook_id is not None else body)
        request_key = digest.digest()
        return [
            hashlib.blake2b(request_key + i.to_bytes(4, "big"), digest_size=12).digest()
            for i in range(count)
        ]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


def _bearer_is(headers: Mapping[str, str], expected: str | None) -> bool:
    """The request carries ``Authorization: Bearer <expected>`` (never true when unset)."""
    token = bearer_token(headers)
    return bool(expected and token and equals(token, expected))


def is_admin(headers: Mapping[str, str], admin_token: str | None) -> bool:
    return _bearer_is(headers, admin_token)


def _signed_credential(
    product: ProductConfig, headers: Mapping[str, str], body: bytes, now: float
) -> Credential | None:
    if product.ingest_webhook_key is not None and "webhook-signature" in headers:
        try:
            msg_id = verify_standard_webhook(
                headers, key=product.ingest_webhook_key, body=body, now=now
            )
        except SignatureError:
            return None
        return Credential("webhook", msg_id)
    signature = headers.get("x-connector-signature")
    if product.ingest_secret and signature:
        try:
            verify_prefixed_hex(signature, secret=product.ingest_secret, body=body)
        except SignatureError:
            return None
        return Credential("signature")
    return None


def ingest_credential(
    product: ProductConfig, headers: Mapping[str, str], body: bytes, *, now: float
) -> Credential | None:
    """The product's ingest credential the request carries: a bearer token, an
    ``X-Connector-Signature`` or Standard Webhooks signature over the body; None otherwise."""
    if _bearer_is(headers, product.ingest_token):
        return Credential("token")
    credential = _signed_credential(product, headers, body, now)
    if credential is None and product.allow_unauthenticated:
        return Credential("open")
    return credential


def read_allowed(
    product: ProductConfig, headers: Mapping[str, str], admin_token: str | None
) -> bool:
    """Reads need a bearer token (the ingest token or the admin token): a body signature is
    not a standing credential (the signature of an empty body never changes)."""
    return (
        product.allow_unauthenticated
        or _bearer_is(headers, admin_token)
        or _bearer_is(headers, product.ingest_token)
    )
