"""Per-process handles — model, stores, run configs — created lazily, after any fork, and reused by every task.

A Celery prefork child inherits the parent's memory; nothing here is created before the fork (the parent never
touches the model), and :func:`reset_after_fork` drops whatever a parent did create.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from pixelperfect.config import MIN_AREA, RANDOM_CHECKPOINT, SAM2_MODEL_NAMES, Settings, get_settings
from pixelperfect.pipeline.model.builder import build_segmenter, dependency_problem
from pixelperfect.pipeline.model.hf_checkpoint import HfCheckpoint, read_hf_checkpoint
from pixelperfect.pipeline.model.protocol import Segmenter
from pixelperfect.pipeline.model.weights import sha256_hex
from pixelperfect.pipeline.options import AutoSettings, ConceptSettings, Jitter, ProcessSettings, PromptMode
from pixelperfect.pipeline.preprocess.variants import Variant, parse_variant
from pixelperfect.storage import ObjectStore, open_store, read_directory, read_url
from pixelperfect.version import ALLOW_VERSION_CHANGE, CODE_VERSION, VERSION_CHANGED

#: The failure reason of images whose model this worker cannot run (a package missing or too old)
MISSING_DEPENDENCY = "missing_dependency"


class CheckpointMismatchError(RuntimeError):
    """The checkpoint a worker can read is not the one the run was created with."""


@dataclass(frozen=True)
class RunSpec:
    """What a worker needs of a run row (immutable, so cached per process)."""

    id: int
    name: str
    source_url: str
    store_url: str
    model: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    variants: tuple[Variant, ...]
    process: ProcessSettings
    outputs: tuple[str, ...] = ("png",)  # png | png + dicom-seg | png + dicom-seg + dicom-sr
    stow_to: str | None = None  # the archive the SEGs are sent to (STOW-RS or C-STORE)
    code_version: str | None = None  # the code that created the run (pixelperfect.version)
    research_use: bool = True  # its DICOM objects say RESEARCH USE ONLY (runs.settings "research_use", default)

    @classmethod
    def from_row(cls, run: Any) -> RunSpec:
        s = run.settings or {}
        jitter = Jitter(
            k=int(s.get("consistency_k", 4)),
            shift=int(s.get("jitter_shift", 5)),
            scale=float(s.get("jitter_scale", 0.1)),
        )
        variants = tuple(parse_variant(f"{v['name']}={v['spec']}") for v in run.variants)
        for declared, built in zip(run.variants, variants, strict=True):
            if built.spec_hash != declared["hash"]:
                raise RuntimeError(
                    f"variant {declared['name']!r} hashes to {built.spec_hash} here but {declared['hash']} in the "
                    "run: this worker's preprocessing code differs from the producer's"
                )
        return cls(
            id=run.id,
            name=run.name,
            source_url=run.source_url,
            store_url=run.store_url,
            model=run.model,
            checkpoint=run.checkpoint,
            checkpoint_sha256=run.checkpoint_sha256,
            variants=variants,
            process=ProcessSettings(
                jitter=jitter,
                min_area=int(s.get("min_area", MIN_AREA)),
                seed=int(s.get("seed", 0)),
                prompt_mode=PromptMode(run.prompt_mode or PromptMode.boxes),
                nsd_tolerance=float(s.get("nsd_tolerance", 2.0)),
                # a run from before millimetres has no mm tolerance: its segments stay in px, as they were
                nsd_tolerance_mm=None if s.get("nsd_tolerance_mm") is None else float(s["nsd_tolerance_mm"]),
                pixel_spacing=tuple(s["pixel_spacing"]) if s.get("pixel_spacing") else None,  # type: ignore[arg-type]
                auto=AutoSettings.from_dict(s.get("auto")),
                concept=ConceptSettings.from_dict(s.get("concept")),
            ),
            outputs=tuple(s.get("outputs") or ("png",)),
            stow_to=s.get("stow_to"),
            code_version=run.code_version,
            research_use=bool(s.get("research_use", True)),
        )


@dataclass
class Runtime:
    settings: Settings
    pid: int = field(default_factory=os.getpid)
    _stores: dict[str, ObjectStore] = field(default_factory=dict)
    _segmenters: dict[tuple[str, str | None], Segmenter] = field(default_factory=dict)
    _runs: dict[int, RunSpec] = field(default_factory=dict)
    _version_accepted: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self, url: str) -> ObjectStore:
        """The store at ``url`` (``s3://``, ``file://``, a ``dicomweb+http(s)://`` PACS with this runtime's
        DICOMweb credentials, or a ``dimse://`` archive, whose fetch association this process then reuses), opened
        once per process."""
        with self._lock:
            if url not in self._stores:
                self._stores[url] = open_store(url, self.settings)
            return self._stores[url]

    def segmenter(self, run: RunSpec) -> Segmenter:
        """The run's model, loaded on first use in this process and kept (never per task)."""
        key = (run.model, run.checkpoint)
        with self._lock:
            if key not in self._segmenters:
                data: Any = None
                if run.model == "sam3":  # a Hugging Face directory: sha256 over its weight files
                    data = read_sam3_dir(run, self.settings)
                elif run.checkpoint and run.checkpoint != RANDOM_CHECKPOINT:
                    data, sha = self._read_checkpoint(run)
                    if run.checkpoint_sha256 and sha != run.checkpoint_sha256:
                        raise CheckpointMismatchError(
                            f"checkpoint {run.checkpoint} has sha256 {sha[:12]}…, the run was "
                            f"created with {run.checkpoint_sha256[:12]}…"
                        )
                self._segmenters[key] = build_segmenter(
                    run.model,
                    data,
                    self.settings.device,
                    encoder_batch=self.settings.encoder_batch,
                    precision=self.settings.precision,
                    compile_encoder=self.settings.compile_encoder,
                )
            return self._segmenters[key]

    def _read_checkpoint(self, run: RunSpec) -> tuple[bytes | HfCheckpoint, str]:
        """The run's checkpoint and its sha256: a SAM v1 file's bytes, or a SAM 2 Hugging Face directory (its
        ``config.json`` and weight files; the sha256 over the weight files, as the producer recorded it)."""
        url = str(run.checkpoint)
        if run.model not in SAM2_MODEL_NAMES:
            data = read_url(url, endpoint_url=self.settings.s3_endpoint_url)
            return data, sha256_hex(data)
        found = read_hf_checkpoint(
            lambda name: read_url(f"{url.rstrip('/')}/{name}", endpoint_url=self.settings.s3_endpoint_url), url
        )
        return found, found.sha256

    def dependency_refusal(self, run: RunSpec) -> str | None:
        """Why this worker cannot run the run's model at all — a package it needs is missing or too old — or None.
        Permanent for this process: its images fail at once with reason ``missing_dependency`` (no retries)."""
        problem = dependency_problem(run.model)
        return None if problem is None else str(problem)

    def version_refusal(self, run: RunSpec) -> str | None:
        """Why this worker refuses the run's images — it runs other code than the run was created with and the
        user has not accepted that (``submit --allow-version-change``, kept in ``runs.settings``) — or None. The
        permission is read afresh while it is missing (it may be given while this process holds the run spec)."""
        if run.code_version == CODE_VERSION or run.id in self._version_accepted:
            return None
        from pixelperfect.db import repo
        from pixelperfect.db.session import session_scope

        with session_scope(self.settings.database_url) as session:
            row = repo.get_run_by_id(session, run_id=run.id)
            accepted = row is not None and bool((row.settings or {}).get(ALLOW_VERSION_CHANGE))
        if accepted:
            self._version_accepted.add(run.id)
            return None
        return (
            f"this worker runs code {CODE_VERSION}, run {run.name!r} was created with {run.code_version}: its "
            "results would mix two versions. Re-submit the run with --allow-version-change to accept that (its "
            f"images refused as {VERSION_CHANGED} are queued again), or run workers of {run.code_version}"
        )

    def run_spec(self, run_id: int) -> RunSpec:
        if run_id not in self._runs:
            from pixelperfect.db import repo
            from pixelperfect.db.session import session_scope

            with session_scope(self.settings.database_url) as session:
                row = repo.get_run_by_id(session, run_id=run_id)
                if row is None:
                    raise LookupError(f"run id {run_id} does not exist in {self.settings.database_url}")
                self._runs[run_id] = RunSpec.from_row(row)
        return self._runs[run_id]


def read_sam3_dir(run: RunSpec, settings: Settings) -> dict[str, bytes]:
    """The files of a ``sam3`` run's checkpoint directory, checked against the run's sha256."""
    from pixelperfect.pipeline.model.sam3_files import wanted, weights_sha256

    if not run.checkpoint:
        raise CheckpointMismatchError(f"run {run.name!r} (sam3) has no checkpoint directory")
    files = read_directory(run.checkpoint, wanted, endpoint_url=settings.s3_endpoint_url)
    digest = weights_sha256(files)
    if run.checkpoint_sha256 and digest != run.checkpoint_sha256:
        raise CheckpointMismatchError(
            f"checkpoint {run.checkpoint} has weights sha256 {digest[:12]}…, the run was created with "
            f"{run.checkpoint_sha256[:12]}…"
        )
    return files


_RUNTIME: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's runtime for the current settings: a new one after a fork or when the process-wide settings
    object was replaced (``config.use_settings``), so handles never outlive the settings they were made from."""
    global _RUNTIME
    settings = get_settings()
    if _RUNTIME is None or _RUNTIME.pid != os.getpid() or _RUNTIME.settings is not settings:
        _RUNTIME = Runtime(settings)
    return _RUNTIME


def reset_after_fork() -> None:
    """Called in each new worker child: fresh runtime, fresh DB engines (never the parent's sockets)."""
    global _RUNTIME
    from pixelperfect.db.session import dispose_inherited_engines

    _RUNTIME = None
    dispose_inherited_engines()
