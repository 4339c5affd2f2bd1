"""One typed settings object for every part of PixelPerfect (environment prefix ``PIXELPERFECT_``)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ModelName = Literal[
    "sam_vit_b",
    "sam_vit_l",
    "sam_vit_h",
    "medsam",
    "grabcut",
    "sam_tiny",
    "sam2.1_hiera_tiny",
    "sam2.1_hiera_small",
    "sam2.1_hiera_base_plus",
    "sam2.1_hiera_large",
    "sam2_hiera_tiny",
    "sam2_hiera_small",
    "sam2_hiera_base_plus",
    "sam2_hiera_large",
    "medsam2",
    "sam2_tiny",
    "sam3",
]
#: SAM 2 / 2.1 / MedSAM2 (transformers' Sam2Model; architectures in pipeline/model/sam2_family.py, which a test
#: keeps equal to this list): Hugging Face model directories as checkpoints
SAM2_MODEL_NAMES: tuple[str, ...] = (
    "sam2.1_hiera_tiny",
    "sam2.1_hiera_small",
    "sam2.1_hiera_base_plus",
    "sam2.1_hiera_large",
    "sam2_hiera_tiny",
    "sam2_hiera_small",
    "sam2_hiera_base_plus",
    "sam2_hiera_large",
    "medsam2",
    "sam2_tiny",
)
MODEL_NAMES: tuple[str, ...] = (
    "sam_vit_b",
    "sam_vit_l",
    "sam_vit_h",
    "medsam",
    "grabcut",
    "sam_tiny",
    *SAM2_MODEL_NAMES,
    "sam3",  # SAM 3 concept prompts (pipeline/model/sam3.py): a Hugging Face directory with its tokenizer files
)
#: Models that run with seeded random weights when no checkpoint is given (tests, demos, benchmarks)
RANDOM_BY_DEFAULT: tuple[str, ...] = ("sam_tiny", "sam2_tiny")
RANDOM_CHECKPOINT = "random"  # seeded random weights: benchmarks and tests of speed, never results
#: Mask components of at most this many pixels give no box (the research kept contours with area > 250 px).
MIN_AREA = 250


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
    # Mark every DICOM object a run writes (SEG, SR, KOS) as research use: "RESEARCH USE ONLY" leads its series
    # description and a comment says so, so nothing reaches a clinical worklist unlabelled. Read at submit and
    # kept with the run (runs.settings "research_use": false when off).
    research_use: bool = True

    # Batches. A task holds batch_size images; the worker runs them through the model in groups of encoder_batch
    # and fetches/decodes the next group and uploads the last while the model works on this one, so a batch of
    # several groups keeps the device busy (one group cannot overlap its own fetch). Memory, ViT-B at 1024^2:
    # per image and variant 4 MiB of embedding (256x64x64 fp32) and ~10 MiB of masks per prompt with K = 4; the
    # encoder's activations peak in its 4 global-attention blocks at 12 heads x 4096^2 scores (+ the same again
    # for the relative-position bias): ~1.3 GiB per image in fp32, ~0.7 GiB in bf16 (computed; bench/gpu.sh
    # measures the peak for chunks of 1/8/32), so encoder_batch 32 needs ~22 GiB in bf16 and 8 fits a 16 GiB card.
    # Host memory is bounded by ~4 x encoder_batch images in flight (prefetch, model, post-processing, upload).
    batch_size: int = Field(default=32, ge=1, le=256)
    encoder_batch: int = Field(default=8, ge=1, le=128)
    # torch.compile the image encoder: faster steady state, a cold start per worker process (bench/RESULTS.md)
    compile_encoder: bool = False
    # The producer pauses while the broker's gpu queue holds more than this many batch messages and resumes when
    # it has drained to half: Redis holds ~1.3 KiB per message of 8 keys, so the default costs a few MiB at most.
    max_queued_batches: int = Field(default=2000, ge=1)
    min_area: int = Field(default=MIN_AREA, ge=0, description="connected components smaller than this are dropped")
    max_pixels: int = Field(default=50_000_000, ge=1, description="refuse images larger than this (header check)")
    # What a DICOM object may declare before pydicom reads it (pipeline/decode/limits.py, docs/fuzzing.md): the
    # deflated syntax's inflated bytes (a 500 KB zlib bomb inflates to 512 MB), sequence nesting (pydicom recurses
    # per level), data elements (a CR/DX header has hundreds). Over a limit: inflate_limit, too_deep,
    # too_many_elements.
    max_inflated_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_sequence_depth: int = Field(default=16, ge=1, le=200)
    max_dicom_elements: int = Field(default=200_000, ge=100)
    # Seconds one image may spend in decode + preprocess; over it the image ends too_slow and the batch goes on.
    # Measured after the stage returns (a C codec in a thread cannot be interrupted; a process per image costs
    # IPC on every image, bench P30); a decode that never returns is ended by the task's pool-process death path
    # (worker_lost). 0: no budget.
    decode_budget_s: float = Field(default=60.0, ge=0)
    # Visibility timeout (Redis broker). A message is acknowledged only after its batch finished (late acks); until
    # then Redis keeps it in an "unacked" set, and any worker hands it back to the queue once it is older than this
    # many seconds. That is how the batch of a worker that died with its main process (OOM kill, lost machine) or
    # that lost its broker connection comes back — after up to this long. It must exceed the longest batch
    # *including* a retry's countdown (Redis holds ETA tasks unacked too), or a batch still running is handed to a
    # second worker: work done twice (upserts keep the result single), never lost. Lower it to recover faster when
    # batches are short; tests use a few seconds.
    visibility_timeout: int = Field(default=3600, ge=1)
    # Orphan sweep (Redis broker). Every this many seconds one worker (a Redis lock picks it) looks, while the gpu
    # queue is empty, for queued images of active runs that were published at least this long ago, hold no live
    # lease and are named by no unacknowledged message: their message was lost (the Redis transport can drop a
    # message that a worker popped in the instant the broker died) and they are published again. A duplicate is
    # harmless (leases and finished images are skipped). 0 turns the sweep off.
    orphan_sweep_s: float = Field(default=60.0, ge=0)
    # A failed batch is retried (see RetryPolicy): up to task_max_retries times, waiting retry_backoff_s before the
    # first retry (whole seconds, as Celery counts them: at least 1 s, 0 = at once), doubling each time, at most
    # RETRY_BACKOFF_MAX_S; with retry_jitter each wait is drawn uniformly from 0 up to that (Celery's full jitter),
    # so workers that failed together do not all come back together.
    task_max_retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=2.0, ge=0, description="first retry delay; doubles each retry")
    retry_jitter: bool = Field(default=True, description="draw each retry delay uniformly from 0 up to the backoff")
    # SIGTERM (the worker remaps it to a cold shutdown with this soft phase): the in-flight batch gets this many
    # seconds to finish, then it is cancelled and its message goes back to the queue. A supervisor's grace period
    # (docker stop -t, Kubernetes terminationGracePeriodSeconds) must be longer.
    worker_soft_shutdown_timeout: float = Field(default=60.0, ge=0)
    # A run pauses itself (state paused, its reason recorded; `submit` resumes it) when a worker process could not
    # write the results of this many consecutive images of it — to its store, or to the database — or read them
    # from its S3/directory source, instead of failing the archive image by image (worker/pausing.py); also when a
    # batch's retries were all spent on such failures. 0: only then.
    pause_after_failed_writes: int = Field(default=32, ge=0)
    # The command line shows the traceback of expected failures too (as `pixelperfect --debug`).
    debug: bool = False
    # rediss:// brokers: certificate checking (required | optional | none) and the files for it.
    broker_ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    broker_ssl_ca_certs: str | None = None
    broker_ssl_certfile: str | None = None
    broker_ssl_keyfile: str | None = None
    metrics_port: int | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Decode JPEG 2000 / JPEG DICOMs at full resolution even when the model needs less. By default (False) they are
    # decoded at the smallest resolution level (J2K) or DCT scale (JPEG) whose long side is still >= the model's
    # input size (SAM: 1024): a 2800x2300 JPEG 2000 costs a quarter of its full decode. Masks and boxes stay in
    # the original's pixel grid either way (pipeline/decode/codecs.py, bench/p12_reduced.py).
    decode_full_resolution: bool = False
    # DICOMweb sources and STOW-RS targets (dicomweb+http://host:port/path): basic auth or a bearer token, from the
    # environment only, never from the URL (which goes into the run row and logs). Requests that fail with a
    # connection error, a timeout, 408, 429 or 5xx are tried dicomweb_attempts times, waiting dicomweb_backoff_s,
    # doubling; QIDO-RS lists dicomweb_page_size instances per request.
    dicomweb_username: str | None = None
    dicomweb_password: SecretStr | None = None
    dicomweb_token: SecretStr | None = None
    dicomweb_attempts: int = Field(default=4, ge=1, le=20)
    dicomweb_backoff_s: float = Field(default=0.5, ge=0)
    dicomweb_timeout_s: float = Field(default=60.0, gt=0)
    dicomweb_page_size: int = Field(default=500, ge=1, le=10_000)
    # DIMSE archives (dimse://CALLED_AE@HOST:PORT, storage/dimse.py): our calling AE title (the archive must know
    # it: Orthanc's DicomModalities), and one retry policy for associations and C-FIND/C-GET/C-STORE that fail
    # (refused, aborted, no answer within dimse_timeout_s): tried dimse_attempts times, waiting dimse_backoff_s,
    # doubling.
    dimse_ae_title: str = Field(default="PIXELPERFECT", min_length=1, max_length=16)
    dimse_attempts: int = Field(default=4, ge=1, le=20)
    dimse_backoff_s: float = Field(default=0.5, ge=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("dimse_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        if not value.strip() or "\\" in value or not value.isascii() or not value.isprintable():
            raise ValueError(f"an AE title is 1-16 printable ASCII characters without a backslash, not {value!r}")
        return value.strip()

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")

    @model_validator(mode="after")
    def _check_visibility_timeout(self) -> Settings:
        longest = self.retry_policy.longest_countdown()
        if self.visibility_timeout <= longest:
            raise ValueError(
                f"visibility_timeout={self.visibility_timeout}s must exceed the longest retry countdown "
                f"({longest:.0f}s): Redis would hand a waiting retry to a second worker"
            )
        return self

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_backoff_s, self.task_max_retries, self.retry_jitter)


#: Retry countdowns double from ``retry_backoff_s`` and are capped here (seconds).
RETRY_BACKOFF_MAX_S = 300


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy of a failed batch: the Celery tasks' retries (``worker/tasks.py``, read when a task runs)
    and the embedded runner's waits (:meth:`delay`) follow it, and the visibility timeout is checked against it.

    Retry ``n + 1`` comes after at most :meth:`countdown` ``(n)`` seconds: Celery's exponential backoff
    (``celery.utils.time.get_exponential_backoff_interval``) — the first delay in whole seconds, at least 1 (0:
    at once), doubled per retry, capped at :data:`RETRY_BACKOFF_MAX_S`; with ``jitter`` the wait is uniform in
    ``0..countdown`` (whole seconds).
    """

    backoff_s: float
    max_retries: int
    jitter: bool = True

    def countdown(self, retries: int) -> int:
        if self.backoff_s <= 0:
            return 0
        return int(min(RETRY_BACKOFF_MAX_S, int(max(1.0, self.backoff_s)) * 2 ** min(retries, 30)))

    def longest_countdown(self) -> int:
        return self.countdown(self.max_retries - 1) if self.max_retries > 0 else 0

    def delay(self, retries: int, rng: random.Random | None = None) -> int:
        """Seconds to wait before retry ``retries + 1`` (a draw when ``jitter``)."""
        countdown = self.countdown(retries)
        return (rng or random).randrange(countdown + 1) if self.jitter else countdown


_SETTINGS: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once (or set by :func:`use_settings`)."""
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = Settings()
    return _SETTINGS


def use_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (the CLI's overrides, tests); ``None`` re-reads the environment.

    Nothing is reset from here (settings sit below every other module): holders of per-process handles, such as
    the worker's runtime, compare the settings object they were built from with :func:`get_settings` and rebuild.
    """
    global _SETTINGS
    _SETTINGS = settings
