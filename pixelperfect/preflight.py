"""Preflight: what a command will need, tried before it starts, each answer one line naming the setting and the
address (never a password).

- **database** (``PIXELPERFECT_DATABASE_URL``): reachable; for ``submit`` migrated (Alembic, as the last check, so a
  failed check leaves nothing behind); for commands that read runs, its tables must exist;
- **broker** (``PIXELPERFECT_BROKER_URL``): reachable, when one is set (unset: embedded, nothing to reach);
- **store** (``PIXELPERFECT_STORE_URL``, through ``PIXELPERFECT_S3_ENDPOINT_URL`` for S3): writable — a marker
  object written under the run's prefix (``<run>/.pixelperfect-preflight-<random>``) and deleted;
- **source** (the ``SOURCE`` argument): listable (its first entry), unless a manifest names the keys.

``submit`` runs them all before it registers anything, ``worker`` the database, broker and store at start, and
``pixelperfect doctor`` every one of them into a table. :func:`explain` words the same known failures (connection
refused, authentication failed, missing tables, bucket not found, permission denied, DNS failure) raised anywhere
else, for the command line's one error handler (``cli/common.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pixelperfect.config import Settings
from pixelperfect.failures import chain, first_line, password_of, reason, redact, scrub

#: Seconds a database or broker gets to answer a preflight connection (a silent host must not hang a command).
CONNECT_TIMEOUT_S = 5

DATABASE, BROKER, STORE, SOURCE = "database", "broker", "store", "source"


@dataclass(frozen=True)
class Check:
    """One preflight answer: ``what`` (database, broker, store, source), its ``setting`` and ``address`` (without
    credentials), ``ok``, and ``result`` in words."""

    what: str
    setting: str
    address: str
    ok: bool
    result: str

    def line(self) -> str:
        return f"{self.what} {self.address} ({self.setting}): {self.result}"


class PreflightError(RuntimeError):
    """A check failed: ``str()`` is its one line."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.line())
        self.check = check


def _secrets(settings: Settings) -> list[str | None]:
    secrets = [password_of(settings.database_url), password_of(settings.broker_url)]
    for secret in (settings.dicomweb_password, settings.dicomweb_token):
        secrets.append(secret.get_secret_value() if secret is not None else None)
    import os

    secrets.append(os.environ.get("AWS_SECRET_ACCESS_KEY"))
    return secrets


def _run(
    what: str, setting: str, address: str, settings: Settings, probe: Callable[[], str], *, s3: bool = False
) -> Check:
    """``probe()`` -> its result in words; any exception -> a failed check with :func:`reason`'s words."""
    try:
        return Check(what, setting, address, True, probe())
    except PreflightError as exc:
        return exc.check
    except Exception as exc:
        words = scrub(reason(exc), _secrets(settings))
        if s3 and settings.s3_endpoint_url and "connection refused" in words:
            setting = f"{setting}, S3 endpoint {settings.s3_endpoint_url} (PIXELPERFECT_S3_ENDPOINT_URL)"
        return Check(what, setting, address, False, words)


# --- the checks -------------------------------------------------------------------------------------------------


def check_database(settings: Settings, *, migrate: bool = False, tables: bool = False) -> Check:
    """Reachable and at which schema revision; ``migrate``: brought to head; ``tables``: they must exist."""
    url = settings.database_url
    address = redact(url)

    def probe() -> str:
        from pixelperfect.db.migrate import head, schema_revision, upgrade

        current, has_tables = schema_revision(url, connect_timeout=CONNECT_TIMEOUT_S)
        latest = head()
        if current == latest:
            return f"reachable, schema at {current}"
        if migrate:
            upgrade(url)
            return f"reachable, schema migrated {current or 'from empty'} -> {latest}"
        if not has_tables:
            if tables:
                raise PreflightError(
                    Check(DATABASE, "PIXELPERFECT_DATABASE_URL", address, False, reason(RuntimeError("no such table")))
                )
            return "reachable, no PixelPerfect tables yet (the first submit creates them)"
        if current is None:
            return "reachable, tables made without Alembic (no revision recorded)"
        return f"reachable, schema at {current}, this code's is {latest}: run `pixelperfect db upgrade`"

    return _run(DATABASE, "PIXELPERFECT_DATABASE_URL", address, settings, probe)


def check_broker(settings: Settings) -> Check:
    """The broker answers (a connection and, for Redis, a PING); unset: embedded, nothing to check."""
    if settings.embedded:
        return Check(BROKER, "PIXELPERFECT_BROKER_URL", "unset", True, "embedded: images run in this process")

    def probe() -> str:
        from pixelperfect.broker.celery_app import make_celery

        app = make_celery(settings)
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT_S)
        return "reachable"

    return _run(BROKER, "PIXELPERFECT_BROKER_URL", redact(settings.broker_url), settings, probe)


def check_store(settings: Settings, *, run: str | None = None, quick: bool = True) -> Check:
    """The results store takes a small object under the run's prefix (deleted again at once). ``quick``: an S3
    client that tries twice (an answer in a second); else the workers' own retries (a flaky store passes)."""

    def probe() -> str:
        from pixelperfect.storage import join_key, open_store

        store = open_store(settings.store_url, settings, probe=quick)
        key = join_key(run or "", f".pixelperfect-preflight-{uuid.uuid4().hex[:12]}")
        store.put(key, b"preflight", "text/plain")
        try:
            store.delete_many([key])
        except Exception as exc:  # writable is what counts; a left marker is named
            return f"writable (the marker {key} could not be deleted: {reason(exc)})"
        return "writable"

    return _run(STORE, "PIXELPERFECT_STORE_URL", redact(settings.store_url), settings, probe,
                s3=settings.store_url.startswith("s3://"))  # fmt: skip


def check_source(settings: Settings, source: str, *, filters: Any = None) -> Check:
    """The source lists (its first entry is read; an empty source is named)."""

    def probe() -> str:
        from pixelperfect.storage import open_store

        quick = {"dicomweb_attempts": 1, "dimse_attempts": 1, "dicomweb_timeout_s": 10.0, "dimse_timeout_s": 10.0}
        store = open_store(source, settings.model_copy(update=quick), probe=True)
        first = next(iter(store.entries(filters or None)), None)
        return "listable" if first is not None else "listable, but empty"

    return _run(SOURCE, "SOURCE", redact(source), settings, probe, s3=source.startswith("s3://"))


# --- what each command needs ------------------------------------------------------------------------------------


def require(checks: Sequence[Callable[[], Check]]) -> list[Check]:
    """Run ``checks`` in order; raise :class:`PreflightError` with the first that fails."""
    done = []
    for run_check in checks:
        check = run_check()
        if not check.ok:
            raise PreflightError(check)
        done.append(check)
    return done


def before_submit(
    settings: Settings, *, run: str, source: str, manifest: str | None = None, filters: Any = None
) -> list[Check]:
    """``submit``: database reachable, broker, store writable, source listable (without a manifest), then the
    database migrated — nothing is written before every other check passed."""
    checks: list[Callable[[], Check]] = [
        lambda: check_database(settings),
        lambda: check_broker(settings),
        lambda: check_store(settings, run=run),
    ]
    if not manifest:
        checks.append(lambda: check_source(settings, source, filters=filters))
    checks.append(lambda: check_database(settings, migrate=True))
    return require(checks)


def before_worker(settings: Settings) -> list[Check]:
    """``worker``: database reachable, broker, store writable (its tables may come with the first submit). The
    store is tried with the retries the worker's uploads get: a worker must not refuse to start on a store that
    drops one request in five, which its uploads ride out."""
    return require(
        [lambda: check_database(settings), lambda: check_broker(settings), lambda: check_store(settings, quick=False)]
    )


def before_reading(settings: Settings) -> list[Check]:
    """Commands that read runs (status, runs, report, export, retry, cancel, delete): the database and its tables."""
    return require([lambda: check_database(settings, tables=True)])


def doctor(settings: Settings, *, source: str | None = None) -> list[Check]:
    """Every check, none skipped after a failure (``pixelperfect doctor``): nothing is migrated."""
    checks = [check_database(settings), check_broker(settings), check_store(settings)]
    if source:
        checks.append(check_source(settings, source))
    return checks


# --- known failures raised anywhere -----------------------------------------------------------------------------

_DB_MODULES = ("sqlalchemy", "psycopg", "sqlite3")
_BROKER_MODULES = ("redis", "kombu", "amqp")


def explain(exc: BaseException, settings: Settings) -> str | None:
    """One line for a known failure — which service, at which address (no password), under which setting, and what
    went wrong — or None for anything else (a bug: its traceback is the useful answer)."""
    if isinstance(exc, PreflightError):
        return str(exc)
    for e in chain(exc):
        module = type(e).__module__.split(".")[0]
        name = type(e).__name__
        if name == "SourceUnavailableError":
            return scrub(first_line(e, 400), _secrets(settings))
        if module in _DB_MODULES and name not in ("ArgumentError",):
            what = "database", "PIXELPERFECT_DATABASE_URL", redact(settings.database_url)
        elif module in _BROKER_MODULES:
            what = "broker", "PIXELPERFECT_BROKER_URL", redact(settings.broker_url)
        elif module in ("botocore", "boto3"):
            what = _s3_what(e, settings)
        elif isinstance(e, (ConnectionRefusedError, PermissionError)) or name == "gaierror":
            where = getattr(e, "filename", None)
            return scrub(f"{where + ': ' if where else ''}{reason(e)}", _secrets(settings))
        else:
            continue
        words = scrub(reason(exc), _secrets(settings))
        return f"{what[0]} {what[2]} ({what[1]}): {words}"
    return None


def _s3_what(exc: BaseException, settings: Settings) -> tuple[str, str, str]:
    kwargs = getattr(exc, "kwargs", None) or {}
    endpoint = kwargs.get("endpoint_url") or settings.s3_endpoint_url or "AWS"
    response = getattr(exc, "response", None) or {}
    bucket = (response.get("Error") or {}).get("BucketName")
    if bucket:
        return f"S3 bucket {bucket!r} at", "PIXELPERFECT_S3_ENDPOINT_URL", str(endpoint)
    return "S3 endpoint", "PIXELPERFECT_S3_ENDPOINT_URL", str(endpoint)
