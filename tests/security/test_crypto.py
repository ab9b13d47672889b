"""Encryption at rest (security/crypto.py): the chunked AES-256-GCM blob format read back at every
boundary, tampering refused, key files that others can read refused, key rotation that rewrites
headers only, and a real server whose blob files hold no patient name and no pixel bytes, with local
key files and with AWS KMS (moto), before and after ``radstack keys rotate``."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from radstack.config import Settings
from radstack.errors import RadstackError
from radstack.platform import Platform
from radstack.security.crypto import (
    CHUNK_SIZE,
    MAGIC,
    AwsKmsKeyProvider,
    BlobIntegrityError,
    EncryptedBlobStore,
    KeyProviderError,
    LocalKeyProvider,
    RewrapOutcome,
    key_usage,
    open_key_provider,
    rotate_keys,
)
from radstack.store.blobs import BlobStore, LocalBlobStore, S3BlobStore
from tests import authed
from tests.conftest import RunningServer, free_port, start_server
from tests.helpers import dicom_body, instance_url, response_parts, stow

RADSTACK = str(Path(sys.executable).with_name("radstack"))
SIZES = [0, 1, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 17]
#: pydicom's test files, with the patient names and IDs that must never be found in a blob file.
FILES = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "JPEG2000.dcm"]


def payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(params=["file", "s3"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """The store under the encryption: files in a directory, or a bucket on a real S3-protocol server."""
    if request.param == "file":
        return LocalBlobStore(tmp_path / "blobs")
    return S3BlobStore(request.getfixturevalue("s3_bucket"), "enc")


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyProvider:
    return LocalKeyProvider(tmp_path / "keys")


@pytest.fixture
def local(tmp_path: Path, keys: LocalKeyProvider) -> EncryptedBlobStore:
    return EncryptedBlobStore(LocalBlobStore(tmp_path / "blobs"), keys)


def blob_file(store: EncryptedBlobStore, key: str) -> Path:
    assert isinstance(store.inner, LocalBlobStore)
    return store.inner.root / key


def boundaries(size: int) -> list[int]:
    points = {0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, size - 1, size, size + 1}
    return sorted(p for p in points if p >= 0)


# ----------------------------------------------------------------------------- the format
@pytest.mark.parametrize("size", SIZES)
def test_get_and_get_range_round_trip_at_every_boundary(
    inner: BlobStore, keys: LocalKeyProvider, size: int
) -> None:
    warm = EncryptedBlobStore(inner, keys)
    data = payload(size, seed=size)
    key = f"f/{size:08d}"
    warm.put(key, data)
    stored = inner.get(key)
    assert stored.startswith(MAGIC)
    if size >= 64:
        assert data[:64] not in stored
    chunks = max(1, -(-size // CHUNK_SIZE))
    assert len(stored) - size - 16 * chunks in range(64, 1024), "a header, then a 16-byte tag per chunk"
    assert warm.get(key) == data
    assert EncryptedBlobStore(inner, keys).get(key) == data
    lengths = [0, 1, 15, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, size, 1 << 62]
    for start in boundaries(size):
        for length in lengths:
            want = data[start : start + length]
            assert warm.get_range(key, start, length) == want, (start, length)
            cold = EncryptedBlobStore(inner, keys)  # the first read of a blob opens its header
            assert cold.get_range(key, start, length) == want, (start, length)


def test_each_blob_has_its_own_data_key_and_nonces(local: EncryptedBlobStore) -> None:
    data = payload(3 * CHUNK_SIZE)
    local.put("f/a", data)
    local.put("f/b", data)
    a, b = blob_file(local, "f/a").read_bytes(), blob_file(local, "f/b").read_bytes()
    assert len(a) == len(b)
    same = sum(x == y for x, y in zip(a[256:], b[256:], strict=True))
    assert same < len(data) / 100, "unrelated ciphertexts agree in about 1 byte of 256"


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_changed_ciphertext_byte_is_refused(local: EncryptedBlobStore, keys: LocalKeyProvider) -> None:
    data = payload(3 * CHUNK_SIZE + 5)
    local.put("f/x", data)
    path = blob_file(local, "f/x")
    size = path.stat().st_size
    flip(path, size - 21 - 100)  # inside the third chunk (the fourth holds 5 bytes + a tag)
    for store in (local, EncryptedBlobStore(local.inner, keys)):
        with pytest.raises(
            BlobIntegrityError, match=r"blob 'f/x' failed its integrity check at chunk 3 of 4"
        ):
            store.get("f/x")
        with pytest.raises(BlobIntegrityError, match="chunk 3 of 4"):
            store.get_range("f/x", 2 * CHUNK_SIZE + 10, 20)
        # Each chunk is authenticated on its own: the chunks before the change still read.
        assert store.get_range("f/x", 0, CHUNK_SIZE) == data[:CHUNK_SIZE]
    with pytest.raises(RadstackError) as caught:
        local.get("f/x")
    error = caught.value
    assert error.http_status == 500 and error.title == "Stored data failed its integrity check"


def test_every_header_byte_is_authenticated(local: EncryptedBlobStore, keys: LocalKeyProvider) -> None:
    data = payload(CHUNK_SIZE + 10)
    local.put("f/h", data)
    path = blob_file(local, "f/h")
    original = path.read_bytes()
    header_length = int.from_bytes(original[10:12], "big")
    assert original[header_length:] != data
    for offset in range(header_length):
        flip(path, offset)
        for store in (local, EncryptedBlobStore(local.inner, keys)):
            with pytest.raises(RadstackError) as caught:
                store.get("f/h")
            assert isinstance(caught.value, BlobIntegrityError | KeyProviderError), (offset, caught.value)
        with pytest.raises(RadstackError):
            EncryptedBlobStore(local.inner, keys).get_range("f/h", 0, 10)
        path.write_bytes(original)
    assert local.get("f/h") == data


@pytest.mark.parametrize("cut", [1, 16, 10 + 16, CHUNK_SIZE + 16 + 10 + 16, -3])
def test_a_cut_or_extended_blob_is_refused(
    local: EncryptedBlobStore, keys: LocalKeyProvider, cut: int
) -> None:
    """Bytes cut off the end (the whole last chunk, every chunk), or three bytes added."""
    data = payload(CHUNK_SIZE + 10)
    local.put("f/t", data)
    path = blob_file(local, "f/t")
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut] if cut > 0 else raw + b"\0\0\0")
    for store in (local, EncryptedBlobStore(local.inner, keys)):
        with pytest.raises(BlobIntegrityError, match=r"cut short|extended|integrity check"):
            store.get("f/t")
    if cut > 0:
        with pytest.raises(BlobIntegrityError):
            EncryptedBlobStore(local.inner, keys).get_range("f/t", CHUNK_SIZE, 10)


def test_swapped_blob_files_are_refused(local: EncryptedBlobStore, keys: LocalKeyProvider) -> None:
    """The blob's key is bound into every chunk: a file moved or copied to another key does not open."""
    local.put("f/one", payload(2 * CHUNK_SIZE, seed=1))
    local.put("f/two", payload(2 * CHUNK_SIZE, seed=2))
    one, two = blob_file(local, "f/one"), blob_file(local, "f/two")
    first, second = one.read_bytes(), two.read_bytes()
    one.write_bytes(second)
    two.write_bytes(first)
    for store in (local, EncryptedBlobStore(local.inner, keys)):
        for key in ("f/one", "f/two"):
            with pytest.raises(BlobIntegrityError, match=f"blob '{key}' failed its integrity check"):
                store.get(key)
            with pytest.raises(BlobIntegrityError):
                EncryptedBlobStore(local.inner, keys).get_range(key, 0, 100)


def test_a_blob_without_encryption_is_refused_unless_allowed(
    local: EncryptedBlobStore, keys: LocalKeyProvider
) -> None:
    plain = payload(CHUNK_SIZE * 2, seed=5)
    local.inner.put("j/legacy", plain)  # as radstack wrote blobs before encryption at rest
    with pytest.raises(BlobIntegrityError, match="RADSTACK_ALLOW_PLAINTEXT_BLOBS=true"):
        local.get("j/legacy")
    with pytest.raises(BlobIntegrityError, match="not encrypted"):
        local.get_range("j/legacy", 0, 10)
    legacy = EncryptedBlobStore(local.inner, keys, allow_plaintext=True)
    assert legacy.get("j/legacy") == plain
    for start, length in [(0, 10), (CHUNK_SIZE, 5000), (5000, 1 << 62), (len(plain), 4)]:
        assert legacy.get_range("j/legacy", start, length) == plain[start : start + length]


# ----------------------------------------------------------------------------- key files
def test_the_key_file_is_made_private_on_first_start(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path / "keys")
    path = tmp_path / "keys" / "kek-000001.key"
    assert (path.stat().st_mode & 0o777, (tmp_path / "keys").stat().st_mode & 0o777) == (0o600, 0o700)
    assert len(path.read_bytes()) == 32
    assert provider.current_id().startswith("local:1:")
    assert LocalKeyProvider(tmp_path / "keys").current_id() == provider.current_id(), "made once"


def test_a_key_file_others_can_read_refuses_to_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", ingest_processes=0, dicom_port=0)
    Platform.open(settings).close()
    key_file = settings.data_dir / "keys" / "kek-000001.key"
    key_file.chmod(0o644)
    with pytest.raises(KeyProviderError) as caught:
        Platform.open(settings)
    assert f"key file {key_file.resolve()} has mode 0644" in caught.value.message
    assert f"chmod 600 {key_file.resolve()}" in caught.value.message
    served = subprocess.run(
        [RADSTACK, "keys", "status", "--data-dir", str(settings.data_dir)], capture_output=True, text=True
    )
    assert served.returncode == 2 and "chmod 600" in served.stderr
    key_file.chmod(0o600)
    Platform.open(settings).close()


def test_blobs_of_another_keys_directory_name_the_problem(tmp_path: Path) -> None:
    """Two nodes that share blobs but each made their own key file: a clear error, not garbage."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    EncryptedBlobStore(blobs, LocalKeyProvider(tmp_path / "node-a")).put("f/a", b"frame")
    other = EncryptedBlobStore(blobs, LocalKeyProvider(tmp_path / "node-b"))
    with pytest.raises(KeyProviderError, match="must share one keys directory"):
        other.get("f/a")
    (tmp_path / "node-b" / "kek-000001.key").unlink()
    with pytest.raises(KeyProviderError, match=r"kek-000001.key is missing"):
        EncryptedBlobStore(blobs, LocalKeyProvider(tmp_path / "node-b", create=False)).get("f/a")


def test_key_urls() -> None:
    with pytest.raises(ValueError, match="file:///<directory> or awskms:///"):
        open_key_provider("vault://secret/radstack")
    with pytest.raises(ValueError, match="names no key"):
        open_key_provider("awskms:///")


# ----------------------------------------------------------------------------- rotation
def test_rotation_rewrites_headers_only_and_resumes(tmp_path: Path, local: EncryptedBlobStore) -> None:
    datas = {f"f/{n}": payload(n * 40000 + 3, seed=n) for n in range(6)}
    for key, data in datas.items():
        local.put(key, data)
    local.inner.put("j/legacy", b'{"00100010": "before encryption"}')
    before = {key: blob_file(local, key).read_bytes() for key in datas}
    old = local.provider.current_id()

    report = rotate_keys(local, grace_seconds=0)
    new = report.target
    assert new.startswith("local:2:") and report.ok and report.total == 7
    assert report.outcomes[RewrapOutcome.REWRAPPED] == 6 and report.outcomes[RewrapOutcome.ENCRYPTED] == 1
    assert (tmp_path / "keys" / "kek-000001.key").exists(), "the old KEK is kept"
    reader = EncryptedBlobStore(local.inner, LocalKeyProvider(tmp_path / "keys"))
    for key, data in datas.items():
        after = blob_file(local, key).read_bytes()
        length = int.from_bytes(after[10:12], "big")
        assert after[length:] == before[key][length:], "the encrypted chunks are copied unchanged"
        assert after[:length] != before[key][:length]
        assert reader.kek_of(key) == new
        assert reader.get(key) == data and local.get(key) == data
        assert local.get_range(key, 39990, 30) == data[39990:40020]
    assert reader.get("j/legacy") == b'{"00100010": "before encryption"}'
    assert key_usage(reader).by_kek == {new: 7}

    # A blob that fails leaves the rotation unfinished; the next run resumes it (no third version).
    flip(blob_file(local, "f/1"), 200)  # a damaged header (its padding)
    again = rotate_keys(local, grace_seconds=0)
    assert again.target.startswith("local:3:")
    assert not again.ok and [key for key, _ in again.failures] == ["f/1"]
    assert "damaged encryption header" in again.failures[0][1]
    assert key_usage(reader).damaged and key_usage(reader).by_kek == {again.target: 6}
    flip(blob_file(local, "f/1"), 200)
    resumed = rotate_keys(local, grace_seconds=0)
    assert resumed.target == again.target and resumed.ok
    assert resumed.outcomes[RewrapOutcome.REWRAPPED] == 1 and resumed.outcomes[RewrapOutcome.CURRENT] == 6
    assert key_usage(reader).by_kek == {again.target: 7}
    assert sorted(p.name for p in (tmp_path / "keys").glob("kek-*")) == [
        "kek-000001.key",
        "kek-000002.key",
        "kek-000003.key",
    ]
    assert old != again.target and all(reader.get(key) == data for key, data in datas.items())


def test_kms_provider_wraps_once_per_wrapping_key_and_rotates(kms_key: str, tmp_path: Path) -> None:
    client = boto3.client("kms")
    calls: list[str] = []
    client.meta.events.register("before-call.kms", lambda model, **_: calls.append(model.name))
    provider = AwsKmsKeyProvider(kms_key, client=client)
    assert provider.current_id() == f"awskms:{provider.arn}@0"
    writer = EncryptedBlobStore(LocalBlobStore(tmp_path / "blobs"), provider)
    datas = {f"f/{n}": payload(1000 + n * 70000, seed=n) for n in range(20)}
    for key, data in datas.items():
        writer.put(key, data)
    assert calls.count("Encrypt") == 1, "one wrapping key for all twenty blobs"
    reader = EncryptedBlobStore(writer.inner, AwsKmsKeyProvider(kms_key, client=client))
    for key, data in datas.items():
        assert reader.get_range(key, 0, 500) == data[:500] and reader.get(key) == data
    assert calls.count("Decrypt") == 1, "the unwrapped wrapping key is cached"

    client.rotate_key_on_demand(KeyId=provider.arn)
    report = rotate_keys(writer, grace_seconds=0)
    assert report.ok and report.target == f"awskms:{provider.arn}@1"
    assert report.outcomes[RewrapOutcome.REWRAPPED] == 20
    fresh = EncryptedBlobStore(writer.inner, AwsKmsKeyProvider(kms_key))
    assert all(fresh.kek_of(key) == report.target and fresh.get(key) == data for key, data in datas.items())
    assert rotate_keys(writer, grace_seconds=0).outcomes[RewrapOutcome.CURRENT] == 20, "idempotent"


def test_kms_misconfiguration_refuses_to_start(kms_key: str) -> None:
    with pytest.raises(KeyProviderError, match="alias/no-such-key"):
        open_key_provider("awskms:///alias/no-such-key")
    client = boto3.client("kms")
    client.disable_key(KeyId=client.describe_key(KeyId=kms_key)["KeyMetadata"]["KeyId"])
    with pytest.raises(KeyProviderError, match="Disabled"):
        open_key_provider(f"awskms:///{kms_key}")


# ----------------------------------------------------------------------------- a real server
def pydicom_files(names: Iterable[str] = FILES) -> list[Dataset]:
    return [pydicom.dcmread(get_testdata_file(name) or "") for name in names]


def secrets_of(datasets: list[Dataset]) -> tuple[list[bytes], set[bytes]]:
    """The patient names and IDs of ``datasets``, and every 64-byte run of their stored pixel bytes
    (runs of a single repeated byte, such as zero padding, say nothing and are left out)."""
    strings = [
        value.encode()
        for ds in datasets
        for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", "")))
        if len(value) >= 4
    ]
    runs: set[bytes] = set()
    for ds in datasets:
        pixels = bytes(ds.PixelData)
        runs.update(pixels[i : i + 64] for i in range(len(pixels) - 63) if len(set(pixels[i : i + 64])) > 1)
    return strings, runs


def leaks(data: bytes, strings: list[bytes], runs: set[bytes]) -> list[str]:
    found = [text.decode() for text in strings if text in data]
    if any(data[i : i + 64] in runs for i in range(len(data) - 63)):
        found.append("64 bytes of pixel data")
    return found


def assert_served_identically(server: RunningServer, datasets: list[Dataset], *, rendered: bool) -> None:
    for ds in datasets:
        response = authed.get(
            instance_url(server, ds),
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert response.status_code == 200, response.text
        [(_, part)] = response_parts(response)
        back = pydicom.dcmread(io.BytesIO(part))
        assert np.array_equal(back.pixel_array, ds.pixel_array)
        assert back.PatientName == ds.PatientName
    if rendered:  # a reduced resolution reads a prefix of the HTJ2K frame (a range read)
        ct = datasets[0]
        image = authed.get(
            f"{instance_url(server, ct)}/rendered",
            params={"viewport": "32,32"},
            headers={"Accept": "image/png"},
        )
        assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (32, 32)


def run_radstack(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RADSTACK, *argv], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


@pytest.fixture
def plain_pixel_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server that keeps native pixels as they came (no HTJ2K), so that without encryption its frame
    blobs would hold the raw pixel bytes."""
    settings = Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        dicom_port=0,
        ingest_processes=0,
        encode_htj2k=False,
    )
    yield from start_server(settings)


def test_no_phi_or_pixels_in_blob_files_before_and_after_rotation(plain_pixel_server: RunningServer) -> None:
    server = plain_pixel_server
    data_dir = server.platform.settings.data_dir
    datasets = pydicom_files()
    assert stow(server, dicom_body(*datasets)).status_code == 200
    for study in {str(ds.StudyInstanceUID) for ds in datasets}:  # builds the metadata documents
        assert authed.get(f"{server.dicomweb}/studies/{study}/metadata").status_code == 200
    strings, runs = secrets_of(datasets)

    files = [path for path in (data_dir / "blobs").rglob("*") if path.is_file()]
    assert {path.relative_to(data_dir / "blobs").parts[0] for path in files} >= {"f", "h", "j", "docs"}
    for path in files:
        assert leaks(path.read_bytes(), strings, runs) == [], path
    # The check can fail: the same blobs, decrypted, hold both.
    store = server.platform.store.blobs
    plaintexts = b"".join(store.get(path.relative_to(data_dir / "blobs").as_posix()) for path in files)
    assert set(leaks(plaintexts, strings, runs)) >= {
        "CompressedSamples^CT1",
        "1CT1",
        "64 bytes of pixel data",
    }
    assert_served_identically(server, datasets, rendered=False)

    # Online rotation, by the command line, while the server runs.
    before = {path: path.read_bytes() for path in files}
    rotated = run_radstack("keys", "rotate", "--data-dir", str(data_dir), "--grace-seconds", "0")
    assert rotated.returncode == 0, rotated.stderr
    new = LocalKeyProvider(data_dir / "keys", create=False).current_id()
    assert new.startswith("local:2:")
    done = re.search(rf"(\d+) blobs now under {new}: \1 re-wrapped, 0 encrypted", rotated.stdout)
    assert done and int(done.group(1)) >= len(files), rotated.stdout
    assert f"re-wrapping blob keys: {done.group(1)}/{done.group(1)}" in rotated.stderr
    reader = EncryptedBlobStore(LocalBlobStore(data_dir / "blobs"), LocalKeyProvider(data_dir / "keys"))
    for path in files:
        key = path.relative_to(data_dir / "blobs").as_posix()
        assert reader.kek_of(key) == new
        raw = path.read_bytes()
        length = int.from_bytes(raw[10:12], "big")
        assert raw[length:] == before[path][length:]
        assert leaks(raw, strings, runs) == []
    assert_served_identically(server, datasets, rendered=False)
    status = run_radstack("keys", "status", "--data-dir", str(data_dir))
    assert status.returncode == 0 and f"{new}: {done.group(1)} blobs (current)" in status.stdout


def test_kms_and_s3_server_with_ingest_processes(s3_bucket: str, kms_key: str, tmp_path: Path) -> None:
    """KMS wraps the keys, the blobs are in a bucket, and ingest runs in a worker process."""
    env = {"RADSTACK_KEY_URL": f"awskms:///{kms_key}", "RADSTACK_BLOB_URL": f"s3://{s3_bucket}/site"}
    settings = Settings(
        data_dir=tmp_path / "data",
        http_port=free_port(),
        dicom_port=0,
        ingest_processes=1,
        key_url=env["RADSTACK_KEY_URL"],
        blob_url=env["RADSTACK_BLOB_URL"],
    )
    s3: Any = boto3.client("s3")
    kms: Any = boto3.client("kms")
    arn = kms.describe_key(KeyId=kms_key)["KeyMetadata"]["Arn"]

    def objects() -> dict[str, bytes]:
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
        return {key: s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() for key in keys}

    datasets = pydicom_files(["CT_small.dcm", "MR_small.dcm"])
    strings, _runs = secrets_of(datasets)
    served = start_server(settings)
    server = next(served)
    try:
        assert stow(server, dicom_body(*datasets)).status_code == 200
        assert_served_identically(server, datasets, rendered=True)
        stored = objects()
        assert len(stored) >= 6 and not (settings.data_dir / "keys").exists()
        reader = EncryptedBlobStore(S3BlobStore(s3_bucket, "site"), AwsKmsKeyProvider(kms_key))
        for name, data in stored.items():
            assert data.startswith(MAGIC) and leaks(data, strings, set()) == [], name
            assert reader.kek_of(name.removeprefix("site/")) == f"awskms:{arn}@0"

        kms.rotate_key_on_demand(KeyId=arn)
        rotate = ["keys", "rotate", "--data-dir", str(settings.data_dir), "--grace-seconds", "0"]
        rotated = run_radstack(*rotate, env=env)
        assert rotated.returncode == 0, rotated.stderr
        assert re.search(rf"(\d+) blobs now under awskms:{arn}@1: \1 re-wrapped", rotated.stdout), (
            rotated.stdout
        )
        for name in objects():
            assert reader.kek_of(name.removeprefix("site/")) == f"awskms:{arn}@1"
        assert_served_identically(server, datasets, rendered=True)
        status = run_radstack("keys", "status", "--data-dir", str(settings.data_dir), env=env)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        next(served, None)  # runs the server's shutdown
