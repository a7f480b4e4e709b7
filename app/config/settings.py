"""Service settings, from ``REPROGRAM_*`` environment variables (pydantic-settings).

Built by ``get_settings()`` when asked for, never at import time, so tests build their own.
Production mode refuses to start without a server key (credentials are encrypted with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapters.egress import EgressPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPROGRAM_", extra="ignore")

    mode: Literal["embedded", "production"] = "embedded"
    data_dir: Path = Field(default_factory=lambda: Path(user_data_dir("reprogram")))
    database_url: str | None = None  # default: SQLite file in data_dir
    secret_key: SecretStr | None = None  # encrypts stored credentials
    # USD per image answered (what providers bill); configuration, not code (docs/providers.md).
    price_torch: float = 0.0
    price_clarifai: float = 0.0012
    price_customvision: float = 0.002
    # Provider limits, in the unit each provider counts.
    rate_limit_clarifai: float = 15.0  # requests per second per credential
    rate_limit_customvision: float = 10.0  # images per second per credential
    rate_limit_backend: str | None = None  # default: follows the database
    # Request limits (README "Limits"): enforced while a body streams in, before it is read.
    max_upload_bytes: int = Field(default=200 * 1024**2, ge=1)  # POST /v1/datasets body
    max_predict_bytes: int = Field(default=32 * 1024**2, ge=1)  # POST .../predict body
    max_json_bytes: int = Field(default=64 * 1024, ge=1)  # any other request body
    # Decoded pixels (width × height, summed over the images), checked from the image
    # headers before any image is decoded: what decoding may cost in time and memory.
    max_image_pixels: int = Field(default=40_000_000, ge=1)  # one image
    max_upload_pixels: int = Field(default=256_000_000, ge=1)  # one data set
    max_predict_pixels: int = Field(default=64_000_000, ge=1)  # one predict request
    job_poll_seconds: float = 0.5
    # A job whose oracle says its quota for the period is used up (Clarifai's hourly limit,
    # adapters.errors.QuotaExhausted) waits this long, then tries again from its last
    # checkpoint; after max_quota_waits waits in a row it fails, naming the limit.
    quota_wait_seconds: float = Field(default=600.0, ge=0)
    max_quota_waits: int = Field(default=12, ge=0)
    # GET /v1/jobs/{id}/events: how often each API process reads the watched jobs (one
    # statement for all of them) to push their changes.
    events_poll_seconds: float = Field(default=0.5, gt=0)
    # GET /metrics (Prometheus), not behind a token: off, or on a port of its own (then not
    # on the API's port), bound to metrics_host.
    metrics: bool = True  # REPROGRAM_METRICS=on|off
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    embedded_workers: int = 2  # jobs run at once by `reprogram serve` (child processes)
    # Endpoints a tenant's cloud oracle may reach besides its provider's public HTTPS hosts
    # (adapters/egress.py): comma-separated host[:port], *.domain[:port] or URL prefixes.
    oracle_allowed_endpoints: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("oracle_allowed_endpoints", mode="before")
    @classmethod
    def _split_entries(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            value = tuple(str(v).strip() for v in value if str(v).strip())
            EgressPolicy.from_entries(value)  # a bad entry stops the start, naming it
        return value

    @model_validator(mode="after")
    def _production_needs_key(self) -> Settings:
        if self.mode == "production" and self.secret_key is None:
            raise ValueError(
                "REPROGRAM_SECRET_KEY must be set in production mode (it encrypts credentials)"
            )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'reprogram.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def limiter_backend(self) -> str:
        if self.rate_limit_backend:
            return self.rate_limit_backend
        if self.is_sqlite:
            return f"sqlite:///{self.data_dir / 'ratelimit.db'}"
        return self.db_url

    @property
    def egress(self) -> EgressPolicy:
        """Where tenants' oracles may connect (the CLI runs without a policy)."""
        return EgressPolicy.from_entries(self.oracle_allowed_endpoints)

    def price(self, provider: str) -> float:
        return float(getattr(self, f"price_{provider}", 0.0))

    def rate_limit(self, provider: str) -> tuple[float, str] | None:
        """(limit, unit) for a provider, or None for local oracles."""
        if provider == "clarifai":
            return self.rate_limit_clarifai, "request"
        if provider == "customvision":
            return self.rate_limit_customvision, "image"
        return None


def get_settings() -> Settings:
    return Settings()
