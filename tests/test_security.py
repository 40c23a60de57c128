import base64
import hashlib
import hmac

import pytest

from app.security import (
    SignatureError,
    decode_whsec,
    hmac_hex,
    standard_webhook_headers,
    standard_webhook_signature,
    verify_prefixed_hex,
    verify_standard_webhook,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
NOW = 1_700_000_000.0
BODY = b'{"event":"conversation.created","conversation_id":"c1"}'


def signed(body: bytes = BODY, *, key: bytes = KEY, timestamp: int = int(NOW)) -> dict[str, str]:
    return standard_webhook_headers(key, msg_id="msg_1", timestamp=timestamp, body=body)


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


# --- Standard Webhooks: signing ---


def test_signature_matches_the_published_standard_webhooks_example() -> None:
    key = decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = standard_webhook_signature(
        key,
        msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
        body=b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_covers_id_dot_timestamp_dot_body() -> None:
    digest = hmac.new(KEY, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    assert signed()["webhook-signature"] == expected


def test_headers_carry_the_id_and_timestamp_that_were_signed() -> None:
    headers = signed()
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"


# --- Standard Webhooks: verification ---


def test_verify_accepts_a_valid_signature_and_returns_the_webhook_id() -> None:
    assert verify_standard_webhook(signed(), key=KEY, body=BODY, now=NOW) == "msg_1"


def test_verify_rejects_a_tampered_body() -> None:
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify_standard_webhook(signed(), key=KEY, body=BODY + b" ", now=NOW)


def test_verify_rejects_a_signature_made_with_another_secret() -> None:
    with pytest.raises(SignatureError):
        verify_standard_webhook(signed(key=OTHER_KEY), key=KEY, body=BODY, now=NOW)


def test_verify_rejects_a_changed_webhook_id() -> None:
    headers = {**signed(), "webhook-id": "msg_2"}
    with pytest.raises(SignatureError):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


def test_verify_rejects_a_changed_timestamp_within_the_tolerance() -> None:
    headers = {**signed(), "webhook-timestamp": str(int(NOW) + 1)}
    with pytest.raises(SignatureError):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_a_missing_header(missing: str) -> None:
    headers = {name: value for name, value in signed().items() if name != missing}
    with pytest.raises(SignatureError, match="required"):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


@pytest.mark.parametrize("empty", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_an_empty_header(empty: str) -> None:
    headers = {**signed(), empty: ""}
    with pytest.raises(SignatureError, match="required"):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


@pytest.mark.parametrize("timestamp", ["soon", "1700000000.5", "0x10"])
def test_verify_rejects_a_timestamp_that_is_not_unix_seconds(timestamp: str) -> None:
    headers = {**signed(), "webhook-timestamp": timestamp}
    with pytest.raises(SignatureError, match="Unix seconds"):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


@pytest.mark.parametrize("offset_s", [-301, 301])
def test_verify_rejects_timestamps_more_than_five_minutes_away(offset_s: int) -> None:
    headers = signed(timestamp=int(NOW) + offset_s)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


@pytest.mark.parametrize("offset_s", [-300, 300])
def test_verify_accepts_timestamps_exactly_five_minutes_away(offset_s: int) -> None:
    headers = signed(timestamp=int(NOW) + offset_s)
    assert verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW) == "msg_1"


def test_verify_accepts_when_the_second_of_several_signatures_matches() -> None:
    stale = signed(key=OTHER_KEY)["webhook-signature"]
    current = signed()["webhook-signature"]
    headers = {**signed(), "webhook-signature": f"{stale} {current}"}
    assert verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW) == "msg_1"


def test_verify_rejects_when_none_of_several_signatures_matches() -> None:
    first = signed(key=OTHER_KEY)["webhook-signature"]
    second = signed(key=bytes(32))["webhook-signature"]
    headers = {**signed(), "webhook-signature": f"{first} {second}"}
    with pytest.raises(SignatureError):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


def test_verify_rejects_a_correct_digest_under_a_v2_prefix() -> None:
    digest = signed()["webhook-signature"].removeprefix("v1,")
    headers = {**signed(), "webhook-signature": f"v2,{digest}"}
    with pytest.raises(SignatureError):
        verify_standard_webhook(headers, key=KEY, body=BODY, now=NOW)


# --- whsec_ secrets ---


@pytest.mark.parametrize("size", [24, 32, 64])
def test_decode_whsec_returns_the_key_bytes(size: int) -> None:
    key = bytes(range(size))
    assert decode_whsec(whsec(key)) == key


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (base64.b64encode(KEY).decode(), "whsec_"),
        ("whsec_not*base64!", "base64"),
        (whsec(bytes(23)), "24 to 64"),
        (whsec(bytes(65)), "24 to 64"),
    ],
)
def test_decode_whsec_rejects_malformed_secrets(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_whsec(secret)


# --- prefixed hex HMAC (X-Connector-Signature) ---


def test_prefixed_hex_accepts_the_hmac_of_the_body() -> None:
    verify_prefixed_hex(f"sha256={hmac_hex('s3cret', BODY)}", secret="s3cret", body=BODY)


def test_prefixed_hex_accepts_an_upper_case_digest() -> None:
    header = f"sha256={hmac_hex('s3cret', BODY).upper()}"
    verify_prefixed_hex(header, secret="s3cret", body=BODY)


@pytest.mark.parametrize(
    "header",
    [None, "", "sha1=" + hmac_hex("s3cret", BODY, "sha1"), "sha256=", hmac_hex("s3cret", BODY)],
)
def test_prefixed_hex_rejects_missing_or_malformed_headers(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_prefixed_hex(header, secret="s3cret", body=BODY)


def test_prefixed_hex_rejects_a_tampered_body() -> None:
    header = f"sha256={hmac_hex('s3cret', BODY)}"
    with pytest.raises(SignatureError, match="does not match"):
        verify_prefixed_hex(header, secret="s3cret", body=BODY + b"x")
