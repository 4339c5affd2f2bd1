"""SQLAlchemy 2 typed models. The schema changes only through Alembic migrations (``db/migrations``).

Identity (docs/architecture.md, "SQL rows"): one image row per ``(run, key)``; one segment row per
``(image, variant, prompt)``.
Boxes are XYXY pixel coordinates of the original image, stored as JSON lists ``[x1, y1, x2, y2]``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ImageStatus(str, enum.Enum):
    queued = "queued"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"  # its run was cancelled before a worker took it; submitting the run queues it again


class RunState(str, enum.Enum):
    active = "active"
    cancelled = "cancelled"  # workers acknowledge its batches without model work; submit resumes it
    deleting = "deleting"  # ``pixelperfect delete`` began removing it (re-run delete to finish)
    paused = "paused"  # it paused itself: its store (or database) refused writes (``state_reason``); submit resumes it


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    """A named, immutable configuration and its images."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source_url: Mapped[str] = mapped_column(Text)
    store_url: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(40))
    checkpoint: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    variants: Mapped[list[Any]] = mapped_column(JSON)  # [{"name", "spec", "hash"}]
    prompt_mode: Mapped[str] = mapped_column(String(20), default="boxes")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # consistency K, jitter, min_area, seed, ...
    code_version: Mapped[str] = mapped_column(String(40))
    config_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20), default="segment")  # segment | train
    state: Mapped[str] = mapped_column(String(12), default=RunState.active.value, server_default="active")
    state_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the secret of export --deidentify's pseudonyms, drawn at the first such export (migration 0009)
    deid_salt: Mapped[str | None] = mapped_column(String(64))
    state_reason: Mapped[str | None] = mapped_column(Text)  # why it paused itself (None while active)
    # While a producer publishes (migration 0011): every image of the run whose published_at is before this time
    # has its message in the broker; stamps from this time on may not yet (the producer stamps at registration).
    # None: every stamp is backed by a message. The sweep and a re-submit read it; see producer/enqueue.py.
    publish_checkpoint: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    images: Mapped[list[Image]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("run_id", "key", name="uq_images_run_key"),
        # status and progress in one index-only scan (migration 0007); also serves (run_id, status) lookups
        Index("ix_images_run_status_progress", "run_id", "status", "finished_at", "n_segments"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(10), default=ImageStatus.queued.value)
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # stage -> seconds
    worker_host: Mapped[str | None] = mapped_column(String(255))
    gt_mask_key: Mapped[str | None] = mapped_column(Text)  # full URL of the ground-truth mask, if any
    n_segments: Mapped[int | None] = mapped_column(Integer)
    # the image appears in the run's annotation file (RSNA: a Target=0 row makes a labelled negative); NULL:
    # nobody labelled it (or the run predates migration 0004). Only labelled images count in the RSNA metric.
    labelled: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Leases (worker/leases.py): the message (Celery task id) whose batch holds the image, the worker process,
    # and until when; a lease past its expiry belongs to nobody. published_at: a message naming the image was
    # handed to the broker (a re-submit publishes only images without one), or, from the producer, is about to
    # be: it stamps at registration, and Run.publish_checkpoint says up to when the stamps are backed.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_worker: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    run: Mapped[Run] = relationship(back_populates="images")
    segments: Mapped[list[Segment]] = relationship(back_populates="image", cascade="all, delete-orphan")


class Segment(Base):
    """One prompt decoded on one variant of one image."""

    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("image_id", "variant", "prompt_index", name="uq_segments_image_variant_prompt"),
        Index("ix_segments_run_variant", "run_id", "variant"),
        # the report's best and worst cases: ORDER BY dice (or score) LIMIT n within a run (migration 0007)
        Index("ix_segments_run_dice", "run_id", "dice"),
        Index("ix_segments_run_score", "run_id", "score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    variant: Mapped[str] = mapped_column(String(64))
    prompt_index: Mapped[int] = mapped_column(Integer)
    prompt_kind: Mapped[str] = mapped_column(String(10), default="box")  # box | point | auto
    prompt: Mapped[list[Any]] = mapped_column(JSON)  # XYXY box or [x, y] point
    score: Mapped[float | None] = mapped_column(Float)  # chosen mask's predicted IoU
    scores: Mapped[list[Any] | None] = mapped_column(JSON)  # all multimask predicted IoUs
    chosen: Mapped[int | None] = mapped_column(Integer)
    stability: Mapped[float | None] = mapped_column(Float)
    consistency_std: Mapped[float | None] = mapped_column(Float)
    consistency_iou: Mapped[float | None] = mapped_column(Float)  # mean pairwise IoU of perturbed masks
    consistency_iou_base: Mapped[float | None] = mapped_column(Float)  # mean IoU to the unperturbed mask
    perturbations: Mapped[list[Any] | None] = mapped_column(JSON)  # [[x1,y1,x2,y2,score], ...]
    area: Mapped[int | None] = mapped_column(Integer)
    mask_boxes: Mapped[list[Any] | None] = mapped_column(JSON)  # XYXY boxes of components > min_area
    mask_key: Mapped[str | None] = mapped_column(Text)
    dice: Mapped[float | None] = mapped_column(Float)
    iou: Mapped[float | None] = mapped_column(Float)
    nsd: Mapped[float | None] = mapped_column(Float)
    hd95: Mapped[float | None] = mapped_column(Float)
    # unit of hd95 and of the NSD tolerance: "mm" (the image's pixel spacing was known) or "px"; NULL without
    # ground truth, or written before migration 0004 (then px)
    surface_unit: Mapped[str | None] = mapped_column(String(2))
    box_iou: Mapped[float | None] = mapped_column(Float)
    inside_box: Mapped[float | None] = mapped_column(Float)
    # Dice of the filled prompt box against the same ground truth: what a mask must beat to add to its prompt
    box_dice: Mapped[float | None] = mapped_column(Float)

    image: Mapped[Image] = relationship(back_populates="segments")


class Annotation(Base):
    """A ground-truth box of a run's image (XYXY), imported once at submit."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("run_id", "image_key", "index", name="uq_annotations_run_key_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_key: Mapped[str] = mapped_column(String(1024))
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10), default="box")  # box | point
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)
    label: Mapped[int] = mapped_column(Integer, default=1)


class ModelWork(Base):
    """Append-only: one row per image handed to the image encoder, committed *before* the encoder runs, so the
    work of a process killed mid-batch is counted too. Rows per image above one are model work done twice."""

    __tablename__ = "model_work"
    __table_args__ = (Index("ix_model_work_run", "run_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(Integer)  # no foreign key: the record outlives nothing, costs no lock
    worker: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SegObject(Base):
    """The DICOM-SEG of one image and variant (migration 0005): where it is stored, or why it could not be built,
    and whether the STOW-RS target has it (``stored`` | ``failed`` | NULL when the run sends none); the same for
    its TID 1500 SR (``sr_*``, migration 0009)."""

    __tablename__ = "seg_objects"
    __table_args__ = (
        UniqueConstraint("image_id", "variant", name="uq_seg_objects_image_variant"),
        Index("ix_seg_objects_run", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    variant: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str | None] = mapped_column(Text)  # full URL of the .dcm; NULL while seg_error is set
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    segments: Mapped[int | None] = mapped_column(Integer)
    seg_error: Mapped[str | None] = mapped_column(Text)
    stow_status: Mapped[str | None] = mapped_column(String(10))
    stow_error: Mapped[str | None] = mapped_column(Text)
    # its TID 1500 SR (--output png,dicom-seg,dicom-sr; migration 0009): the same four facts as the SEG's
    sr_key: Mapped[str | None] = mapped_column(Text)  # full URL of the SR .dcm; NULL while sr_error is set
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sr_error: Mapped[str | None] = mapped_column(Text)
    sr_stow_status: Mapped[str | None] = mapped_column(String(10))
    sr_stow_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
