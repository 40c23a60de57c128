"""Process settings from the environment (prefix ``BRIDGE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_ADMIN_TOKEN_CHARS = 16
ENV_PREFIX = "BRIDGE_"


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


Role = Literal["all", "api", "worker"]

LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
]


class Settings(BaseSettings):
    """Everything a process reads from its environment; products live in the products file."""

    # Errors name the variable but never echo its value: it may be a token or a Redis password.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", hide_input_in_errors=True
    )

    products_file: Path = Path("config/products.toml")
    # all: HTTP API and delivery worker; api: the HTTP API only; worker: delivery only (with
    # /healthz, /readyz and /metrics), so the two scale apart over one store.
    role: Role = "all"
    redis_url: str | None = None
    # A Redis Cluster: BRIDGE_REDIS_URL names any of its nodes (docs/operations.md).
    redis_cluster: bool = False
    # Acknowledge a write only once this many replicas hold it (Redis WAIT), within the timeout.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_s: float = Field(default=1.0, gt=0, le=10.0)
    admin_token: str | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: LogLevel = "INFO"
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    host: str = "0.0.0.0"  # noqa: S104 - a container service listens on all interfaces
    port: int = Field(default=8000, ge=0, le=65535)

    # What one client may hold of the server (docs/limits.md).
    body_read_timeout_s: float = Field(default=10.0, gt=0)
    header_read_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_timeout_s: int = Field(default=5, gt=0)
    max_header_bytes: int = Field(default=65_536, gt=0)
    max_connections: int = Field(default=1000, gt=0)

    # Engine tuning; the defaults rarely need changing.
    lease_s: float = Field(default=30.0, gt=0, le=30.0)
    worker_poll_s: float = Field(default=1.0, gt=0)
    worker_concurrency: int = Field(default=64, gt=0)

    @field_validator("admin_token")
    @classmethod
    def _admin_token_is_long_enough(cls, token: str | None) -> str | None:
        # An empty value means "no admin token", as /debug/* and the routes read it.
        if token and len(token) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters long")
        return token

    @model_validator(mode="after")
    def _redis_options_need_a_redis(self) -> Settings:
        if self.redis_url is None:
            if self.redis_cluster:
                raise ValueError("BRIDGE_REDIS_CLUSTER needs BRIDGE_REDIS_URL (any cluster node)")
            if self.redis_wait_replicas:
                raise ValueError("BRIDGE_REDIS_WAIT_REPLICAS needs BRIDGE_REDIS_URL")
            if self.role != "all":
                # The embedded store lives in one process: an api and a worker could not share it.
                raise ValueError(f"BRIDGE_ROLE={self.role} needs BRIDGE_REDIS_URL")
        return self


def settings_problems(exc: ValidationError) -> list[str]:
    """One line per invalid variable, named as it is set (``BRIDGE_PORT: ...``), values never
    echoed (they may be secrets)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else "environment"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}")
    return problems


@lru_cache
def get_settings() -> Settings:
    """The process settings, read once."""
    return Settings()
