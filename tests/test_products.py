"""The products file: interpolation, strict validation, masking."""

from __future__ import annotations

import base64
import json
import re
import tomllib
from pathlib import Path

import pytest

from app.products import (
    ProductConfig,
    ProductsFileError,
    load_products,
    masked_view,
    parse_products,
)

EXAMPLE_FILE = Path(__file__).resolve().parents[1] / "config" / "products.example.toml"


def whsec(n_bytes: int, fill: bytes = b"k") -> str:
    return "whsec_" + base64.b64encode(fill * n_bytes).decode()


REFERENCE_ENV = {
    "ACME_INGEST_TOKEN": "acme-ingest-token-0123456789",
    "ACME_INGEST_SECRET": "acme-ingest-secret-0123456789",
    "ACME_INTERCOM_TOKEN": "acme-intercom-token-0123456789",
    "ACME_INTERCOM_CLIENT_SECRET": "acme-client-secret-0123456789",
    "GLOBEX_ZENDESK_TOKEN": "globex-zendesk-token-0123456789",
    "GLOBEX_ZENDESK_WEBHOOK_SECRET": "globex-webhook-secret-0123456789",
    "INITECH_SIGNING_SECRET": whsec(32, b"s"),
    "INITECH_WEBHOOK_SECRET": whsec(32, b"w"),
}

# The reference example, plus the ingest credentials globex and initech need to be valid.
REFERENCE_EXAMPLE = """
[products.acme]                      # product id: 1-64 chars of [A-Za-z0-9_-]
platform = "intercom"                # intercom | zendesk | http | console
ingest_token = "${ACME_INGEST_TOKEN}"    # Authorization: Bearer <token> on /actions
ingest_secret = "${ACME_INGEST_SECRET}"  # X-Connector-Signature: sha256=<hex HMAC>
pre_link_window_s = 120.0
post_link_debounce_s = 0.15
post_link_max_wait_s = 5.0           # a note goes out at least this often during a burst
bin_seconds = 3                      # pre-link flush binning; 0 disables
max_pending_actions = 1000           # pre-link buffer cap per session (newest kept)
session_attribute = "posthog_session_id"  # conversation attribute that carries the session id

[products.acme.intercom]
access_token = "${ACME_INTERCOM_TOKEN}"
admin_id = "123456"
client_secret = "${ACME_INTERCOM_CLIENT_SECRET}"   # verifies webhooks
api_base = "https://api.intercom.io"  # or api.eu.intercom.io / api.au.intercom.io
api_version = "2.14"
body_format = "html"                  # html | text

[products.globex]
platform = "zendesk"
ingest_token = "${ACME_INGEST_TOKEN}"
[products.globex.zendesk]
subdomain = "globex"                  # api_base defaults to https://<subdomain>.zendesk.com
email = "bot@globex.example"          # with api_token: basic auth "<email>/token:<api_token>"
api_token = "${GLOBEX_ZENDESK_TOKEN}"
webhook_secret = "${GLOBEX_ZENDESK_WEBHOOK_SECRET}"
api_base = "https://globex.zendesk.com"

[products.initech]
platform = "http"
ingest_secret = "${ACME_INGEST_SECRET}"
[products.initech.http]
url = "https://bot.initech.example/notes"    # where notes are POSTed
redact_url = "https://bot.initech.example/notes/redact"   # optional
signing_secret = "${INITECH_SIGNING_SECRET}"  # whsec_<base64>: Standard Webhooks signature
webhook_secret = "${INITECH_WEBHOOK_SECRET}"  # verifies inbound /chatbot-webhook calls

[products.demo]
platform = "console"                  # notes are written to the log: for demos and dry runs
allow_unauthenticated = true          # only allowed with platform = "console"
"""

INTERCOM_SECTION = """
[products.acme.intercom]
access_token = "tok-0123456789abcdef"
admin_id = "1"
client_secret = "cs-0123456789abcdef"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "products.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> dict[str, ProductConfig]:
    return load_products(write(tmp_path, text), env=env or {})


def intercom_product(extra: str = "", section: str = INTERCOM_SECTION) -> str:
    head = '[products.acme]\nplatform = "intercom"\ningest_token = "it-0123456789abcdef"\n'
    return f"{head}{extra}\n{section}"


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ProductsFileError) as info:
        load(tmp_path, text, env)
    return str(info.value)


# --- the reference example and the example file ---------------------------------------------


def test_spec_example_loads(tmp_path: Path) -> None:
    products = load(tmp_path, REFERENCE_EXAMPLE, REFERENCE_ENV)

    assert list(products) == ["acme", "globex", "initech", "demo"]
    acme = products["acme"]
    assert acme.id == "acme"
    assert acme.platform == "intercom"
    assert acme.ingest_token == REFERENCE_ENV["ACME_INGEST_TOKEN"]
    assert acme.ingest_secret == REFERENCE_ENV["ACME_INGEST_SECRET"]
    assert (acme.pre_link_window_s, acme.post_link_debounce_s) == (120.0, 0.15)
    assert (acme.post_link_max_wait_s, acme.bin_seconds, acme.max_pending_actions) == (5.0, 3, 1000)
    assert acme.settings is not None
    assert acme.settings.access_token == REFERENCE_ENV["ACME_INTERCOM_TOKEN"]
    assert acme.settings.admin_id == "123456"
    assert acme.webhook_secret == REFERENCE_ENV["ACME_INTERCOM_CLIENT_SECRET"]
    globex = products["globex"]
    assert globex.settings is not None
    assert globex.settings.base_url == "https://globex.zendesk.com"
    assert globex.webhook_secret == REFERENCE_ENV["GLOBEX_ZENDESK_WEBHOOK_SECRET"]
    initech = products["initech"]
    assert initech.settings is not None
    assert initech.settings.redact_url == "https://bot.initech.example/notes/redact"
    assert initech.settings.signing_secret == REFERENCE_ENV["INITECH_SIGNING_SECRET"]
    demo = products["demo"]
    assert demo.platform == "console"
    assert demo.allow_unauthenticated is True
    assert demo.ingest_token is None
    assert demo.webhook_secret is None


def test_example_file_loads_with_an_empty_environment() -> None:
    products = load_products(EXAMPLE_FILE, env={})

    assert list(products) == ["demo"]
    demo = products["demo"]
    assert demo.platform == "console"
    assert demo.allow_unauthenticated is True
    assert demo.pre_link_window_s == 120
    assert demo.post_link_debounce_s == 2.0
    assert demo.post_link_max_wait_s == 10
    assert demo.bin_seconds == 3


def test_example_file_commented_products_are_valid_once_uncommented(tmp_path: Path) -> None:
    # Uncomment table headers and `key = value` lines; leave prose and "# # alternatives" alone.
    source = EXAMPLE_FILE.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^# (?=\[|[a-z_]+ += )", "", source)
    names = set(re.findall(r'"\$\{([A-Z0-9_]+)\}"', uncommented))
    env = {
        name: whsec(32) if "INITECH" in name or "WHSEC" in name else f"{name.lower()}-value"
        for name in names
    }

    products = load(tmp_path, uncommented, env)

    assert {p.platform for p in products.values()} == {"console", "intercom", "zendesk", "http"}
    assert len(products) == 4


# --- ${NAME} interpolation ------------------------------------------------------------------------


def test_missing_environment_variable_names_the_variable_and_product(tmp_path: Path) -> None:
    env = {k: v for k, v in REFERENCE_ENV.items() if k != "INITECH_WEBHOOK_SECRET"}

    message = error_of(tmp_path, REFERENCE_EXAMPLE, env)

    assert "INITECH_WEBHOOK_SECRET" in message
    assert "initech" in message
    assert "products.initech.http.webhook_secret" in message


def test_interpolation_reaches_any_key_and_section(tmp_path: Path) -> None:
    text = intercom_product(
        extra='pre_link_window_s = "${WINDOW}"',
        section='[products.acme.intercom]\naccess_token = "t-0123456789abcdef"\n'
        'admin_id = "${ADMIN}"\n'
        'client_secret = "${SECRET}"\n',
    )

    env = {"WINDOW": "30.5", "ADMIN": "42", "SECRET": "from-env-0123456789"}
    acme = load(tmp_path, text, env)["acme"]

    assert acme.pre_link_window_s == 30.5
    assert acme.settings is not None
    assert acme.settings.admin_id == "42"
    assert acme.settings.client_secret == "from-env-0123456789"


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ('"a${X}"', "a${X}"),
        ('"${X}b"', "${X}b"),
        ('"$X"', "$X"),
        ('"${X"', "${X"),
        ('"${ X }"', "${ X }"),
        ('"${X}\\n"', "${X}\n"),
        ('"${X}${X}"', "${X}${X}"),
    ],
)
def test_only_exact_references_are_interpolated(
    tmp_path: Path, literal: str, expected: str
) -> None:
    section = (
        f'[products.acme.intercom]\naccess_token = "t-0123456789abcdef"\nadmin_id = {literal}\n'
        'client_secret = "c-0123456789abcdef"\n'
    )

    acme = load(tmp_path, intercom_product(section=section), {"X": "replaced"})["acme"]

    assert acme.settings is not None
    assert acme.settings.admin_id == expected


def test_default_environment_is_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_TEST_INGEST", "from-process-env-0123")
    text = intercom_product().replace('"it-0123456789abcdef"', '"${BRIDGE_TEST_INGEST}"')

    assert load_products(write(tmp_path, text))["acme"].ingest_token == "from-process-env-0123"


# --- unknown keys and ids -------------------------------------------------------------------------


def test_unknown_product_key_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, intercom_product(extra="pre_link_windw_s = 30"))

    assert "products.acme.pre_link_windw_s" in message


def test_unknown_platform_key_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, intercom_product(section=INTERCOM_SECTION + 'acces_token = "x"\n'))

    assert "products.acme.intercom.acces_token" in message


def test_id_key_cannot_override_the_table_name(tmp_path: Path) -> None:
    message = error_of(tmp_path, intercom_product(extra='id = "other"'))

    assert "products.acme.id" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[product.acme]\nplatform = 'console'\n")

    assert "product: unknown top-level key" in message


def test_file_without_products_is_an_error(tmp_path: Path) -> None:
    assert "no [products.<id>]" in error_of(tmp_path, "# nothing here\n")


@pytest.mark.parametrize("product_id", ["has space", "dot.ted", "a" * 65, "", "a\n", "ünï"])
def test_bad_product_id(tmp_path: Path, product_id: str) -> None:
    key = json.dumps(product_id)  # a valid quoted TOML key
    text = f'[products.{key}]\nplatform = "console"\nallow_unauthenticated = true\n'

    message = error_of(tmp_path, text)

    assert "product id" in message
    assert repr(product_id) in message


@pytest.mark.parametrize("product_id", ["a", "A-z_09", "x" * 64])
def test_good_product_id(tmp_path: Path, product_id: str) -> None:
    text = f'[products."{product_id}"]\nplatform = "console"\nallow_unauthenticated = true\n'

    assert list(load(tmp_path, text)) == [product_id]


def test_unknown_platform(tmp_path: Path) -> None:
    text = '[products.acme]\nplatform = "slack"\nallow_unauthenticated = true\n'

    assert "products.acme.platform" in error_of(tmp_path, text)


# --- platform sections and credentials ------------------------------------------------------------


def test_platform_section_must_match_the_platform(tmp_path: Path) -> None:
    section = INTERCOM_SECTION + (
        '[products.acme.zendesk]\nsubdomain = "x"\noauth_token = "o-0123456789abcdef"\n'
        'webhook_secret = "w-0123456789abcdef"\n'
    )
    text = intercom_product(section=section).replace('"intercom"', '"zendesk"', 1)

    message = error_of(tmp_path, text)

    assert "products.acme" in message
    assert "[intercom] section but platform is 'zendesk'" in message


def test_missing_ingest_credentials(tmp_path: Path) -> None:
    text = intercom_product().replace('ingest_token = "it-0123456789abcdef"\n', "")

    message = error_of(tmp_path, text)

    assert "products.acme" in message
    assert "ingest_token, ingest_secret or ingest_webhook_secret" in message


@pytest.mark.parametrize(
    "credential", ['ingest_token = "t-0123456789abcdef"', 'ingest_secret = "s-0123456789abcdef"']
)
def test_either_ingest_credential_is_enough(tmp_path: Path, credential: str) -> None:
    text = intercom_product().replace('ingest_token = "it-0123456789abcdef"', credential)

    assert load(tmp_path, text)["acme"].platform == "intercom"


def test_missing_platform_section_means_no_webhook_secret(tmp_path: Path) -> None:
    message = error_of(tmp_path, intercom_product(section=""))

    assert "products.acme" in message
    assert "webhook secret" in message


@pytest.mark.parametrize(
    ("platform", "section", "missing_key"),
    [
        (
            "intercom",
            'access_token = "t-0123456789abcdef"\nadmin_id = "1"',
            "intercom.client_secret",
        ),
        (
            "zendesk",
            'subdomain = "g"\nemail = "e@x"\napi_token = "t-0123456789abcdef"',
            "zendesk.webhook_secret",
        ),
        ("http", f'url = "https://x"\nsigning_secret = "{whsec(32)}"', "http.webhook_secret"),
    ],
)
def test_missing_webhook_secret(
    tmp_path: Path, platform: str, section: str, missing_key: str
) -> None:
    text = (
        f'[products.p1]\nplatform = "{platform}"\ningest_token = "t-0123456789abcdef"\n'
        f"[products.p1.{platform}]\n{section}\n"
    )

    assert f"products.p1.{missing_key}" in error_of(tmp_path, text)


def test_authenticated_console_needs_a_webhook_secret(tmp_path: Path) -> None:
    text = '[products.c]\nplatform = "console"\ningest_token = "t-0123456789abcdef"\n'

    assert "webhook secret" in error_of(tmp_path, text)
    with_secret = text + f'[products.c.console]\nwebhook_secret = "{whsec(24)}"\n'
    assert load(tmp_path, with_secret)["c"].webhook_secret == whsec(24)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('ingest_token = "it-0123456789abcdef"', 'ingest_token = ""', "products.acme.ingest_token"),
        (
            'ingest_token = "it-0123456789abcdef"',
            'ingest_token = "   "',
            "products.acme.ingest_token",
        ),
        (
            'ingest_token = "it-0123456789abcdef"',
            'ingest_secret = ""',
            "products.acme.ingest_secret",
        ),
        (
            'access_token = "tok-0123456789abcdef"',
            'access_token = ""',
            "products.acme.intercom.access_token",
        ),
        (
            'client_secret = "cs-0123456789abcdef"',
            'client_secret = ""',
            "products.acme.intercom.client_secret",
        ),
        (
            'client_secret = "cs-0123456789abcdef"',
            'client_secret = "${EMPTY}"',
            "products.acme.intercom.client_secret",
        ),
    ],
)
def test_empty_secrets_are_rejected(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = intercom_product().replace(old, new)

    message = error_of(tmp_path, text, {"EMPTY": ""})

    assert key in message
    assert "must not be empty" in message


@pytest.mark.parametrize("key", ["webhook_secret", "api_token"])
def test_empty_zendesk_secrets_are_rejected(tmp_path: Path, key: str) -> None:
    values = {
        "subdomain": "g",
        "email": "e@x",
        "api_token": "t-0123456789abcdef",
        "webhook_secret": "w-0123456789abcdef",
    }
    values[key] = ""
    section = "\n".join(f'{k} = "{v}"' for k, v in values.items())
    head = '[products.g]\nplatform = "zendesk"\ningest_token = "t-0123456789abcdef"\n'
    text = f"{head}[products.g.zendesk]\n{section}\n"

    assert f"products.g.zendesk.{key}" in error_of(tmp_path, text)


def test_allow_unauthenticated_only_with_console(tmp_path: Path) -> None:
    message = error_of(tmp_path, intercom_product(extra="allow_unauthenticated = true"))

    assert "products.acme" in message
    assert "allow_unauthenticated" in message


def test_unauthenticated_console_needs_no_credentials(tmp_path: Path) -> None:
    text = '[products.demo]\nplatform = "console"\nallow_unauthenticated = true\n'

    demo = load(tmp_path, text)["demo"]

    assert demo.ingest_token is None
    assert demo.ingest_secret is None


# --- timings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("pre_link_window_s = 0", "pre_link_window_s"),
        ("pre_link_window_s = -1", "pre_link_window_s"),
        ("pre_link_window_s = inf", "pre_link_window_s"),
        ("post_link_debounce_s = -0.1", "post_link_debounce_s"),
        ("post_link_debounce_s = nan", "post_link_debounce_s"),
        ("post_link_max_wait_s = -1", "post_link_max_wait_s"),
        ("post_link_max_wait_s = inf", "post_link_max_wait_s"),
        ("bin_seconds = -3", "bin_seconds"),
        ("max_pending_actions = 0", "max_pending_actions"),
        ('pre_link_window_s = "soon"', "pre_link_window_s"),
    ],
)
def test_bad_timings_are_named(tmp_path: Path, setting: str, key: str) -> None:
    assert f"products.acme.{key}" in error_of(tmp_path, intercom_product(extra=setting))


def test_max_wait_must_not_be_shorter_than_debounce(tmp_path: Path) -> None:
    text = intercom_product(extra="post_link_debounce_s = 2.0\npost_link_max_wait_s = 1.5")

    message = error_of(tmp_path, text)

    assert "products.acme" in message
    assert "post_link_max_wait_s must be >= post_link_debounce_s" in message


def test_boundary_timings_are_accepted(tmp_path: Path) -> None:
    extra = (
        "pre_link_window_s = 0.001\npost_link_debounce_s = 0\n"
        "post_link_max_wait_s = 0\nbin_seconds = 0\nmax_pending_actions = 1"
    )

    acme = load(tmp_path, intercom_product(extra=extra))["acme"]

    assert (acme.pre_link_window_s, acme.post_link_debounce_s, acme.post_link_max_wait_s) == (
        0.001,
        0,
        0,
    )
    assert (acme.bin_seconds, acme.max_pending_actions) == (0, 1)


def test_equal_debounce_and_max_wait_are_accepted(tmp_path: Path) -> None:
    text = intercom_product(extra="post_link_debounce_s = 2\npost_link_max_wait_s = 2")

    assert load(tmp_path, text)["acme"].post_link_max_wait_s == 2


# --- http: Standard Webhooks secrets --------------------------------------------------------------


def http_product(signing_secret: str, webhook_secret: str) -> str:
    return (
        '[products.initech]\nplatform = "http"\ningest_token = "t-0123456789abcdef"\n'
        "[products.initech.http]\n"
        f'url = "https://bot.example/notes"\nsigning_secret = "{signing_secret}"\n'
        f'webhook_secret = "{webhook_secret}"\n'
    )


@pytest.mark.parametrize(
    "bad",
    [
        "plain-secret",
        "whsec_",
        "whsec_!!!not-base64!!!",
        whsec(23),
        whsec(65),
        whsec(32).replace("whsec_", "WHSEC_"),
    ],
)
@pytest.mark.parametrize("key", ["signing_secret", "webhook_secret"])
def test_invalid_whsec_secret(tmp_path: Path, bad: str, key: str) -> None:
    secrets = {"signing_secret": whsec(32), "webhook_secret": whsec(32), key: bad}

    message = error_of(tmp_path, http_product(**secrets))

    assert f"products.initech.http.{key}" in message


def test_validation_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    bad = "plain-secret-value-1234567890"

    message = error_of(tmp_path, http_product(whsec(32), bad))

    assert "products.initech.http.webhook_secret" in message
    assert bad not in message


@pytest.mark.parametrize("n_bytes", [24, 64])
def test_whsec_secret_length_bounds(tmp_path: Path, n_bytes: int) -> None:
    product = load(tmp_path, http_product(whsec(n_bytes), whsec(n_bytes, b"w")))["initech"]

    assert product.webhook_secret == whsec(n_bytes, b"w")


# --- zendesk ----------------------------------------------------------------------------------


def zendesk_product(section: str) -> str:
    return (
        '[products.g]\nplatform = "zendesk"\ningest_token = "t-0123456789abcdef"\n'
        "[products.g.zendesk]\n"
        f'webhook_secret = "w-0123456789abcdef"\n{section}\n'
    )


def test_zendesk_base_url_defaults_to_the_subdomain(tmp_path: Path) -> None:
    product = load(
        tmp_path, zendesk_product('subdomain = "globex"\noauth_token = "o-0123456789abcdef"')
    )["g"]

    assert product.settings is not None
    assert product.settings.base_url == "https://globex.zendesk.com"


def test_zendesk_api_base_without_subdomain(tmp_path: Path) -> None:
    section = 'api_base = "http://127.0.0.1:9000"\nemail = "e@x"\napi_token = "t-0123456789abcdef"'

    product = load(tmp_path, zendesk_product(section))["g"]

    assert product.settings is not None
    assert product.settings.base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('oauth_token = "o-0123456789abcdef"', "set subdomain or api_base"),
        ('subdomain = ""\noauth_token = "o-0123456789abcdef"', "set subdomain or api_base"),
        ('subdomain = "g"', "set email and api_token, or oauth_token"),
        ('subdomain = "g"\nemail = "e@x"', "set email and api_token, or oauth_token"),
        (
            'subdomain = "g"\napi_token = "t-0123456789abcdef"',
            "set email and api_token, or oauth_token",
        ),
    ],
)
def test_zendesk_needs_a_base_and_credentials(tmp_path: Path, section: str, expected: str) -> None:
    message = error_of(tmp_path, zendesk_product(section))

    assert "products.g.zendesk" in message
    assert expected in message


# --- files ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProductsFileError, match="does not exist"):
        load_products(tmp_path / "nope.toml", env={})


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ProductsFileError, match="not valid TOML"):
        load(tmp_path, "[products.acme\nplatform = ")


def test_unreadable_file_is_a_products_file_error(tmp_path: Path) -> None:
    with pytest.raises(ProductsFileError, match="cannot be read"):
        load_products(tmp_path, env={})
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b'[products.caf\xe9]\nplatform = "console"\n')
    with pytest.raises(ProductsFileError, match="cannot be read"):
        load_products(binary, env={})


def test_parse_products_takes_a_parsed_document() -> None:
    raw = tomllib.loads('[products.demo]\nplatform = "console"\nallow_unauthenticated = true\n')

    products = parse_products(raw, env={})

    assert products["demo"].platform == "console"
    with pytest.raises(ProductsFileError, match="must be a table"):
        parse_products({"products": {"demo": "console"}}, env={})


# --- masking --------------------------------------------------------------------------------------


def test_masked_view_never_shows_a_secret(tmp_path: Path) -> None:
    env = {**REFERENCE_ENV, "ZD2_SECRET": "zd2-secret-0123456789"}
    text = REFERENCE_EXAMPLE + (
        '\n[products.zd2]\nplatform = "zendesk"\ningest_secret = "${ZD2_SECRET}"\n'
        '[products.zd2.zendesk]\nsubdomain = "z"\noauth_token = "oauth-token-abcdefghijkl"\n'
        'webhook_secret = "${ZD2_SECRET}"\n'
    )
    products = load(tmp_path, text, env)
    secrets = [*env.values(), "oauth-token-abcdefghijkl"]

    views = {product_id: masked_view(p) for product_id, p in products.items()}
    dumped = json.dumps(views)

    for secret in secrets:
        assert secret not in dumped
    assert views["acme"]["ingest_token"].startswith("****")
    assert views["acme"]["intercom"]["client_secret"].startswith("****")
    assert views["initech"]["http"]["signing_secret"].startswith("****")
    assert views["zd2"]["zendesk"]["oauth_token"].startswith("****")
    assert views["zd2"]["ingest_secret"] == "****6789"


def test_masked_view_keeps_what_is_not_secret(tmp_path: Path) -> None:
    acme = load(tmp_path, REFERENCE_EXAMPLE, REFERENCE_ENV)["acme"]

    view = masked_view(acme)

    assert view["platform"] == "intercom"
    assert view["intercom"]["admin_id"] == "123456"
    assert view["intercom"]["api_base"] == "https://api.intercom.io"
    assert view["post_link_debounce_s"] == 0.15
    # masking is a view: the loaded product still holds the real secret
    assert acme.ingest_token == REFERENCE_ENV["ACME_INGEST_TOKEN"]


SHORT_SECRET_CASES = {
    "ingest_token": 'ingest_token = "it-0123456789abcdef"',
    "access_token": 'access_token = "tok-0123456789abcdef"',
    "client_secret": 'client_secret = "cs-0123456789abcdef"',
}


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("ingest_token", "products.acme.ingest_token"),
        ("access_token", "products.acme.intercom.access_token"),
        ("client_secret", "products.acme.intercom.client_secret"),
    ],
)
def test_a_secret_shorter_than_16_characters_is_refused(
    tmp_path: Path, key: str, where: str
) -> None:
    fifteen, sixteen = "x" * 15, "y" * 16
    text = intercom_product().replace(SHORT_SECRET_CASES[key], f'{key} = "{fifteen}"')

    message = error_of(tmp_path, text)

    assert f"{where}: is too short: a secret needs at least 16 characters" in message
    assert fifteen not in message  # a secret is never echoed
    assert load(tmp_path, text.replace(fifteen, sixteen))["acme"].platform == "intercom"


# --- every problem at once --------------------------------------------------------------------


def test_every_problem_of_every_product_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        '[products.one]\nplatform = "intercom"\ningest_token = "short"\n'
        '[products.one.intercom]\naccess_token = "${UNSET_TOKEN}"\nadmin_id = "1"\n'
        'client_secret = "cs-0123456789abcdef"\napi_versoin = "2.14"\n'
        '[products.two]\nplatform = "zendesk"\ningest_token = "t-0123456789abcdef"\n'
        "post_link_debounce_s = -1\nwindow = 3\n"
        '[products.two.zendesk]\nsubdomain = "z"\noauth_token = "o-0123456789abcdef"\n'
        'webhook_secret = "w-0123456789abcdef"\n'
        '[products."bad id"]\nplatform = "console"\n'
    )
    with pytest.raises(ProductsFileError) as info:
        load(tmp_path, text)

    assert info.value.problems == [
        "products.one.intercom.access_token: refers to environment variable UNSET_TOKEN, "
        "which is not set",
        "products.one.ingest_token: is too short: a secret needs at least 16 characters",
        "products.one.intercom.api_versoin: unknown key (did you mean 'api_version'?)",
        "products.two.post_link_debounce_s: Input should be greater than or equal to 0",
        "products.two.window: unknown key (did you mean 'pre_link_window_s'?)",
        "product id 'bad id' must be 1-64 chars of [A-Za-z0-9_-]",
    ]
    assert str(info.value).startswith("6 problems:\n  products.one.intercom.access_token")


def test_an_unknown_key_far_from_any_known_one_gets_no_suggestion(tmp_path: Path) -> None:
    message = error_of(tmp_path, intercom_product(extra="zzz_qqq = 1"))
    assert message == "products.acme.zzz_qqq: unknown key"


# --- posthog ----------------------------------------------------------------------------------


def posthog_product(section: str) -> str:
    return intercom_product(section=INTERCOM_SECTION + "[products.acme.posthog]\n" + section)


def test_posthog_section_defaults(tmp_path: Path) -> None:
    posthog = load(tmp_path, posthog_product(f'webhook_secret = "{whsec(32)}"\n'))["acme"].posthog
    assert posthog is not None
    assert posthog.events == [
        "$autocapture", "$pageview", "$pageleave", "$rageclick", "$dead_click", "$screen",
    ]  # fmt: skip
    assert (posthog.replay_links, posthog.project_url, posthog.header_name) == (False, None, None)
    assert posthog.keeps("$pageview") and not posthog.keeps("invoice_exported")


def test_posthog_static_header_and_stored_options(tmp_path: Path) -> None:
    section = (
        'header_name = "X-PostHog-Secret"\nheader_secret = "hs-0123456789abcdef"\n'
        'events = ["*"]\nreplay_links = true\nproject_url = "https://eu.posthog.com/project/1"\n'
    )
    posthog = load(tmp_path, posthog_product(section))["acme"].posthog
    assert posthog is not None and posthog.webhook_secret is None
    assert posthog.keeps("anything") and posthog.replay_links
    assert posthog.project_url == "https://eu.posthog.com/project/1"
    view = masked_view(load(tmp_path, posthog_product(section))["acme"])
    assert view["posthog"]["header_secret"].startswith("****")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("replay_links = true\n", "products.acme.posthog: set webhook_secret, or header_name"),
        ('header_name = "X-Secret"\n', "products.acme.posthog: set header_name and header_secret"),
        ('header_secret = "hs-0123456789abcdef"\n', "set header_name and header_secret together"),
        (
            'header_name = "X-Secret"\nheader_secret = "short"\n',
            "products.acme.posthog.header_secret: is too short",
        ),
        (
            'header_name = "X Secret"\nheader_secret = "hs-0123456789abcdef"\n',
            "products.acme.posthog.header_name: must be an HTTP header name",
        ),
        ('webhook_secret = "plain-secret-0123456789"\n', "products.acme.posthog.webhook_secret"),
        (f'webhook_secret = "{whsec(23)}"\n', "products.acme.posthog.webhook_secret"),
        (
            f'webhook_secret = "{whsec(32)}"\nevents = []\n',
            "products.acme.posthog.events: List should have at least 1 item",
        ),
        (
            f'webhook_secret = "{whsec(32)}"\nproject_url = "eu.posthog.com"\n',
            "products.acme.posthog.project_url: must be an http:// or https:// URL",
        ),
        (
            f'webhook_secret = "{whsec(32)}"\nwebhook_secert = "x"\n',
            "products.acme.posthog.webhook_secert: unknown key (did you mean 'webhook_secret'?)",
        ),
    ],
)
def test_invalid_posthog_section(tmp_path: Path, section: str, expected: str) -> None:
    message = error_of(tmp_path, posthog_product(section))
    assert expected in message
    assert "hs-0123456789abcdef" not in message and "plain-secret-0123456789" not in message
