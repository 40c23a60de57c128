"""Process settings from the environment (prefix ``BRIDGE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a process reads from its environment; products live in the products file."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="ignore")

    products_file: Path = Path("config/products.toml")
    redis_url: str | None = None
    admin_token: str | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    host: str = "0.0.0.0"  # noqa: S104 - a container service listens on all interfaces
    port: int = Field(default=8000, ge=0, le=65535)

    # Engine tuning; the defaults are the SPEC's and rarely need changing.
    lease_s: float = Field(default=30.0, gt=0, le=30.0)
    worker_poll_s: float = Field(default=1.0, gt=0)
    worker_concurrency: int = Field(default=64, gt=0)


@lru_cache
def get_settings() -> Settings:
    """The process settings, read once."""
    return Settings()
