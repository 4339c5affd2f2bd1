"""A DICOM archive that speaks only DIMSE (classic DICOM networking), as an object store: C-FIND lists, C-GET reads,
C-STORE writes (pynetdicom).

URL: ``dimse://CALLED_AE@HOST:PORT`` (port 104 when left out): the archive's AE title, host and DICOM port. Our
calling AE title is a setting (``PIXELPERFECT_DIMSE_AE_TITLE``, default ``PIXELPERFECT``), never part of the URL;
the archive must know it (Orthanc: ``DicomModalities`` with ``AllowFind``, ``AllowGet``, ``AllowStore``). An image
key is ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>``, as for DICOMweb.

- **Listing** (:meth:`DimseStore.entries`): Study Root C-FIND, study by study: one STUDY-level query (its answers
  kept as ``(StudyInstanceUID, PatientID)`` pairs, ~150 bytes a study), then per study one SERIES-level and per
  series one IMAGE-level query, so no response lists more than one series' instances. ``--filter`` keywords go to
  the level that holds them (:func:`filter_level`), one query per value as for DICOMweb; answers are checked
  against the filter again where the archive returns the attribute (an archive that ignores an optional key at the
  IMAGE level does not widen the run).
- **Fetching** (:meth:`DimseStore.get`): C-GET at the IMAGE level over one association per process, reused across
  a batch and opened again after a failure or :data:`IDLE_S` of silence. The association proposes the X-ray storage
  SOP classes (:data:`XRAY_STORAGE`) with the SCP role, each with every transfer syntax we decode in a presentation
  context of its own (:func:`retrieve_contexts`; at most 128, pynetdicom's and the standard's limit), so the
  archive can send each instance in the syntax it stored it in; the received dataset's encoded bytes are kept as
  sent (``encoded_dataset``: nothing is decoded and written again).
- **Sending** (:meth:`DimseStore.store`): C-STORE, one association per call, proposing each (SOP class, transfer
  syntax) of the objects sent; each refusal is returned per instance.

One retry policy (``dimse_attempts``, ``dimse_backoff_s`` doubling): an association refused (transiently),
aborted, or an operation without an answer within ``dimse_timeout_s`` is tried again on a new association, then
:class:`~pixelperfect.storage.SourceUnavailableError`; a permanent rejection (unknown called AE title) is not
retried. An instance the archive does not hold is :class:`~pixelperfect.storage.dicomkeys.InstanceNotFoundError`
(``not_found``); one it cannot send in a syntax we decode, or whose SOP class is no image, is
:class:`~pixelperfect.storage.UnsupportedObjectError` (``missing_codec``, ``not_an_image``).
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pixelperfect.storage.base import Entry, ObjectStore, SourceUnavailableError, UnsupportedObjectError
from pixelperfect.storage.dicomkeys import InstanceNotFoundError, is_image_sop_class, split_key

log = logging.getLogger(__name__)
# pynetdicom logs every refused association and aborted operation as an error (and identifiers at debug level):
# ours are logged once per retry by DimseStore._call, without identifiers
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

T = TypeVar("T")
SCHEME = "dimse://"
DEFAULT_PORT = 104
#: Seconds a fetch association may stay unused before it is released and a new one opened (Orthanc closes an idle
#: association after its DicomScpTimeout, 30 s by default).
IDLE_S = 20.0
MAX_CONTEXTS = 128  # presentation contexts of one association (PS3.8 9.3.2.2: odd context IDs 1-255)
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
#: The image storage SOP classes of radiographs that a C-GET asks for.
XRAY_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage (e.g. the RSNA Pneumonia films)
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image Storage
)
#: Transfer syntaxes a C-GET may receive, where a decoder is installed (pydicom's pixel decoders, which our fast
#: decoders only speed up): uncompressed, deflated, JPEG, JPEG lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE.
CANDIDATE_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still in old archives)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
_PENDING = (0xFF00, 0xFF01)

#: Attribute keywords matched at the STUDY and SERIES levels of the Study Root model (PS3.4 C.6.2.1, with the
#: patient attributes Study Root puts at its study level); any other keyword is matched at the IMAGE level.
STUDY_KEYS = frozenset({
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "IssuerOfPatientID", "OtherPatientIDs",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription",
    "ReferringPhysicianName", "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
})  # fmt: skip
SERIES_KEYS = frozenset({
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
    "BodyPartExamined", "ProtocolName", "Laterality", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "Manufacturer", "StationName", "OperatorsName",
    "NumberOfSeriesRelatedInstances",
})  # fmt: skip
LEVELS = ("STUDY", "SERIES", "IMAGE")
#: Value representations whose matching is the archive's own (ranges of dates and times, case-insensitive person
#: names): answers are not checked again against such filters.
_ARCHIVE_MATCHED_VRS = frozenset({"PN", "DA", "TM", "DT"})


class DimseError(OSError):
    """An association refused or aborted, or a DIMSE operation that got no (or a failed) answer; retried unless
    ``permanent``."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class DimseAddress:
    """Where a DIMSE archive listens: its AE title, host and port."""

    called_ae: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}{self.called_ae}@{host}:{self.port}"


def is_dimse_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(SCHEME)


def check_ae_title(title: str, what: str = "AE title") -> str:
    """``title`` if it is a valid AE title (1-16 characters of the default repertoire, no backslash, not only
    spaces); ``ValueError`` naming the problem otherwise."""
    if not 0 < len(title) <= 16 or not title.strip() or "\\" in title or not (title.isascii() and title.isprintable()):
        raise ValueError(f"{what} must be 1-16 printable ASCII characters without a backslash, not {title!r}")
    return title


def parse_dimse_url(url: str) -> DimseAddress:
    """``dimse://ORTHANC@127.0.0.1:4242`` -> its address; ``ValueError`` naming what is wrong with ``url``."""
    if not is_dimse_url(url):
        raise ValueError(f"not a DIMSE URL (dimse://CALLED_AE@HOST:PORT): {url!r}")
    rest = url[len(SCHEME) :].rstrip("/")
    called, sep, where = rest.rpartition("@")
    if not sep or not called:
        raise ValueError(f"DIMSE URL without the archive's AE title: {url!r} (dimse://CALLED_AE@HOST:PORT)")
    check_ae_title(called, f"the called AE title of {url!r}")
    if any(c in where for c in "/?#"):
        raise ValueError(f"DIMSE URL must not have a path, query or fragment: {url!r} (dimse://CALLED_AE@HOST:PORT)")
    parts = urlsplit(f"//{where}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"DIMSE URL with an invalid port: {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"DIMSE URL without a host: {url!r}")
    return DimseAddress(called, parts.hostname, port)


@functools.cache
def decoded_syntaxes() -> tuple[str, ...]:
    """The :data:`CANDIDATE_SYNTAXES` whose pixel data an installed decoder reads."""
    from pydicom.pixels.decoders.base import get_decoder

    out = []
    for syntax in CANDIDATE_SYNTAXES:
        try:
            if get_decoder(syntax).is_available:
                out.append(syntax)
        except NotImplementedError:
            continue
    return tuple(out)


def retrieve_contexts() -> list[tuple[str, list[str]]]:
    """The presentation contexts of a fetch association, ``(abstract syntax, [transfer syntax])`` each: C-FIND and
    C-GET of the Study Root model, then one context per X-ray storage SOP class and decoded transfer syntax (so the
    archive can pick the context of the syntax it stored an instance in, rather than transcode); at most
    :data:`MAX_CONTEXTS`."""
    default = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    contexts = [(FIND_MODEL, default), (GET_MODEL, default)]
    contexts += [(sop, [syntax]) for sop in XRAY_STORAGE for syntax in decoded_syntaxes()]
    if len(contexts) > MAX_CONTEXTS:  # a longer list of classes or syntaxes must be cut, not sent
        raise RuntimeError(f"{len(contexts)} presentation contexts for C-GET, over the limit of {MAX_CONTEXTS}")
    return contexts


def filter_level(keyword: str) -> str:
    """The query level where a ``--filter`` keyword is matched: ``STUDY``, ``SERIES`` or ``IMAGE``."""
    if keyword in STUDY_KEYS:
        return "STUDY"
    return "SERIES" if keyword in SERIES_KEYS else "IMAGE"


def _combos(filters: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """One dict per combination of values (several values of a keyword are one query each)."""
    names = list(filters)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(filters[n] for n in names))]


def _wildcard(pattern: str) -> re.Pattern[str]:
    """A DICOM matching value as a regular expression: ``*`` any run of characters, ``?`` one character."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), re.DOTALL)


def answer_uid(answer: Any, keyword: str) -> str | None:
    """A UID of a C-FIND answer, ``None`` when the archive left it out, empty or unreadable (an element of an unknown
    VR, several values): the answer is then skipped, as QIDO-RS items without their UIDs are."""
    from pydicom.errors import BytesLengthException

    try:
        value = answer.get(keyword)
    # pydicom converts the raw value on first access; BytesLengthException: the UID came with a binary VR of the
    # wrong length (an explicit-VR answer, docs/fuzzing.md F16)
    except (NotImplementedError, ValueError, TypeError, BytesLengthException):
        return None
    if value is None or not isinstance(value, str):
        return None
    value = value.strip(" \x00")
    return value or None


def _answer_matches(answer: Any, combo: Mapping[str, str]) -> bool:
    """Whether an archive's C-FIND answer carries the filter's values (wildcards ``*`` and ``?`` as in DICOM);
    an answer without the attribute does not match, as an instance without it would not. Dates, times and
    person names stay the archive's to match."""
    from pydicom.datadict import dictionary_VR
    from pydicom.errors import BytesLengthException
    from pydicom.multival import MultiValue

    for keyword, pattern in combo.items():
        if dictionary_VR(keyword) in _ARCHIVE_MATCHED_VRS:
            continue
        try:
            value = answer.get(keyword)
        except (NotImplementedError, ValueError, TypeError, BytesLengthException):  # unreadable: matches nothing
            return False
        values = [str(v) for v in (value if isinstance(value, MultiValue) else [value]) if v not in (None, "")]
        if not any(_wildcard(pattern).fullmatch(v) for v in values):
            return False
    return True


def _no_delay(event: Any) -> None:
    """Send each PDU at once (pynetdicom leaves Nagle's algorithm on; with the peer's delayed ACKs a C-GET of a
    513 KiB image took 52 ms instead of 11 against the local Orthanc: ``make bench`` P9)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _why_silent(assoc: Any) -> str:
    """Why an operation got no answer: the archive aborted the association (Orthanc does so when our AE title may
    not use the service), or no reply came in time."""
    deadline = time.monotonic() + 0.5  # pynetdicom marks the association aborted a moment after the empty answer
    while not assoc.is_aborted and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    if assoc.is_aborted:
        ae = assoc.requestor.ae_title
        return f"the archive aborted the association: does it allow this service to our AE title {ae}?"
    return "no reply in time, or the connection closed"


def _status(status: Any) -> int | None:
    """The Status of a DIMSE response, or None when there was none (aborted, timed out, invalid)."""
    return int(status.Status) if status is not None and "Status" in status else None


def _comment(status: Any) -> str:
    text = status.get("ErrorComment") if status is not None else None
    return f" ({text})" if text else ""


class DimseStore(ObjectStore):
    """A DIMSE archive as a read-mostly :class:`~pixelperfect.storage.ObjectStore` (thread-safe: fetches take the
    one fetch association in turn)."""

    keys_by_uid = True

    def __init__(self, url: str, settings: Any = None) -> None:
        if settings is None:
            from pixelperfect.config import get_settings

            settings = get_settings()
        self.settings = settings
        self.address = parse_dimse_url(url)
        self.url = self.address.url
        self.ae_title = check_ae_title(settings.dimse_ae_title, "PIXELPERFECT_DIMSE_AE_TITLE")
        self._lock = threading.Lock()  # the fetch association: one operation at a time
        self._fetch: Any = None
        self._fetch_pid = 0
        self._fetch_used = 0.0
        self._received: list[tuple[str, bytes]] = []

    # -- associations and the retry policy ---------------------------------------------------------------------
    def _associate(
        self, contexts: Iterable[tuple[str, list[str]]], roles: Sequence[str] = (), handlers: Sequence[Any] = ()
    ) -> Any:
        from pynetdicom import AE, build_role, evt

        ae = AE(ae_title=self.ae_title)
        timeout = self.settings.dimse_timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        assoc = ae.associate(
            self.address.host,
            self.address.port,
            ae_title=self.address.called_ae,
            ext_neg=[build_role(sop, scp_role=True) for sop in roles] or None,
            evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay), *handlers],
        )
        if assoc.is_established:
            return assoc
        answer = getattr(assoc.acceptor, "primitive", None)
        if assoc.is_rejected and answer is not None:
            raise DimseError(
                f"association rejected ({answer.result_str}, {answer.source_str}: {answer.reason_str}; our AE "
                f"title {self.ae_title})",
                permanent=answer.result == 0x01,
            )
        if answer is not None:
            raise DimseError(f"association aborted (no presentation context accepted?; our AE title {self.ae_title})")
        raise DimseError(f"no connection to {self.address.host}:{self.address.port} (refused or no answer)")

    def _call(self, what: str, fn: Callable[[], T], reset: Callable[[], None]) -> T:
        attempts = self.settings.dimse_attempts
        error: DimseError | None = None
        for attempt in range(attempts):
            try:
                return fn()
            except DimseError as exc:
                reset()
                if exc.permanent:
                    raise SourceUnavailableError(f"{what} at {self.url}: {exc}") from None
                error = exc
            if attempt + 1 < attempts:
                wait = self.settings.dimse_backoff_s * 2**attempt
                log.warning("%s at %s: %s; retry %d/%d in %.1fs", what, self.url, error, attempt + 1, attempts - 1,
                            wait)  # fmt: skip
                time.sleep(wait)
        times = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        raise SourceUnavailableError(f"{what} at {self.url}: {error} after {times}")

    @staticmethod
    def _release(assoc: Any) -> None:
        try:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        except Exception:  # already gone
            log.debug("closing an association failed", exc_info=True)

    # -- C-FIND ------------------------------------------------------------------------------------------------
    @staticmethod
    def _find(assoc: Any, query: Any) -> list[Any]:
        """Every answer to ``query`` (all pending responses, read until the final one); raises
        :class:`DimseError` on no answer or a failure status."""
        if not assoc.is_established:
            raise DimseError("association closed by the archive")
        answers = []
        try:
            for status, identifier in assoc.send_c_find(query, FIND_MODEL):
                code = _status(status)
                if code is None:
                    raise DimseError(f"C-FIND got no answer ({_why_silent(assoc)})")
                if code in _PENDING:
                    if identifier is not None:
                        answers.append(identifier)
                    continue
                if code == 0x0000:
                    return answers
                raise DimseError(f"C-FIND failed with status 0x{code:04X}{_comment(status)}")
        except RuntimeError as exc:  # pynetdicom: the association ended under the request
            raise DimseError(f"C-FIND: {exc}") from None
        raise DimseError("C-FIND ended without a final status")

    @staticmethod
    def _query(level: str, keys: Mapping[str, str], returned: Iterable[str]) -> Any:
        from pydicom.dataset import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = level
        with warnings.catch_warnings():  # pydicom checks values against their VR, and "CR*" is no valid CS: a query
            warnings.simplefilter("ignore")
            for keyword in returned:
                setattr(query, keyword, "")
            for keyword, value in keys.items():
                setattr(query, keyword, value)
        return query

    def _find_all(
        self, link: list[Any], level: str, keys: Mapping[str, str], combos: list[dict[str, str]], returned: list[str]
    ) -> list[Any]:
        """The answers at ``level`` to one query per filter combination, checked against it, each once (by the
        level's UID), in the archive's order. ``link`` holds the listing association (opened on first use, again
        after a failure)."""
        unique = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
        seen: set[str] = set()
        out = []
        for combo in combos:
            query = self._query(level, {**keys, **combo}, [unique, *returned, *combo])

            def once(q: Any = query) -> list[Any]:
                if link[0] is None:
                    link[0] = self._associate([(FIND_MODEL, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])])
                return self._find(link[0], q)

            def reset() -> None:
                if link[0] is not None:
                    self._release(link[0])
                    link[0] = None

            for answer in self._call(f"C-FIND ({level})", once, reset):
                uid = str(answer.get(unique) or "")
                if uid and uid not in seen and _answer_matches(answer, combo):
                    seen.add(uid)
                    out.append(answer)
        return out

    def entries(self, filters: Mapping[str, Sequence[str]] | None = None) -> Iterator[Entry]:
        """Every instance matching ``filters``, study by study, non-image SOP classes marked ``image=False``, each
        with its study's PatientID."""
        by_level: dict[str, dict[str, list[str]]] = {level: {} for level in LEVELS}
        for keyword, values in (filters or {}).items():
            by_level[filter_level(keyword)][keyword] = list(values)
        combos = {level: _combos(by_level[level]) for level in LEVELS}
        link: list[Any] = [None]
        try:
            studies = [
                (study, answer_uid(a, "PatientID"))
                for a in self._find_all(link, "STUDY", {}, combos["STUDY"], ["PatientID"])
                if (study := answer_uid(a, "StudyInstanceUID"))
            ]
            for study, patient_id in studies:
                series = self._find_all(link, "SERIES", {"StudyInstanceUID": study}, combos["SERIES"], [])
                for one in [uid for a in series if (uid := answer_uid(a, "SeriesInstanceUID"))]:
                    keys = {"StudyInstanceUID": study, "SeriesInstanceUID": one}
                    for image in self._find_all(link, "IMAGE", keys, combos["IMAGE"], ["SOPClassUID"]):
                        sop = answer_uid(image, "SOPInstanceUID")
                        if sop:
                            image_class = answer_uid(image, "SOPClassUID")
                            yield Entry(f"{study}/{one}/{sop}", image=is_image_sop_class(image_class),
                                        patient_id=patient_id)  # fmt: skip
        finally:
            if link[0] is not None:
                self._release(link[0])

    def list(self, prefix: str = "") -> Iterator[str]:
        for entry in self.entries():
            if entry.image and entry.key.startswith(prefix):
                yield entry.key

    def exists(self, key: str) -> bool:
        study, series, sop = split_key(key)
        return bool(self._fetching("C-FIND", lambda assoc: self._instance(assoc, study, series, sop)))

    def _instance(self, assoc: Any, study: str, series: str, sop: str) -> Any:
        """The archive's IMAGE-level answer for one instance (with its SOPClassUID), or None."""
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop}
        answers = self._find(assoc, self._query("IMAGE", keys, ["SOPClassUID"]))
        return answers[0] if answers else None

    # -- C-GET -------------------------------------------------------------------------------------------------
    def _fetching(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(association)`` on this process's fetch association (opened when missing, closed, idle too long or
        inherited from a parent process), under the retry policy; a failure closes it."""

        def once() -> T:
            with self._lock:
                return fn(self._fetch_association())

        def reset() -> None:
            with self._lock:
                if self._fetch is not None and self._fetch_pid == os.getpid():
                    self._release(self._fetch)
                self._fetch = None

        return self._call(what, once, reset)

    def _fetch_association(self) -> Any:
        from pynetdicom import evt

        now = time.monotonic()
        if self._fetch is not None:
            stale = now - self._fetch_used > IDLE_S or not self._fetch.is_established
            if self._fetch_pid != os.getpid():
                self._fetch = None  # the parent's: its socket and threads are not this process's
            elif stale:
                self._release(self._fetch)
                self._fetch = None
        if self._fetch is None:
            self._fetch = self._associate(retrieve_contexts(), XRAY_STORAGE, [(evt.EVT_C_STORE, self._on_store)])
            self._fetch_pid = os.getpid()
        self._fetch_used = now
        return self._fetch

    def _on_store(self, event: Any) -> int:
        """A C-STORE sub-operation of our C-GET (on the association's thread): keep the dataset's bytes as the
        archive sent them, behind the file meta information of the context it used."""
        self._received.append((str(event.request.AffectedSOPInstanceUID), event.encoded_dataset(include_meta=True)))
        return 0x0000

    def get(self, key: str) -> bytes:
        """The instance as a DICOM file (Part 10 bytes), its dataset as the archive sent it."""
        study, series, sop = split_key(key)
        return self._fetching("C-GET", lambda assoc: self._get_once(assoc, key, study, series, sop))

    def _get_once(self, assoc: Any, key: str, study: str, series: str, sop: str) -> bytes:
        from pydicom.dataset import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study, series, sop
        self._received = []
        final: Any = None
        try:
            for status, _ in assoc.send_c_get(query, GET_MODEL):
                code = _status(status)
                if code is None:
                    raise DimseError(f"C-GET got no answer ({_why_silent(assoc)})")
                if code not in _PENDING:
                    final = status
        except RuntimeError as exc:  # pynetdicom: the association ended under the request
            raise DimseError(f"C-GET: {exc}") from None
        received = [data for uid, data in self._received if uid == sop]
        self._received = []
        if received:
            return received[-1]
        if final is None:
            raise DimseError("C-GET ended without a final status")
        code = int(final.Status)
        failed = int(final.get("NumberOfFailedSuboperations") or 0) + int(
            final.get("NumberOfWarningSuboperations") or 0
        )
        if not failed and 0xA700 <= code <= 0xA7FF:  # out of resources: the archive may manage later
            raise DimseError(f"C-GET failed with status 0x{code:04X}{_comment(final)}")
        answer = self._instance(assoc, study, series, sop)
        if answer is None:
            raise InstanceNotFoundError(self.url_for(key))
        sop_class = str(answer.get("SOPClassUID") or "")
        if sop_class and sop_class not in XRAY_STORAGE:
            from pydicom.uid import UID

            name = UID(sop_class).name
            reason = "not_an_image" if not is_image_sop_class(sop_class) else "unsupported_sop_class"
            raise UnsupportedObjectError(
                reason,
                f"{key}: a {name} ({sop_class}), not one of the X-ray image classes a C-GET from {self.url} asks for",
            )
        if failed:
            raise UnsupportedObjectError(
                "missing_codec",
                f"{key}: {self.url} could not send it in a transfer syntax we decode (status 0x{code:04X}"
                f"{_comment(final)}; {len(decoded_syntaxes())} syntaxes proposed)",
            )
        raise DimseError(f"C-GET sent nothing (status 0x{code:04X}{_comment(final)})")

    # -- C-STORE -----------------------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        import pydicom

        refused = self.store([pydicom.dcmread(io.BytesIO(data))])
        if refused:
            raise SourceUnavailableError(f"C-STORE at {self.url} refused {key}: {next(iter(refused.values()))}")

    def store(self, datasets: Sequence[Any]) -> dict[str, str]:
        """C-STORE ``datasets`` (pydicom) over one association (per group of :data:`MAX_CONTEXTS` distinct SOP
        class and transfer syntax pairs); ``{SOPInstanceUID: why}`` of those the archive refused. An association
        that fails is opened again and the objects not yet answered are sent on it; after the retries, raises."""
        refused: dict[str, str] = {}
        for group in _context_groups(datasets):
            pending = list(group)
            contexts = sorted({_context_of(ds) for ds in group})

            def once(pending: list[Any] = pending, contexts: list[tuple[str, str]] = contexts) -> None:
                assoc = self._associate([(sop, [syntax]) for sop, syntax in contexts])
                try:
                    while pending:
                        ds = pending[0]
                        why = self._store_one(assoc, ds)
                        if why:
                            refused[str(ds.SOPInstanceUID)] = why
                        pending.pop(0)
                finally:
                    self._release(assoc)

            self._call("C-STORE", once, lambda: None)
        return refused

    @staticmethod
    def _store_one(assoc: Any, ds: Any) -> str | None:
        """Why the archive refused ``ds``, or None when it stored it (a warning status stores it too)."""
        if not assoc.is_established:
            raise DimseError("association closed by the archive")
        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted presentation context for its SOP class and transfer syntax
            return f"not accepted: {exc}"
        except RuntimeError as exc:  # the association ended under the request
            raise DimseError(f"C-STORE: {exc}") from None
        code = _status(status)
        if code is None:
            raise DimseError(f"C-STORE got no answer ({_why_silent(assoc)})")
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
            return None
        return f"C-STORE status 0x{code:04X}{_comment(status)}"

    def close(self) -> None:
        """Release this process's fetch association."""
        with self._lock:
            if self._fetch is not None and self._fetch_pid == os.getpid():
                self._release(self._fetch)
            self._fetch = None


def _context_of(ds: Any) -> tuple[str, str]:
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2.1")
    return str(ds.SOPClassUID), syntax


def _context_groups(datasets: Sequence[Any]) -> Iterator[list[Any]]:
    """``datasets`` in runs whose distinct (SOP class, transfer syntax) pairs fit one association."""
    group: list[Any] = []
    pairs: set[tuple[str, str]] = set()
    for ds in datasets:
        pair = _context_of(ds)
        if pair not in pairs and len(pairs) == MAX_CONTEXTS:
            yield group
            group, pairs = [], set()
        pairs.add(pair)
        group.append(ds)
    if group:
        yield group


__all__ = [
    "XRAY_STORAGE",
    "DimseAddress",
    "DimseError",
    "DimseStore",
    "decoded_syntaxes",
    "filter_level",
    "is_dimse_url",
    "parse_dimse_url",
    "retrieve_contexts",
]
