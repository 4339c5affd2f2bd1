"""The notebook API's functions: ``submit``, ``runs``, ``run``, ``compare`` (``import pixelperfect as pp``).

Settings are the command line's (:class:`pixelperfect.config.Settings`, environment ``PIXELPERFECT_*``); an
explicit argument (``database_url=``, ``store_url=``, ``broker_url=`` or a whole ``settings=``) overrides the
environment and, like a command's options, is installed process-wide (``config.use_settings``) so the embedded
worker code sees the same object. :func:`submit` takes ``pixelperfect submit``'s path: the same request builder
(:func:`pixelperfect.producer.request.submit_request`) and the same ``embedded.submit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pixelperfect.api.handle import Run
from pixelperfect.config import Settings, get_settings, use_settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from pixelperfect.producer.dryrun import Plan


def resolve_settings(settings: Settings | None = None, **overrides: Any) -> Settings:
    """``settings`` (default: the process-wide ones, from the environment) with the non-``None`` ``overrides``;
    installed process-wide when anything was given, as a command's options are."""
    base = settings or get_settings()
    values = {k: v for k, v in overrides.items() if v is not None}
    chosen = base.model_copy(update=values) if values else base
    if chosen is not get_settings():
        use_settings(chosen)
    return chosen


def submit(
    source: str,
    run: str,
    *,
    model: str | None = None,
    checkpoint: str | None = None,
    annotations: str | None = None,
    annotations_format: str = "rsna",
    gt_masks: str | None = None,
    variants: Sequence[str] = ("raw",),
    prompts: str | None = None,
    points: str | None = None,
    manifest: str | None = None,
    consistency_k: int = 4,
    seed: int = 0,
    batch_size: int | None = None,
    pixel_spacing: str | None = None,
    wait: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    database_url: str | None = None,
    store_url: str | None = None,
    broker_url: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> Any:
    """Create or resume run ``run`` over ``source`` — ``pixelperfect submit``, same options, same code — and
    return its :class:`Run`. Embedded (no broker) it runs here and returns when done; with a broker it returns
    once the run is published (``wait=False``) or once no image is queued (``wait=True``, a progress bar with
    ``progress``). ``dry_run``: return the :class:`~pixelperfect.producer.dryrun.Plan` and change nothing.
    ``options``: the rest of ``submit``'s options by their Python names (``output``, ``stow_to``, ``filters``,
    ``nsd_tolerance``, ``points_per_side``, ``allow_version_change``, ...). ``broker_url=""`` runs embedded even
    where ``PIXELPERFECT_BROKER_URL`` is set. Raises ``SubmitError`` (a ``ValueError``) for a submission that cannot
    run."""
    from pixelperfect.embedded import submit as do_submit
    from pixelperfect.producer.request import submit_request

    chosen = resolve_settings(settings, database_url=database_url, store_url=store_url, broker_url=broker_url)
    req = submit_request(
        source,
        run,
        chosen,
        variants=variants,
        model=model,
        checkpoint=checkpoint,
        annotations=annotations,
        annotations_format=annotations_format,
        gt_masks=gt_masks,
        prompts=prompts,
        points=points,
        manifest=manifest,
        consistency_k=consistency_k,
        seed=seed,
        batch_size=batch_size,
        pixel_spacing=pixel_spacing,
        **options,
    )
    if dry_run:
        from pixelperfect.producer.dryrun import plan

        return plan(req, chosen)
    do_submit(req, chosen)
    handle = Run(run, chosen)
    if wait and not chosen.embedded:
        handle.wait(progress=progress)
    return handle


def plan(source: str, run: str, **kwargs: Any) -> Plan:
    """``submit(..., dry_run=True)``: what the submission would start (``Plan.lines()`` says it in words)."""
    found: Plan = submit(source, run, dry_run=True, **kwargs)
    return found


def runs(*, database_url: str | None = None, settings: Settings | None = None) -> pd.DataFrame:
    """One row per run: name, kind, model, prompt mode, variants, state, created_at and image counts."""
    import pandas as pd
    from sqlalchemy import inspect

    from pixelperfect.db.frames import run_table
    from pixelperfect.db.session import get_engine, session_scope

    chosen = resolve_settings(settings, database_url=database_url)
    columns = ["run", "kind", "model", "prompt_mode", "variants", "state", "created_at", "images", "queued", "done",
               "failed", "cancelled"]  # fmt: skip
    if not inspect(get_engine(chosen.database_url)).has_table("runs"):
        return pd.DataFrame(columns=columns)
    with session_scope(chosen.database_url) as session:
        return pd.DataFrame(run_table(session), columns=columns)


def run(name: str, *, database_url: str | None = None, settings: Settings | None = None) -> Run:
    """The run named ``name``; ``LookupError`` naming the closest run names when there is none."""
    return Run(name, resolve_settings(settings, database_url=database_url))


def compare(
    a: str | Run | tuple[str, str],
    b: str | Run | tuple[str, str],
    *,
    metric: str | None = None,
    database_url: str | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """The report's paired comparison of ``b`` against ``a``, one row per measure (or only ``metric``), equal to
    the report's ``comparisons`` rows for the same sides. A side is ``(run, variant)``, or a run (name or
    :class:`Run`) standing for its baseline variant (``raw``, else its first)."""
    from pixelperfect.api.pairs import compare_frame

    chosen = resolve_settings(settings, database_url=database_url)
    return compare_frame(_side(a, chosen), _side(b, chosen), metric, chosen)


def findings(*names: str, database_url: str | None = None, settings: Settings | None = None) -> list[str]:
    """The report's Findings sentences for runs ``names`` (the first is the baseline of run comparisons), then
    what they cannot say: :mod:`pixelperfect.evaluation.findings` over the report's own comparisons."""
    from pixelperfect.db.session import session_scope
    from pixelperfect.evaluation.collect import collect
    from pixelperfect.evaluation.findings import finding_lines
    from pixelperfect.evaluation.findings import findings as stated

    chosen = resolve_settings(settings, database_url=database_url)
    with session_scope(chosen.database_url) as session:
        data = collect(session, list(names), full=False)
    return finding_lines(stated(data.comparisons))


def _side(side: str | Run | tuple[str, str], settings: Settings) -> tuple[str, str]:
    if isinstance(side, tuple):
        return side
    handle = side if isinstance(side, Run) else Run(side, settings)
    return handle.name, handle.baseline
