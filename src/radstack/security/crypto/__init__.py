"""Encryption at rest: envelope encryption (AES-256-GCM) of every blob.

Every blob the platform writes (frames, instance headers, DICOM JSON, metadata documents) goes
through :class:`EncryptedBlobStore`, which wraps any :class:`~radstack.store.blobs.BlobStore`. Keys
form three levels:

* the **key-encryption key** (KEK) lives in a :class:`KeyProvider`: a 32-byte key file under
  ``<data_dir>/keys/`` (:class:`LocalKeyProvider`, the default) or a key in AWS KMS
  (:class:`AwsKmsKeyProvider`). Rotation makes a new KEK version;
* a **wrapping key**, random, made by each process when it first writes and renewed every hour, every
  2^20 blobs and whenever the provider's current KEK changes, is wrapped by the KEK; a copy of its
  wrapped form is in every header, so each blob is self-contained. It is what keeps the KEK off the
  hot path: a KMS call per wrapping key, not per blob (as S3 Bucket Keys do);
* a **data key**, random for every blob, wrapped by the wrapping key, encrypts the blob's bytes.

The modules, and what this package gathers from them:

* :mod:`.providers`: the :class:`KeyProvider` protocol, :class:`LocalKeyProvider`,
  :func:`open_key_provider` and the two errors; :mod:`.kms`: :class:`AwsKmsKeyProvider`, the only
  module that imports botocore, loaded when a key URL names KMS;
* :mod:`.blob_format`: the header and chunk layout (:data:`MAGIC`, :data:`CHUNK_SIZE`);
* :mod:`.store`: :class:`EncryptedBlobStore` and :func:`open_encrypted_blob_store`;
* :mod:`.rotation`: :func:`rotate_keys` and :func:`key_usage`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from radstack.security.crypto.blob_format import CHUNK_SIZE, MAGIC
from radstack.security.crypto.providers import (
    BlobIntegrityError,
    KeyProvider,
    KeyProviderError,
    LocalKeyProvider,
    WrappedKey,
    open_key_provider,
)
from radstack.security.crypto.rotation import KeyUsage, RotationReport, key_usage, rotate_keys
from radstack.security.crypto.store import (
    EncryptedBlobStore,
    KeyConfig,
    RewrapOutcome,
    open_encrypted_blob_store,
)

if TYPE_CHECKING:
    from radstack.security.crypto.kms import AwsKmsKeyProvider

__all__ = [
    "CHUNK_SIZE",
    "MAGIC",
    "AwsKmsKeyProvider",
    "BlobIntegrityError",
    "EncryptedBlobStore",
    "KeyConfig",
    "KeyProvider",
    "KeyProviderError",
    "KeyUsage",
    "LocalKeyProvider",
    "RewrapOutcome",
    "RotationReport",
    "WrappedKey",
    "key_usage",
    "open_encrypted_blob_store",
    "open_key_provider",
    "rotate_keys",
]


def __getattr__(name: str) -> Any:
    # The KMS provider (and with it botocore) is imported when first asked for, not with the package.
    if name == "AwsKmsKeyProvider":
        from radstack.security.crypto.kms import AwsKmsKeyProvider

        return AwsKmsKeyProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
