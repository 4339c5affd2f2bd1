"""What went wrong with a service, in words: the known failures (connection refused, authentication failed, missing
tables, bucket not found, permission denied, DNS failure, timeouts) as a short reason, and addresses without their
credentials. Text only: it imports nothing of the package and no client library (exceptions are recognised by their
class names and messages), so every layer can word a failure the same way — the command line's one error handler
and preflight (``preflight.py``), the worker's pause reason (``worker/batch.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

#: The one wording per known failure (substrings of lower-cased messages, first match wins).
_KNOWN: tuple[tuple[tuple[str, ...], str], ...] = (
    (("no such table", "undefinedtable", "relation \"runs\" does not exist", "relation \"images\" does not exist"),
     "has no PixelPerfect tables yet: run `pixelperfect db upgrade` (or submit a run, which creates them)"),
    (("password authentication failed", "authentication failed", "wrongpass", "noauth", "invalid username-password",
      "invalidaccesskeyid", "signaturedoesnotmatch", "access key id you provided does not exist"),
     "authentication failed (check the user and password or keys)"),
    (("nosuchbucket", "specified bucket does not exist"), "bucket not found"),
    (("accessdenied", "access denied", "permission denied", "forbidden", "not authorized", "readonly"),
     "permission denied"),
    (("could not translate host name", "name or service not known", "temporary failure in name resolution",
      "nodename nor servname", "getaddrinfo failed", "no address associated with hostname", "name resolution"),
     "DNS failure: the host name does not resolve"),
    (("connection refused", "error 111", "errno 111", "could not connect to the endpoint url",
      "refused the association", "association rejected", "association request failed",
      "failed to establish a new connection"),
     "connection refused (is the service running there?)"),
    (("unable to open database file",), "cannot open the database file (a missing or unwritable directory?)"),
    (("database \"",), ""),  # 'database "x" does not exist': its own words below
    (("timed out", "timeout"), "timed out"),
    (("no route to host", "network is unreachable"), "no route to the host (network unreachable)"),
    (("unable to locate credentials", "nocredentialserror"),
     "no credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"),
)  # fmt: skip


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (``__cause__``, ``__context__``), once each."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message (its class name when it has none), at most ``limit`` chars."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def reason(exc: BaseException) -> str:
    """A short reason for ``exc`` (and what it was raised from): a known failure in one wording, else its first
    line."""
    texts = [f"{type(e).__name__} {e}".lower() for e in chain(exc)]
    for needles, words in _KNOWN:
        for text in texts:
            if any(n in text for n in needles):
                if not words:  # database "name" does not exist: the server's own words are the clearest
                    match = re.search(r'database "[^"]*" does not exist', text)
                    if match:
                        return f"{match.group(0)} (create it, or fix the name)"
                    continue
                return words
    return first_line(exc)


def is_known(exc: BaseException) -> bool:
    """Whether :func:`reason` recognises ``exc`` as one of the known failures (rather than quoting it)."""
    return reason(exc) != first_line(exc) or any(
        type(e).__name__ in ("ConnectionRefusedError", "PermissionError", "gaierror") for e in chain(exc)
    )


def redact(url: str | None) -> str:
    """``url`` without its password (``redis://:***@host:6379/0``); anything else unchanged; ``unset`` for None."""
    if not url:
        return "unset"
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty string of ``secrets`` (passwords, keys) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def password_of(url: str | None) -> str | None:
    """The password inside ``url``, if any (for :func:`scrub`)."""
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None
