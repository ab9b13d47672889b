"""radstack: an open-source medical imaging platform (lossless HTJ2K store, DICOMweb, DIMSE, AI)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
