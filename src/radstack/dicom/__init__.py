"""Pure DICOM helpers: UIDs, transfer syntaxes, frames, codecs, DICOM JSON, rendering. No I/O."""

__all__: list[str] = []
