"""Deprecated alias: the DICOMweb store is :mod:`pixelperfect.storage.dicomweb`, opened like every store by
:func:`pixelperfect.storage.open_store` (``dicomweb+http(s)://…``). ``from pixelperfect.dicomweb import
DicomwebStore`` keeps working, with a ``DeprecationWarning``."""

import warnings

from pixelperfect.storage.dicomweb import (
    NON_IMAGE_SOP_PREFIXES,
    SEG_SOP_CLASS,
    DicomwebStore,
    Instance,
    InstanceNotFoundError,
    is_dicomweb_url,
    service_url,
    split_key,
)

warnings.warn(
    "pixelperfect.dicomweb is deprecated: use pixelperfect.storage.dicomweb, or pixelperfect.storage.open_store "
    "with a dicomweb+http(s):// URL",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "NON_IMAGE_SOP_PREFIXES",
    "SEG_SOP_CLASS",
    "DicomwebStore",
    "Instance",
    "InstanceNotFoundError",
    "is_dicomweb_url",
    "service_url",
    "split_key",
]
