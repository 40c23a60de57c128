"""Container files: docker-compose.yml, the Dockerfile, .dockerignore, .env.example.

No Docker engine runs here, so these read the files and lint the Dockerfile with hadolint.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "pip install", "apt-get install")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


# --- helpers ---------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comment lines dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            logical.append(pending.strip())
        pending = ""
    return [Instruction(*[*part.split(None, 1), ""][:2]) for part in logical]


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword.upper() == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword.upper() == keyword]


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def env_dict(environment: dict[str, Any] | list[str]) -> dict[str, str]:
    if isinstance(environment, dict):
        return {key: str(value) for key, value in environment.items()}
    return dict(item.split("=", 1) for item in environment)


def volume_parts(volume: str) -> tuple[str, str, str]:
    source, target, *mode = volume.split(":")
    return source, target, (mode[0] if mode else "rw")


def seconds(duration: str | int | float) -> float:
    if not isinstance(duration, str):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts, f"unparsable duration {duration!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    tokens = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    parts = [
        wildcards.get(token, token if token.startswith("[") else re.escape(token))
        for token in tokens
    ]
    return re.compile("".join(parts))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parents = [*reversed(PurePosixPath(path).parents), PurePosixPath(path)][1:]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.removeprefix("!").strip().strip("/"))
        if any(regex.fullmatch(str(parent)) for parent in parents):
            ignored = not negate
    return ignored


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def redis_service(compose: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"]["redis"]
    return service


@pytest.fixture(scope="module")
def bridge(compose: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"]["bridge"]
    return service


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    return stages(dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def final_stage(dockerfile: list[list[Instruction]]) -> list[Instruction]:
    return dockerfile[-1]


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_runs_the_bridge_and_redis(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"bridge", "redis"}


def test_redis_persists_with_an_append_only_file(
    compose: dict[str, Any], redis_service: dict[str, Any]
) -> None:
    argv = as_argv(redis_service["command"])
    assert argv[0] == "redis-server"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    data = [volume_parts(v) for v in redis_service["volumes"] if volume_parts(v)[1] == "/data"]
    assert len(data) == 1
    assert data[0][0] in compose["volumes"], "/data must live on a named volume"


def test_redis_has_a_ping_healthcheck(redis_service: dict[str, Any]) -> None:
    argv = as_argv(redis_service["healthcheck"]["test"])
    assert argv[0] in {"CMD", "CMD-SHELL"}
    assert "redis-cli" in " ".join(argv)
    assert argv[-1] == "ping"


def test_bridge_waits_for_a_healthy_redis(bridge: dict[str, Any]) -> None:
    assert bridge["depends_on"]["redis"]["condition"] == "service_healthy"


def test_bridge_store_is_the_redis_service(compose: dict[str, Any], bridge: dict[str, Any]) -> None:
    url = urlparse(env_dict(bridge["environment"])["BRIDGE_REDIS_URL"])
    assert url.scheme in {"redis", "rediss"}
    assert url.hostname == "redis"
    assert url.hostname in compose["services"]


def test_bridge_reads_its_products_file_from_the_mounted_config(bridge: dict[str, Any]) -> None:
    products_file = PurePosixPath(env_dict(bridge["environment"])["BRIDGE_PRODUCTS_FILE"])
    mounts = {volume_parts(v)[0]: volume_parts(v) for v in bridge["volumes"]}
    assert "./config" in mounts
    _, target, mode = mounts["./config"]
    assert products_file.parent == PurePosixPath(target)
    assert mode == "ro"


def test_bridge_healthcheck_hits_healthz_on_the_published_port(bridge: dict[str, Any]) -> None:
    probe = " ".join(as_argv(bridge["healthcheck"]["test"]))
    container_ports = {str(mapping).rsplit(":", 1)[-1] for mapping in bridge["ports"]}
    assert container_ports == {str(Settings.model_fields["port"].default)}
    probed_ports = set(re.findall(r"http://127\.0\.0\.1:(\d+)/healthz", probe))
    assert probed_ports == container_ports


def test_bridge_stop_grace_outlasts_the_drain(bridge: dict[str, Any]) -> None:
    grace_s = Settings.model_fields["shutdown_grace_s"].default
    assert seconds(bridge["stop_grace_period"]) > grace_s


def test_bridge_runs_read_only_with_a_tmpfs(bridge: dict[str, Any]) -> None:
    assert bridge["read_only"] is True
    assert "/tmp" in bridge["tmpfs"]  # noqa: S108 - the container's tmpfs


def test_bridge_reads_an_env_file_that_has_an_example(bridge: dict[str, Any]) -> None:
    assert bridge["env_file"] in (".env", [".env"])
    assert (ROOT / ".env.example").is_file()


def test_env_example_documents_every_setting_and_example_secret() -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    products = (ROOT / "config" / "products.example.toml").read_text(encoding="utf-8")
    names = {f"BRIDGE_{field.upper()}" for field in Settings.model_fields}
    names |= set(re.findall(r"=\s*\"\$\{([A-Z0-9_]+)\}\"", products))
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    assert names - documented == set()


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_pinned_slim_python(
    dockerfile: list[list[Instruction]],
) -> None:
    images = [stage[0].args.split()[0] for stage in dockerfile]
    assert len(images) >= 2
    assert all(re.fullmatch(r"python:3\.\d+-slim-\w+", image) for image in images)


def test_image_runs_the_python_minor_version_that_ci_tests(
    dockerfile: list[list[Instruction]],
) -> None:
    tested = f"{sys.version_info.major}.{sys.version_info.minor}"
    images = {stage[0].args.split()[0] for stage in dockerfile}
    assert images == {f"python:{tested}-slim-bookworm"}


def test_dependencies_come_from_the_hashed_runtime_lock_before_the_code(
    dockerfile: list[list[Instruction]],
) -> None:
    builder = [(i.keyword, i.args) for i in dockerfile[0]]
    lock_install = next(
        n for n, (cmd, args) in enumerate(builder) if cmd == "RUN" and "--require-hashes" in args
    )
    assert "-r requirements/runtime.txt" in builder[lock_install][1]
    copy_app = next(n for n, (cmd, args) in enumerate(builder) if cmd == "COPY" and "app" in args)
    assert lock_install < copy_app  # the dependency layer is cached across code changes
    package_install = [args for cmd, args in builder[copy_app:] if cmd == "RUN"]
    assert package_install and all("--no-deps" in args for args in package_install)


def test_the_runtime_lock_pins_everything_with_hashes_and_leaves_test_tools_out() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "requirements" / "runtime.txt").read_text(encoding="utf-8").splitlines()
    ]
    pins = {n: line for n, line in enumerate(lines) if re.match(r"^[A-Za-z0-9_.-]+==\S+", line)}
    names = {line.split("==")[0].lower() for line in pins.values()}
    assert {"fastapi", "uvicorn", "redis", "httpx", "pydantic", "structlog"} <= names
    assert not {"fakeredis", "lupa", "pytest", "ruff", "mypy", "hypothesis"} & names
    # pip-compile --generate-hashes: every pin is followed by its hashes.
    assert all(lines[n + 1].startswith("--hash=sha256:") for n in pins)


def test_the_image_label_carries_the_package_version(
    final_stage: list[Instruction],
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert f"VERSION={project['version']}" in args_of(final_stage, "ARG")
    labels = " ".join(args_of(final_stage, "LABEL"))
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_final_stage_runs_as_a_non_root_user(final_stage: list[Instruction]) -> None:
    users = args_of(final_stage, "USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_final_stage_has_a_healthz_healthcheck(final_stage: list[Instruction]) -> None:
    checks = args_of(final_stage, "HEALTHCHECK")
    assert len(checks) == 1
    assert " CMD " in f" {checks[0]} "
    assert "/healthz" in checks[0]


def test_cmd_is_exec_form_serve(final_stage: list[Instruction]) -> None:
    commands = args_of(final_stage, "CMD")
    assert commands, "the final stage must set CMD"
    assert json.loads(commands[-1]) == ["python", "-m", "app", "serve"]


def test_final_stage_has_no_build_tools(final_stage: list[Instruction]) -> None:
    runs = " ".join(args_of(final_stage, "RUN"))
    assert [tool for tool in BUILD_TOOLS if re.search(rf"(^|\s){re.escape(tool)}\b", runs)] == []
    copied = [args for args in args_of(final_stage, "COPY") if "--from=" in args]
    assert [args.split()[1:] for args in copied] == [["/opt/venv", "/opt/venv"]]


def test_package_is_installed_not_editable(dockerfile: list[list[Instruction]]) -> None:
    runs = [args for stage in dockerfile for args in args_of(stage, "RUN")]
    installs = [args for args in runs if "pip install" in args]
    assert installs
    assert not any(re.search(r"\s(-e|--editable)\b|\[test\]", args) for args in installs)


def test_image_defaults_match_compose(
    final_stage: list[Instruction], bridge: dict[str, Any]
) -> None:
    env = " ".join(args_of(final_stage, "ENV"))
    products_file = env_dict(bridge["environment"])["BRIDGE_PRODUCTS_FILE"]
    assert f"BRIDGE_PRODUCTS_FILE={products_file}" in env
    assert args_of(final_stage, "EXPOSE") == [str(Settings.model_fields["port"].default)]


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "install the test extras: pip install -e '.[test]'"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- .dockerignore ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "config/products.toml",
        ".env",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_container.py",
        "bench/results/run.json",
        "app/__pycache__/main.cpython-312.pyc",
    ],
)
def test_dockerignore_keeps_secrets_and_clutter_out(path: str, ignore_patterns: list[str]) -> None:
    assert dockerignored(path, ignore_patterns)


def test_dockerignore_keeps_what_the_dockerfile_copies(
    dockerfile: list[list[Instruction]], ignore_patterns: list[str]
) -> None:
    sources = [
        source
        for stage in dockerfile
        for args in args_of(stage, "COPY")
        if "--from=" not in args
        for source in args.split()[:-1]
    ]
    files = [
        path.relative_to(ROOT).as_posix()
        for source in sources
        for path in ([ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert "app/store/lua/_common.lua" in files
    assert [path for path in files if dockerignored(path, ignore_patterns)] == []


def test_the_split_compose_file_runs_an_api_and_a_worker(
    compose: dict[str, Any], bridge: dict[str, Any]
) -> None:
    split = yaml.safe_load((ROOT / "docker-compose.split.yml").read_text(encoding="utf-8"))
    assert split["services"]["bridge"]["environment"] == {"BRIDGE_ROLE": "api"}
    worker = split["services"]["bridge-worker"]
    assert worker["environment"]["BRIDGE_ROLE"] == "worker"
    assert "ports" not in worker  # a worker takes no traffic
    # Everything else a worker needs is what the bridge service has.
    for key in ("image", "env_file", "volumes", "read_only", "cap_drop", "stop_grace_period"):
        assert worker[key] == bridge[key], key
    shared = {k: v for k, v in bridge["environment"].items() if k != "BRIDGE_ROLE"}
    assert {k: worker["environment"][k] for k in shared} == shared
