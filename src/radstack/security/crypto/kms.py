"""The key-encryption key in AWS KMS: the one module of :mod:`radstack.security.crypto` that imports
botocore, loaded only when ``RADSTACK_KEY_URL`` names a KMS key (``awskms:///…``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from radstack.security.crypto.providers import BlobIntegrityError, KeyProviderError, WrappedKey

__all__ = ["AwsKmsKeyProvider"]

_log = logging.getLogger(__name__)

#: Bound to every KMS Encrypt/Decrypt (and shown in CloudTrail): a ciphertext made for something
#: else under the same key does not decrypt here.
_KMS_CONTEXT = {"radstack": "blob wrapping key"}
#: Seconds between looks at the key's rotations (KMS rotates its key material on its own schedule).
_KMS_VERSION_SECONDS = 60.0


class AwsKmsKeyProvider:
    """The KEK is a symmetric AWS KMS key; wrapping keys are wrapped by KMS Encrypt and Decrypt.

    Endpoint, region and credentials come from boto3's standard chain, as for the S3 blob store:
    ``AWS_ENDPOINT_URL_KMS`` (or ``AWS_ENDPOINT_URL``), ``AWS_DEFAULT_REGION`` (a key ARN names its
    own region), the credentials files and instance or container roles. KMS rotates the key material behind one key id itself (yearly, or on
    demand); the KEK id recorded in headers is ``awskms:<key ARN>@<rotations so far>``, from
    ``ListKeyRotations``, so ``radstack keys rotate`` re-wraps what was wrapped before the latest
    rotation. Pointing an alias at a new key changes the ARN, and rotation moves blobs to it; the old
    key must stay enabled until it has.

    Parameters
    ----------
    key
        Key id, key ARN, ``alias/name`` or alias ARN.
    client
        A boto3 KMS client to use instead of one from the standard chain.

    Raises
    ------
    KeyProviderError
        The key does not exist, is not enabled, is not a symmetric encryption key, or KMS cannot be reached.
    """

    def __init__(self, key: str, *, client: Any = None) -> None:
        self.key = key
        # A key ARN names its region; an id or alias is in the region of the AWS configuration.
        region = key.split(":")[3] if key.startswith("arn:") and key.count(":") >= 5 else None
        self.client: Any = client if client is not None else _kms_client(region)
        self._lock = threading.Lock()
        self._version: tuple[float, int] | None = None
        self._version_warned = False
        metadata = self._call("DescribeKey", self.client.describe_key, KeyId=key)["KeyMetadata"]
        self.arn: str = metadata["Arn"]
        if metadata.get("KeyState", "Enabled") != "Enabled":
            raise KeyProviderError(f"KMS key {key!r} ({self.arn}) is {metadata.get('KeyState')}, not Enabled")
        if metadata.get("KeyUsage") != "ENCRYPT_DECRYPT" or metadata.get("KeySpec") != "SYMMETRIC_DEFAULT":
            raise KeyProviderError(
                f"KMS key {key!r} is {metadata.get('KeySpec')} for {metadata.get('KeyUsage')}; a symmetric "
                "ENCRYPT_DECRYPT key (SYMMETRIC_DEFAULT) is needed"
            )

    def describe(self) -> str:
        return f"AWS KMS key {self.arn}"

    def _call(self, operation: str, method: Callable[..., Any], **params: Any) -> Any:
        endpoint = self.client.meta.endpoint_url
        try:
            return method(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise BlobIntegrityError(
                    f"KMS refused to unwrap a wrapping key ({code}): the header was changed or names another key"
                ) from None
            raise KeyProviderError(
                f"KMS {operation} of key {params.get('KeyId', self.key)!r} at {endpoint} failed: "
                f"{code} {error.get('Message', '')}".rstrip()
            ) from exc
        except BotoCoreError as exc:
            raise KeyProviderError(f"KMS at {endpoint} cannot be used for key {self.key!r}: {exc}") from exc

    def _rotations(self, *, fresh: bool = False) -> int:
        with self._lock:
            cached = self._version
        if cached is not None and not fresh and time.monotonic() - cached[0] < _KMS_VERSION_SECONDS:
            return cached[1]
        count = 0
        try:
            params: dict[str, Any] = {"KeyId": self.arn}
            while True:
                page = self.client.list_key_rotations(**params)
                count += len(page.get("Rotations", ()))
                if not page.get("Truncated"):
                    break
                params["Marker"] = page["NextMarker"]
        except ClientError as exc:  # no kms:ListKeyRotations permission: versions follow the key ARN only
            if not self._version_warned:
                _log.warning("KMS ListKeyRotations failed (%s); rotation follows the key ARN only", exc)
                self._version_warned = True
            count = 0
        except BotoCoreError as exc:
            raise KeyProviderError(f"KMS cannot be reached for key {self.arn}: {exc}") from exc
        with self._lock:
            self._version = (time.monotonic(), count)
        return count

    def current_id(self) -> str:
        return f"awskms:{self.arn}@{self._rotations()}"

    def wrap(self, key: bytes) -> WrappedKey:
        kek_id = self.current_id()
        response = self._call(
            "Encrypt", self.client.encrypt, KeyId=self.arn, Plaintext=key, EncryptionContext=_KMS_CONTEXT
        )
        return WrappedKey(kek_id, response["CiphertextBlob"])

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        scheme, _, rest = wrapped.kek_id.partition(":")
        arn = rest.rpartition("@")[0]
        if scheme != "awskms" or not arn:
            raise KeyProviderError(
                f"a blob names KEK {wrapped.kek_id!r}, which is not an AWS KMS key: set RADSTACK_KEY_URL "
                f"to the provider that wrapped it (now: {self.describe()})"
            )
        response = self._call(
            "Decrypt",
            self.client.decrypt,
            KeyId=arn,
            CiphertextBlob=wrapped.blob,
            EncryptionContext=_KMS_CONTEXT,
        )
        plaintext: bytes = response["Plaintext"]
        return plaintext

    def begin_rotation(self) -> str:
        """The key's current version: rotation itself happens in KMS (automatic or on demand)."""
        self._rotations(fresh=True)
        return self.current_id()

    def finish_rotation(self, kek_id: str) -> None:
        """Nothing to record: KMS keeps its versions."""


def _kms_client(region: str | None) -> Any:
    """A KMS client from boto3's standard chain, with standard retries and a pool for ingest threads."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "total_max_attempts": 5}, max_pool_connections=32)
    return boto3.session.Session().client("kms", region_name=region, config=config)
