"""Temporary re-export for files not yet switched to ppfr.bundle (issue 24); deleted after the switch."""

from ppfr.bundle.manifest import (  # noqa: F401
    MANIFEST,
    BundleError,
    data_type,
    numpy_dtype,
    read_manifest,
    write_manifest,
)
