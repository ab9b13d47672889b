"""pydicom's process-wide settings, set once at start-up, never as a side effect of an import.

:func:`configure_pydicom` is called by :meth:`radstack.platform.Platform.open` (every server, worker
and command that opens the data dir) and by each ingest process as it starts.
"""

from __future__ import annotations

import pydicom.config

__all__ = ["configure_pydicom"]


def configure_pydicom() -> None:
    """Make pydicom read without validating values.

    pydicom's read-time validation warnings quote the offending value, which may be a patient's
    name or ID, and logs must never carry PHI. The ingest pipeline validates what it relies on
    itself and names the attribute, not the value, when it refuses one.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
