"""Signature schemes and constant-time checks. Pure functions: no I/O, no FastAPI."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

WHSEC_PREFIX = "whsec_"
STANDARD_WEBHOOK_TOLERANCE_S = 300.0
# Bounds on what a signature check reads from headers, checked before anything is parsed:
# an id, a Unix time in seconds, and a list of signatures (several during a secret rotation).
MAX_WEBHOOK_ID_CHARS = 256
MAX_TIMESTAMP_DIGITS = 12
MAX_SIGNATURE_HEADER_CHARS = 4096


class SignatureError(Exception):
    """A request's signature is missing, malformed, stale or wrong."""


def equals(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time comparison of two tokens or digests."""
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def hmac_hex(secret: str | bytes, body: bytes, digest: str = "sha256") -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, digest).hexdigest()


def verify_prefixed_hex(
    header: str | None, *, secret: str, body: bytes, algorithm: str = "sha256"
) -> None:
    """Check a ``<algorithm>=<hex hmac>`` header such as ``X-Connector-Signature``."""
    if not header:
        raise SignatureError("signature header is missing")
    if len(header) > MAX_SIGNATURE_HEADER_CHARS:
        raise SignatureError("signature header is too long")
    scheme, _, received = header.strip().partition("=")
    if scheme != algorithm or not received:
        raise SignatureError(f"signature must have the form {algorithm}=<hex>")
    if not equals(received.lower(), hmac_hex(secret, body, algorithm)):
        raise SignatureError("signature does not match the body")


def decode_whsec(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret ``whsec_<base64 of 24-64 bytes>``."""
    if not secret.startswith(WHSEC_PREFIX):
        raise ValueError("must start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(WHSEC_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("the part after 'whsec_' must be base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError("must encode 24 to 64 bytes")
    return key


def standard_webhook_signature(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of Standard Webhooks over ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_webhook_headers(
    key: bytes, *, msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_webhook_signature(
            key, msg_id=msg_id, timestamp=timestamp, body=body
        ),
    }


def _unix_seconds(raw: str) -> int:
    # Bounded before int(): a 309-digit value would overflow the float arithmetic that follows.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_TIMESTAMP_DIGITS):
        raise SignatureError("webhook-timestamp must be Unix seconds")
    return int(raw)


def verify_standard_webhook(
    headers: Mapping[str, str],
    *,
    key: bytes,
    body: bytes,
    now: float,
    tolerance_s: float = STANDARD_WEBHOOK_TOLERANCE_S,
) -> str:
    """Verify Standard Webhooks headers; returns the ``webhook-id``.

    The signature header may hold several space-separated signatures (secret rotation):
    one match is enough.
    """
    msg_id = headers.get("webhook-id")
    raw_ts = headers.get("webhook-timestamp")
    raw_sigs = headers.get("webhook-signature")
    if not msg_id or not raw_ts or not raw_sigs:
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature are required")
    if len(msg_id) > MAX_WEBHOOK_ID_CHARS:
        raise SignatureError(f"webhook-id must be at most {MAX_WEBHOOK_ID_CHARS} characters")
    if len(raw_sigs) > MAX_SIGNATURE_HEADER_CHARS:
        raise SignatureError("webhook-signature is too long")
    timestamp = _unix_seconds(raw_ts)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError("webhook-timestamp is outside the 5 minute tolerance")
    expected = standard_webhook_signature(key, msg_id=msg_id, timestamp=timestamp, body=body)
    for candidate in raw_sigs.split():
        if candidate.startswith("v1,") and equals(candidate, expected):
            return msg_id
    raise SignatureError("no webhook-signature matches the body")
