"""How ingest treats what comes in: one frozen object, built from the settings once, passed down every path.

Every way data comes in (STOW-RS, C-STORE, import jobs, the drop folders, the demo loader) hands the
same :class:`IngestOptions` to the pipeline, so a setting such as ``RADSTACK_ENCODE_HTJ2K=false``
means the same thing whichever way an instance arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from radstack.config import Settings

__all__ = ["IngestOptions"]


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """The ingest settings every path passes to :func:`radstack.ingest.pipeline.ingest_file`.

    Attributes
    ----------
    encode : bool
        Re-encode frames of native or lossless input as HTJ2K lossless (1.2.840.10008.1.2.4.202,
        PS3.5 §8.2.14); off, they are stored as explicit VR little endian samples
        (``RADSTACK_ENCODE_HTJ2K``). Lossy frames are kept byte for byte either way.
    """

    encode: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestOptions:
        return cls(encode=settings.encode_htj2k)
