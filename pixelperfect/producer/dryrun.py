"""``pixelperfect submit --dry-run``: what a submission would start, without starting it — the images it lists
and counts, the annotations, points and ground-truth masks that match them, whether the run exists (and how much
of it is finished), and a time estimate from the throughput earlier runs of the same model recorded.

It validates the request the way :func:`pixelperfect.producer.enqueue.submit` does (variants, model, checkpoint,
prompt mode) but registers nothing, publishes nothing and creates no table: the database is only read, and only
when it already has PixelPerfect's tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixelperfect.config import Settings
from pixelperfect.inputs.annotations import stem
from pixelperfect.producer import intake
from pixelperfect.producer.enqueue import SubmitRequest, config_hash, parse_variants, run_config
from pixelperfect.producer.intake import SubmitError
from pixelperfect.producer.stream import KeyMatcher

#: Keys shown as examples of what would be submitted.
EXAMPLES = 5


@dataclass
class Plan:
    """What :func:`plan` found; ``estimate_s`` is ``None`` without any recorded throughput of the model."""

    run: str
    source: str
    model: str
    variants: list[str]
    prompt_mode: str
    images: int
    examples: list[str]
    annotated: int | None  # images with a matched annotation row (None: no annotations given)
    with_points: int | None
    with_masks: int | None
    existing: bool  # a run of this name exists
    same_config: bool | None  # ... with the same configuration (else submit would refuse it)
    finished: int  # of those images, already done or failed in the existing run (skipped on resume)
    images_per_s: float | None  # recorded throughput of the model (its runs' done images over their span)
    estimate_s: float | None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The plan as the sentences ``submit --dry-run`` prints."""
        out = [f"dry run: nothing registered, nothing published. Run {self.run!r}: {self.model} × "
               f"{', '.join(self.variants)}, {self.prompt_mode} prompts"]  # fmt: skip
        out.append(f"{self.images} images under {self.source}" + (f", e.g. {', '.join(self.examples)}"
                                                                  if self.examples else ""))  # fmt: skip
        matched = (("annotations", self.annotated), ("points", self.with_points), ("masks", self.with_masks))
        for label, n in matched:
            if n is not None:
                out.append(f"{label} matched for {n} of {self.images} images")
        if self.existing:
            out.append(
                f"run {self.run!r} exists: {self.finished} of these images are finished and would be skipped"
                if self.same_config
                else f"run {self.run!r} exists with another configuration: submit would refuse it"
            )
        todo = self.images - self.finished
        if self.estimate_s is not None and self.images_per_s:
            out.append(f"estimate: {todo} images at {self.images_per_s:.2f} images/s recorded for {self.model} "
                       f"≈ {_duration(self.estimate_s)} (recorded throughput, other hardware may differ)")  # fmt: skip
        else:
            out.append(f"estimate: none — no finished run of {self.model} in this database to measure it from")
        return out + self.notes


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def plan(req: SubmitRequest, settings: Settings) -> Plan:
    """List and count what ``submit`` would take (see the module docstring); ``SubmitError`` as submit's."""
    from sqlalchemy import inspect

    from pixelperfect.db import frames, repo
    from pixelperfect.db.session import get_engine, session_scope

    variants = parse_variants(req.variants)
    config = run_config(req, settings, variants)
    rsna = bool(req.annotations) and req.annotations_format == "rsna"
    listing = intake.source_listing(req.source, req.manifest, settings, config["settings"].get("filters"),
                                    track_patients=rsna)  # fmt: skip
    boxes = intake.box_matcher(req.annotations, req.annotations_format, settings, listing) if req.annotations else None
    points = KeyMatcher(intake.read_points(req.points, settings)) if req.points else None
    masks = intake.mask_index(req.gt_masks, settings) if req.gt_masks else None
    images = annotated = with_points = with_masks = 0
    examples: list[str] = []
    keys: list[str] = []
    chunk: list[str] = []

    def take(chunk: list[str]) -> None:
        nonlocal annotated, with_points, with_masks
        if boxes is not None:
            annotated += len(boxes.match(chunk))
        if points is not None:
            with_points += len(points.match(chunk))
        if masks is not None:
            with_masks += sum(1 for k in chunk if stem(k) in masks)

    for key in intake.list_keys(req.source, req.manifest, settings, listing):
        images += 1
        if len(examples) < EXAMPLES:
            examples.append(key)
        chunk.append(key)
        if len(chunk) >= 10_000:
            take(chunk)
            keys += chunk
            chunk = []
    take(chunk)
    keys += chunk
    if not images:
        raise SubmitError(f"no images under {req.source}")
    existing = same = False
    finished, rate = 0, None
    if inspect(get_engine(settings.database_url)).has_table("runs"):
        with session_scope(settings.database_url) as session:
            row = repo.get_run(session, name=req.run)
            if row is not None:
                existing, same = True, row.config_hash == config_hash(config)
                finished = frames.finished_among(session, run_id=row.id, keys=keys) if same else 0
            rate = frames.model_throughput(session, model=config["model"])
    estimate = (images - finished) / rate if rate else None
    return Plan(
        run=req.run,
        source=req.source,
        model=config["model"],
        variants=[v.name for v in variants],
        prompt_mode=str(config["prompt_mode"]),
        images=images,
        examples=examples,
        annotated=annotated if boxes is not None else None,
        with_points=with_points if points is not None else None,
        with_masks=with_masks if masks is not None else None,
        existing=existing,
        same_config=same if existing else None,
        finished=finished,
        images_per_s=rate,
        estimate_s=estimate,
    )
