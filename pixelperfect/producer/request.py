"""One submission's :class:`SubmitRequest` from its options, shared by ``pixelperfect submit`` and
``pixelperfect.submit`` (the notebook API), so both take the same path: saved variant names resolved, the pixel
spacing parsed, the run-level :class:`ProcessSettings` built with the same defaults."""

from __future__ import annotations

from collections.abc import Sequence

from pixelperfect.config import Settings
from pixelperfect.pipeline.decode.spacing import parse_spacing_option
from pixelperfect.pipeline.options import AutoSettings, ConceptSettings, Jitter, ProcessSettings
from pixelperfect.producer.enqueue import SubmitRequest
from pixelperfect.producer.saved_variants import resolve_variants

#: The variants file ``pixelperfect tune --save`` writes and both front ends read by default.
VARIANTS_FILE = "pixelperfect-variants.toml"


def submit_request(
    source: str,
    run: str,
    settings: Settings,
    *,
    variants: Sequence[str] = ("raw",),
    variants_file: str = VARIANTS_FILE,
    model: str | None = None,
    checkpoint: str | None = None,
    annotations: str | None = None,
    annotations_format: str = "rsna",
    gt_masks: str | None = None,
    batch_size: int | None = None,
    consistency_k: int = 4,
    seed: int = 0,
    prompts: str | None = None,
    points: str | None = None,
    manifest: str | None = None,
    nsd_tolerance: float = 2.0,
    nsd_tolerance_mm: float = 2.0,
    pixel_spacing: str | None = None,
    points_per_side: int = 16,
    lung_only: bool = True,
    auto_min_score: float = 0.88,
    auto_min_stability: float = 0.95,
    republish: bool = False,
    output: str = "png",
    stow_to: str | None = None,
    filters: Sequence[str] = (),
    allow_version_change: bool = False,
    exemplars: str | None = None,
    exemplars_format: str = "csv",
    concept: ConceptSettings | None = None,
) -> SubmitRequest:
    """The request ``pixelperfect submit`` builds from these options; ``ValueError`` names a bad variant or
    spacing."""
    spacing = parse_spacing_option(pixel_spacing) if pixel_spacing else None
    resolved = resolve_variants(list(variants), variants_file)
    return SubmitRequest(
        source=source,
        run=run,
        variants=resolved,
        model=model,
        checkpoint=checkpoint,
        annotations=annotations,
        annotations_format=annotations_format,
        gt_masks=gt_masks,
        batch_size=batch_size,
        prompts=prompts,
        points=points,
        exemplars=exemplars,
        exemplars_format=exemplars_format,
        manifest=manifest,
        republish=republish,
        allow_version_change=allow_version_change,
        outputs=(output,),
        stow_to=stow_to,
        filters=list(filters),
        process=ProcessSettings(
            jitter=Jitter(k=consistency_k),
            min_area=settings.min_area,
            seed=seed,
            nsd_tolerance=nsd_tolerance,
            nsd_tolerance_mm=nsd_tolerance_mm,
            pixel_spacing=spacing,
            auto=AutoSettings(
                points_per_side=points_per_side,
                lung_only=lung_only,
                min_score=auto_min_score,
                min_stability=auto_min_stability,
            ),
            concept=concept if concept is not None else ConceptSettings(),
        ),
    )
