"""A PACS spoken to over DICOMweb, as an object store: QIDO-RS lists, WADO-RS reads, STOW-RS writes.

URLs: ``dicomweb+http://HOST:PORT/PATH`` or ``dicomweb+https://…`` (``PATH`` is the service root, Orthanc's is
``/dicom-web``). An image key is ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>``: UIDs address the
instance; they are not patient identifiers. Credentials (basic or bearer) come from the settings
(``PIXELPERFECT_DICOMWEB_USERNAME``/``_PASSWORD`` or ``_TOKEN``), never from the URL, so that neither the run row
nor a log line carries them; a URL with credentials in it is refused.

All HTTP goes through ``dicomweb-client``. One retry policy: a connection error, a timeout, 408, 429 or 5xx is
retried ``dicomweb_attempts`` times with a doubling wait from ``dicomweb_backoff_s``; then
:class:`~pixelperfect.storage.SourceUnavailableError`. A 404 on retrieval is
:class:`InstanceNotFoundError` (reason ``not_found``).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pixelperfect.storage.base import Entry, ObjectStore, SourceUnavailableError, UnsupportedObjectError
from pixelperfect.storage.dicomkeys import (
    NON_IMAGE_SOP_PREFIXES,
    SEG_SOP_CLASS,
    InstanceNotFoundError,
    is_image_sop_class,
    split_key,
)

log = logging.getLogger(__name__)
# dicomweb-client's retry decorator logs every failed attempt with a traceback even with retries off; ours are
# logged once per retry by DicomwebStore._call
logging.getLogger("retrying").setLevel(logging.ERROR)

T = TypeVar("T")
SCHEMES = ("dicomweb+http://", "dicomweb+https://")
_RETRIED_STATUS = {408, 429, 500, 502, 503, 504}


def is_dicomweb_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(SCHEMES)


def service_url(url: str) -> str:
    """``dicomweb+http://h:8042/dicom-web/`` -> ``http://h:8042/dicom-web``; raises ``ValueError`` naming a URL
    that is not DICOMweb or carries credentials (they belong in the settings)."""
    if not is_dicomweb_url(url):
        raise ValueError(f"not a DICOMweb URL (dicomweb+http://HOST:PORT/PATH): {url!r}")
    http = url[len("dicomweb+") :].rstrip("/")
    parts = urlsplit(http)
    if parts.username or parts.password:
        raise ValueError(
            "credentials in a DICOMweb URL would be stored with the run: set PIXELPERFECT_DICOMWEB_USERNAME and "
            f"_PASSWORD (or _TOKEN) instead ({parts.scheme}://…@{parts.hostname})"
        )
    if not parts.hostname:
        raise ValueError(f"DICOMweb URL without a host: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"DICOMweb URL must not have a query or fragment: {url!r}")
    return http


@dataclass(frozen=True)
class Instance:
    """One QIDO-RS instance: its key and the few attributes listing needs (never stored in clear)."""

    key: str
    sop_class: str
    modality: str | None
    patient_id: str | None


def _value(item: dict[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` in a DICOM JSON object (PS3.18 F.2), ``None`` where the attribute is absent, empty
    or malformed (not an object, ``Value`` not a list, a value that is itself an object or list)."""
    attribute = item.get(tag)
    values = attribute.get("Value") if isinstance(attribute, dict) else None
    if not isinstance(values, list) or not values or isinstance(values[0], (dict, list)) or values[0] is None:
        return None
    return str(values[0])


def instances_of_page(page: Any, where: str) -> list[Instance]:
    """The instances of one QIDO-RS response page (a JSON array of DICOM JSON objects). An item without its three
    UIDs is skipped, as any malformed attribute is ignored; a page that is not an array of objects raises
    :class:`~pixelperfect.storage.SourceUnavailableError` (the listing fails with the server's fault named)."""
    if not isinstance(page, list) or not all(isinstance(item, dict) for item in page):
        raise SourceUnavailableError(f"QIDO-RS response at {where} is not a JSON array of objects")
    found = []
    for item in page:
        study, series, sop = (_value(item, t) for t in ("0020000D", "0020000E", "00080018"))
        if study and series and sop:
            found.append(
                Instance(f"{study}/{series}/{sop}", _value(item, "00080016") or "", _value(item, "00080060"),
                         _value(item, "00100020"))
            )  # fmt: skip
    return found


def _auth(settings: Any) -> Any:
    import requests

    token = settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None
    if token:

        class Bearer(requests.auth.AuthBase):
            def __call__(self, request: Any) -> Any:
                request.headers["Authorization"] = f"Bearer {token}"
                return request

        return Bearer()
    if settings.dicomweb_username:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        return requests.auth.HTTPBasicAuth(settings.dicomweb_username, password)
    return None


class DicomwebStore(ObjectStore):
    """A DICOMweb service as a read-mostly :class:`~pixelperfect.storage.ObjectStore` (thread-safe for reads).

    ``get`` retrieves the stored bytes of one instance (WADO-RS, ``transfer-syntax=*``: the PACS does not
    transcode); ``list`` pages QIDO-RS (``dicomweb_page_size`` per request, never one giant response) and skips
    non-image SOP classes; ``put`` stores one DICOM object with STOW-RS (the key is not used: the object's UIDs
    address it).
    """

    keys_by_uid = True

    def __init__(self, url: str, settings: Any = None) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        if settings is None:
            from pixelperfect.config import get_settings

            settings = get_settings()
        self.settings = settings
        self.http_url = service_url(url)
        self.url = f"dicomweb+{self.http_url}"
        session = requests.Session()
        session.auth = _auth(settings)
        self.session = session
        self.client = DICOMwebClient(self.http_url, session=session, timeout=settings.dicomweb_timeout_s)
        self.client.set_http_retry_params(retry=False)  # one policy: _call's

    # -- the retry policy --------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import requests

        attempts = self.settings.dicomweb_attempts
        for attempt in range(attempts):
            try:
                return fn()
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status not in _RETRIED_STATUS:
                    raise
                error: Exception = exc
                detail = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                error, detail = exc, type(exc).__name__
            if attempt + 1 < attempts:
                wait = self.settings.dicomweb_backoff_s * 2**attempt
                log.warning("%s at %s: %s; retry %d/%d in %.1fs", what, self.url, detail, attempt + 1,
                            attempts - 1, wait)  # fmt: skip
                time.sleep(wait)
        raise SourceUnavailableError(f"{what} at {self.url}: {detail} after {attempts} attempts") from error

    # -- QIDO-RS -----------------------------------------------------------------------------------------------
    def instances(
        self, filters: dict[str, list[str]] | None = None, page_size: int | None = None
    ) -> Iterator[Instance]:
        """Every instance matching ``filters`` (attribute keyword -> accepted values; several values are one
        query each), page by page with ``limit``/``offset``, non-image SOP classes included."""
        size = page_size or self.settings.dicomweb_page_size
        combos: list[dict[str, str]] = [{}]
        for name, values in (filters or {}).items():
            combos = [{**c, name: v} for c in combos for v in values]
        for search in combos:
            offset = 0
            while True:
                page = self._call(
                    "QIDO-RS search for instances",
                    lambda s=search, o=offset: self.client.search_for_instances(  # type: ignore[misc]
                        limit=size, offset=o, search_filters=dict(s), fields=["PatientID", "Modality"]
                    ),
                )
                yield from instances_of_page(page, self.url)
                if len(page) < size:
                    break
                offset += len(page)

    def entries(self, filters: Mapping[str, Sequence[str]] | None = None) -> Iterator[Entry]:
        """Every instance matching ``filters``, non-image SOP classes (SEG, SR, …) marked ``image=False``, each with
        the PatientID QIDO-RS returned."""
        for instance in self.instances({k: list(v) for k, v in (filters or {}).items()}):
            image = is_image_sop_class(instance.sop_class)
            yield Entry(instance.key, image=image, patient_id=instance.patient_id)

    def list(self, prefix: str = "") -> Iterator[str]:
        for entry in self.entries():
            if entry.image and entry.key.startswith(prefix):
                yield entry.key

    def exists(self, key: str) -> bool:
        study, series, sop = split_key(key)
        found = self._call(
            "QIDO-RS search",
            lambda: self.client.search_for_instances(
                study_instance_uid=study, series_instance_uid=series, search_filters={"SOPInstanceUID": sop}
            ),
        )
        return bool(found)

    # -- WADO-RS -----------------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """The instance as a DICOM file (Part 10 bytes) in the transfer syntax the PACS stored it in."""
        import pydicom
        import requests

        study, series, sop = split_key(key)
        try:
            ds = self._call(
                "WADO-RS retrieve",
                lambda: self.client.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),)),
            )
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code in (404, 410):
                raise InstanceNotFoundError(self.url_for(key)) from None
            raise SourceUnavailableError(f"WADO-RS retrieve at {self.url}: {exc}") from None
        except (requests.RequestException, SourceUnavailableError):
            raise
        except Exception as exc:  # dicomweb-client's multipart or pydicom's parse of the body
            raise UnsupportedObjectError(
                "bad_response", f"WADO-RS body for {key} at {self.url} does not parse: {type(exc).__name__}: {exc}"
            ) from None
        buf = io.BytesIO()
        try:
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        except Exception as exc:  # a dataset pydicom read but cannot write back (a missing or malformed UID, ...)
            raise UnsupportedObjectError(
                "bad_response", f"WADO-RS instance {key} at {self.url} is no valid Part 10 object: {exc}"
            ) from None
        return buf.getvalue()

    def header(self, key: str) -> Any:
        """The instance's attributes from WADO-RS metadata (JSON, no bulk data): a pydicom ``Dataset``."""
        import pydicom
        import requests

        study, series, sop = split_key(key)
        try:
            found = self._call("WADO-RS metadata", lambda: self.client.retrieve_instance_metadata(study, series, sop))
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code in (404, 410):
                raise InstanceNotFoundError(self.url_for(key)) from None
            raise SourceUnavailableError(f"WADO-RS metadata at {self.url}: {exc}") from None
        # bulk data (the pixels) is only a URI in the metadata: left out, never fetched
        return pydicom.Dataset.from_json({t: v for t, v in found.items() if "BulkDataURI" not in v})

    # -- STOW-RS -----------------------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        import pydicom

        failed = self.store([pydicom.dcmread(io.BytesIO(data))])
        if failed:
            raise SourceUnavailableError(f"STOW-RS at {self.url} refused {key}: {next(iter(failed.values()))}")

    def store(self, datasets: Sequence[Any]) -> dict[str, str]:
        """STOW-RS ``datasets`` (pydicom) in one request; ``{SOPInstanceUID: why}`` of those the PACS refused.
        A request that fails as a whole (after the retries) raises."""
        import requests

        if not datasets:
            return {}
        try:
            response = self._call("STOW-RS", lambda: self.client.store_instances(list(datasets)))
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code not in (400, 409):
                raise SourceUnavailableError(f"STOW-RS at {self.url}: {exc}") from None
            return {str(ds.SOPInstanceUID): f"HTTP {exc.response.status_code}" for ds in datasets}
        failed: dict[str, str] = {}
        for item in getattr(response, "FailedSOPSequence", None) or []:
            reason = item.get("FailureReason", "")
            failed[str(item.get("ReferencedSOPInstanceUID", ""))] = f"failure reason {reason}"
        return failed


__all__ = [
    "NON_IMAGE_SOP_PREFIXES",
    "SEG_SOP_CLASS",
    "DicomwebStore",
    "Instance",
    "InstanceNotFoundError",
    "instances_of_page",
    "is_dicomweb_url",
    "service_url",
    "split_key",
]
