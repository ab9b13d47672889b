"""DICOMweb (PS3.18): STOW-RS, WADO-RS and what only DICOMweb needs (Accept negotiation, multipart).

Reading and searching the store are :mod:`radstack.store.retrieve` and :mod:`radstack.store.search`,
shared with DIMSE; QIDO-RS answers with the latter. Nothing here imports :mod:`radstack.dimse`.
"""

__all__: list[str] = []
