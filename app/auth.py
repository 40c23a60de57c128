"""Who may write for a product. Pure functions over headers and the raw body."""

from __future__ import annotations

from collections.abc import Mapping

from app.products import ProductConfig
from app.security import SignatureError, equals, verify_prefixed_hex


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def is_admin(headers: Mapping[str, str], admin_token: str | None) -> bool:
    token = bearer_token(headers)
    return bool(admin_token and token and equals(token, admin_token))


def ingest_allowed(product: ProductConfig, headers: Mapping[str, str], body: bytes) -> bool:
    """A valid ingest bearer token or ``X-Connector-Signature`` for this product."""
    if product.allow_unauthenticated:
        return True
    token = bearer_token(headers)
    if product.ingest_token and token and equals(token, product.ingest_token):
        return True
    signature = headers.get("x-connector-signature")
    if product.ingest_secret and signature:
        try:
            verify_prefixed_hex(signature, secret=product.ingest_secret, body=body)
        except SignatureError:
            return False
        return True
    return False
