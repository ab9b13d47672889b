"""AWS KMS for tests: the session's moto server (tests/s3.py) answers the KMS protocol too.

As with S3, boto3 reaches it by the standard variables (``AWS_ENDPOINT_URL_KMS``, dummy credentials)
set for one test only; keys live in moto's memory and are nothing secret.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.s3 import _CLEARED_ENV, _DUMMY_ENV

__all__ = ["create_key", "use_kms"]


def use_kms(monkeypatch: pytest.MonkeyPatch, endpoint: str, scratch: Path) -> Any:
    """Point boto3's KMS client at ``endpoint`` with dummy credentials, for this test only; returns a client."""
    for name in _CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        **_DUMMY_ENV,
        "AWS_ENDPOINT_URL_KMS": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",  # KMS is regional; this botocore reads no AWS_REGION
        "AWS_CONFIG_FILE": str(scratch / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    return boto3.client("kms")


def create_key(client: Any) -> str:
    """A new symmetric encryption key; returns its alias (``alias/radstack-…``)."""
    key_id = client.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"][
        "KeyId"
    ]
    alias = f"alias/radstack-{uuid.uuid4().hex[:12]}"
    client.create_alias(AliasName=alias, TargetKeyId=key_id)
    return alias
