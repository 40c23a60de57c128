"""The example products files pass ``check-config`` as they are, with their variables set."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from app import plugins
from app.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "config" / "examples").glob("*.toml"))


def example_env(text: str) -> dict[str, str]:
    """A value for every ``${NAME}`` the file names: whsec_ secrets for ``*_WHSEC``."""
    names = re.findall(r'= "\$\{([A-Z0-9_]+)\}"', text)
    whsec = "whsec_" + base64.b64encode(b"k" * 32).decode()
    return {name: whsec if name.endswith("_WHSEC") else f"{name.lower()}-value" for name in names}


def test_there_is_an_example_for_every_platform() -> None:
    platforms = {
        m for p in EXAMPLES for m in re.findall(r'^platform = "(\w+)"', p.read_text(), re.M)
    }
    assert platforms == set(plugins.platform_names())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_an_example_passes_check_config(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = example_env(path.read_text(encoding="utf-8"))
    assert env, "an example names its secrets as ${VARIABLES}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert main(["check-config", "--file", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.strip().endswith(f"ok: {path} defines 1 product(s)")
    assert not any(value in out for value in env.values())  # secrets are masked


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_an_example_without_its_variables_names_each_one(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = example_env(path.read_text(encoding="utf-8"))
    assert main(["check-config", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert all(f"environment variable {name}," in err for name in env)
