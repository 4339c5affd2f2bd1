"""Operations commands: ``pixelperfect retry RUN [--reason TEXT]`` re-enqueues a run's failed images.

Images fail for reasons stored on their rows (``pixelperfect status RUN`` lists them): bad input files
(``truncated``, ``colour``, ...) fail again on retry, infrastructure that was fixed since (``batch_error`` after a
checkpoint was restored, ``missing`` after an object was uploaded) does not. ``--reason`` picks one kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import typer

from pixelperfect.config import Settings


@dataclass
class RetryResult:
    run_id: int
    run: str
    images: int  # images set back to queued
    batches: int
    reasons: dict[str, int]  # failure reason -> images, before the retry


def retry_failed(
    run: str, settings: Settings, *, reason: str | None = None, batch_size: int | None = None
) -> RetryResult:
    """Set the failed images of ``run`` (only those failed with ``reason``, if given) back to queued and enqueue
    them in batches of ``batch_size`` (default ``settings.batch_size``); embedded, run them here.

    The rows are requeued before the messages are published: should publishing fail, the images stay queued and
    re-submitting the run (which enqueues every queued image) picks them up. Raises ``LookupError`` for an
    unknown run and ``ValueError`` for a bad ``batch_size``.
    """
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope
    from pixelperfect.producer.enqueue import dispatch

    size = batch_size or settings.batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, not {size}")
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=run)
        if row is None:
            raise LookupError(f"no run named {run!r} in the database")
        run_id = row.id
        reasons = repo.failure_counts(session, run_id=run_id)
        keys = repo.keys_with_status(session, run_id=run_id, statuses=["failed"], reason=reason)
        repo.requeue(session, run_id=run_id, keys=keys)
    batches = [keys[i : i + size] for i in range(0, len(keys), size)]
    if batches:
        dispatch(run_id, run, batches, settings)
    return RetryResult(run_id, run, len(keys), len(batches), reasons)


def retry(
    run: str = typer.Argument(..., help="run name"),
    reason: str | None = typer.Option(
        None, "--reason", help="only images failed with this reason (e.g. batch_error, missing); default: all"
    ),
    batch_size: int | None = typer.Option(None, min=1, help="images per task (default: PIXELPERFECT_BATCH_SIZE)"),
    wait: bool = typer.Option(False, help="distributed: wait until the retried images are done or failed"),
) -> None:
    """Re-enqueue the failed images of RUN, after fixing what failed them; they end done (or failed again)."""
    from pixelperfect import cli

    settings = cli._settings()
    try:
        result = retry_failed(run, settings, reason=reason, batch_size=batch_size)
    except (LookupError, ValueError) as exc:
        cli.fail(str(exc))
        return
    before = ", ".join(f"{r}: {n}" for r, n in sorted(result.reasons.items())) or "none"
    if not result.images:
        cli.console.print(
            f"run [bold]{run}[/]: no failed images{f' with reason {reason!r}' if reason else ''} (failures: {before})"
        )
        return
    mode = "ran in-process" if settings.embedded else f"enqueued {result.batches} batch(es) on queue 'gpu'"
    cli.console.print(f"run [bold]{run}[/]: {result.images} failed image(s) re-queued ({before}); {mode}")
    if wait and not settings.embedded:
        cli._wait(result.run_id, run, settings)
    cli._print_status(run, settings, as_json=False)


def register(app: typer.Typer) -> None:
    app.command("retry")(retry)
