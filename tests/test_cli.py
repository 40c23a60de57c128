"""``python -m app``: check-config and serve."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from app.cli import main
from app.server import BridgeServer

ACCESS_TOKEN = "intercom-access-token-SECRET-a1b2"
CLIENT_SECRET = "intercom-client-secret-SECRET-c3d4"
INGEST_TOKEN = "ingest-token-SECRET-e5f6"

GOOD_FILE = f"""
[products.acme]
platform = "intercom"
ingest_token = "${{ACME_INGEST_TOKEN}}"

[products.acme.intercom]
access_token = "{ACCESS_TOKEN}"
admin_id = "991"
client_secret = "{CLIENT_SECRET}"

[products.demo]
platform = "console"
allow_unauthenticated = true
"""


@pytest.fixture
def good_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ACME_INGEST_TOKEN", INGEST_TOKEN)
    path = tmp_path / "products.toml"
    path.write_text(GOOD_FILE, encoding="utf-8")
    return path


def test_check_config_lists_every_product(
    good_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--file", str(good_file)]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    assert "acme: platform=intercom" in out
    assert "demo: platform=console" in out
    assert '"admin_id": "991"' in out
    assert "defines 2 product(s)" in out


def test_check_config_masks_secrets(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["check-config", "--file", str(good_file)])

    out, err = capsys.readouterr()
    for secret in (ACCESS_TOKEN, CLIENT_SECRET, INGEST_TOKEN):
        assert secret not in out + err
    assert f'"access_token": "****{ACCESS_TOKEN[-4:]}"' in out
    assert f'"ingest_token": "****{INGEST_TOKEN[-4:]}"' in out


def test_check_config_prints_json_per_product(
    good_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["check-config", "--file", str(good_file)])

    out = capsys.readouterr().out
    first_block = out.split("acme: platform=intercom\n", 1)[1].split("\ndemo:", 1)[0]
    view = json.loads(first_block)
    assert view["id"] == "acme"
    assert view["intercom"]["client_secret"] == f"****{CLIENT_SECRET[-4:]}"


def test_check_config_reports_the_bad_product_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[products.shop-1]\nplatform = "console"\nallow_unauthenticated = true\nbin_secs = 3\n',
        encoding="utf-8",
    )

    assert main(["check-config", "--file", str(path)]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ")
    assert "shop-1" in err
    assert "products.shop-1.bin_secs" in err


def test_check_config_names_a_missing_variable(
    good_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACME_INGEST_TOKEN")

    assert main(["check-config", "--file", str(good_file)]) == 1

    err = capsys.readouterr().err
    assert "ACME_INGEST_TOKEN" in err
    assert "acme" in err


def test_check_config_defaults_to_the_settings_file(
    good_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_PRODUCTS_FILE", str(good_file))

    assert main(["check-config"]) == 0

    assert "acme: platform=intercom" in capsys.readouterr().out


def test_check_config_on_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_PRODUCTS_FILE", str(tmp_path / "absent.toml"))

    assert main(["check-config"]) == 1

    assert "absent.toml does not exist" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])

    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_serve_runs_the_app_on_the_configured_address(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[uvicorn.Config] = []
    monkeypatch.setattr(BridgeServer, "run", lambda self, *a, **k: started.append(self.config))
    monkeypatch.setenv("BRIDGE_HOST", "127.0.0.1")
    monkeypatch.setenv("BRIDGE_PORT", "8123")

    assert main(["serve"]) == 0

    (config,) = started
    assert (config.host, config.port, config.proxy_headers) == ("127.0.0.1", 8123, True)
    assert isinstance(config.app, FastAPI)


def test_serve_rejects_a_bad_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(BridgeServer, "run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.setenv("BRIDGE_PORT", "not-a-port")
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "verbose")

    assert main(["serve"]) == 1

    assert capsys.readouterr().err == (
        "error: 2 problems in the BRIDGE_* environment:\n"
        "  - BRIDGE_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'\n"
        "  - BRIDGE_PORT: Input should be a valid integer, unable to parse string as an integer\n"
    )


def test_check_config_lists_every_problem_of_every_product(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "products.toml"
    path.write_text(
        '[products.a]\nplatform = "console"\nallow_unauthenticated = true\nbin_second = 3\n'
        '[products.b]\nplatform = "http"\ningest_token = "${NOT_SET_ANYWHERE}"\n'
    )

    assert main(["check-config", "--file", str(path)]) == 1

    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: 3 problems in {path}:"
    assert err[1:] == [
        "  - products.a.bin_second: unknown key (did you mean 'bin_seconds'?)",
        "  - products.b.ingest_token: refers to environment variable NOT_SET_ANYWHERE, "
        "which is not set",
        "  - products.b: needs its platform's webhook secret ([http] section)",
    ]


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"chatbot-bridge {version('chatbot-bridge')}\n"
