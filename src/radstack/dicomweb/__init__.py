"""DICOMweb services (PS3.18): STOW-RS, QIDO-RS, WADO-RS, one module per service."""

__all__: list[str] = []
