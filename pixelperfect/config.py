"""One typed settings object for every part of PixelPerfect (environment prefix ``PIXELPERFECT_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ModelName = Literal["sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam", "grabcut", "sam_tiny"]
MODEL_NAMES: tuple[str, ...] = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam", "grabcut", "sam_tiny")


class Settings(BaseSettings):
    """Runtime configuration. Unset ``broker_url`` means embedded (in-process) execution."""

    model_config = SettingsConfigDict(env_prefix="PIXELPERFECT_", env_file=None, extra="ignore")

    broker_url: str | None = Field(default=None, description="Celery broker, e.g. redis://:pw@host:6379/0")
    database_url: str = "sqlite:///pixelperfect.db"
    store_url: str = "file://./pixelperfect-store"
    s3_endpoint_url: str | None = None
    model: ModelName = "sam_vit_b"
    checkpoint: str | None = None
    device: str = "auto"

    # Batches: a batch of 8 images x 2 variants at ViT-B costs ~16 x 4 MiB of embeddings (256x64x64 fp32) plus
    # the encoder's activations for one encoder chunk (~1.3 GiB per image in fp32 at 1024^2, half in bf16).
    batch_size: int = Field(default=8, ge=1, le=256)
    encoder_batch: int = Field(default=8, ge=1, le=128)
    min_area: int = Field(default=250, ge=0, description="connected components smaller than this are dropped")
    max_pixels: int = Field(default=50_000_000, ge=1, description="refuse images larger than this (header check)")
    # Redis re-delivers an unacknowledged task after this many seconds; it must exceed the longest batch, or a
    # slow batch is handed to a second worker while the first still runs (work done twice, not lost).
    visibility_timeout: int = Field(default=3600, ge=60)
    task_max_retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=2.0, ge=0, description="first retry delay; doubles each retry")
    worker_soft_shutdown_timeout: float = Field(default=60.0, ge=0)
    metrics_port: int | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")

    @property
    def embedded(self) -> bool:
        return not self.broker_url


_SETTINGS: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once (or set by :func:`use_settings`)."""
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = Settings()
    return _SETTINGS


def use_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (the CLI's overrides, tests); ``None`` re-reads the environment."""
    global _SETTINGS
    _SETTINGS = settings
    from pixelperfect.worker import runtime

    runtime.reset_runtime()


def redact_url(url: str | None) -> str | None:
    """Hide a password inside a URL (``redis://:secret@host`` -> ``redis://:***@host``) for logs and run configs."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else creds
    return f"{scheme}://{user}:***@{host}"
