"""What encryption at rest costs a blob read: plain ``LocalBlobStore`` against ``EncryptedBlobStore``.

Prints p50 and p90 in microseconds of get / get_range on blobs of 200 KB (a CT frame) and 4 MB (a
radiograph), each read from the page cache, so the table shows the CPU overhead of decryption and
the format rather than the disk:

* ``get``: the whole blob;
* ``get_range 4 KiB``: the first read of a progressive HTJ2K access (its main header);
* ``get_range 25 %``: a byte prefix such as a reduced resolution needs;
* ``levels skipres=2``: ``htj2k_read_levels`` on a real HTJ2K frame (several reads, as WADO's
  reduced-resolution path does);
* ``first read``: ``get_range 4 KiB`` of a blob this process has not opened yet (the header is
  parsed and the data key unwrapped; the wrapping key is cached);
* ``put``: a write, temporary file + fsync + rename included.

Usage: ``.venv/bin/python bench/crypto.py [--repeat 400]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from radstack.dicom.codecs import encode_htj2k, htj2k_read_levels
from radstack.security.crypto import EncryptedBlobStore, LocalKeyProvider
from radstack.store.blobs import BlobStore, LocalBlobStore, content_key


def timed(action: Callable[[], object], repeat: int) -> tuple[float, float]:
    """p50 and p90 of ``action`` in microseconds (after a few warm-up calls)."""
    for _ in range(5):
        action()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        action()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]


def read_all(store: BlobStore, key: str) -> bytes:
    return store.get(key)


def read_range(store: BlobStore, key: str, length: int) -> bytes:
    return store.get_range(key, 0, length)


def read_levels(store: BlobStore, key: str) -> bytes:
    return htj2k_read_levels(lambda start, length: store.get_range(key, start, length), 2)


def read_next(store: BlobStore, keys: Iterator[str]) -> bytes:
    return store.get_range(next(keys), 0, 4096)


def write_next(store: BlobStore, keys: Iterator[str], data: bytes) -> None:
    store.put(next(keys), data)


def ct_frame(size: int) -> bytes:
    """An HTJ2K lossless frame of a noisy disc phantom, ``size``² 12-bit in uint16."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (0.4 * size) ** 2
    image = np.where(disc, 1040, 24) + rng.normal(0, 20, (size, size))
    return encode_htj2k(np.clip(image, 0, 4095).astype(np.uint16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=400, help="timed reads per cell")
    args = parser.parse_args()
    repeat = args.repeat
    with tempfile.TemporaryDirectory(prefix="radstack-bench-crypto-") as scratch:
        root = Path(scratch)
        plain: BlobStore = LocalBlobStore(root / "plain")
        keys = LocalKeyProvider(root / "keys")
        encrypted = EncryptedBlobStore(LocalBlobStore(root / "encrypted"), keys)
        frame = ct_frame(1024)
        blobs = {
            "200 KB": os.urandom(200_000),
            "4 MB": os.urandom(4_000_000),
            f"HTJ2K {len(frame) // 1000} KB": frame,
        }
        rows: list[tuple[str, str, tuple[float, float], tuple[float, float]]] = []
        for label, data in blobs.items():
            key = content_key("f", data)
            plain.put(key, data)
            encrypted.put(key, data)
            assert encrypted.get(key) == data
            quarter = len(data) // 4
            steps: dict[str, Callable[[BlobStore], object]] = {
                "get": partial(read_all, key=key),
                "get_range 4 KiB": partial(read_range, key=key, length=4096),
                "get_range 25 %": partial(read_range, key=key, length=quarter),
            }
            if label.startswith("HTJ2K"):
                steps["levels skipres=2"] = partial(read_levels, key=key)
            for step, action in steps.items():
                rows.append(
                    (
                        label,
                        step,
                        timed(partial(action, plain), repeat),
                        timed(partial(action, encrypted), repeat),
                    )
                )
            # First reads: a fresh blob each time, so the object cache does not hold its header.
            many = [os.urandom(len(data)) for _ in range(min(repeat, 40))]
            fresh = [content_key("f", blob) for blob in many]
            for blob_key, blob in zip(fresh, many, strict=True):
                plain.put(blob_key, blob)
                encrypted.put(blob_key, blob)
            cold = EncryptedBlobStore(encrypted.inner, keys)
            rows.append(
                (
                    label,
                    "first read 4 KiB",
                    timed(partial(read_next, plain, iter(fresh * 2)), len(fresh) - 5),
                    timed(partial(read_next, cold, iter(fresh)), len(fresh) - 5),
                )
            )
            names = (f"p/{label}/{n}" for n in range(10**9))
            rows.append(
                (
                    label,
                    "put",
                    timed(partial(write_next, plain, names, data), min(repeat, 50)),
                    timed(partial(write_next, encrypted, names, data), min(repeat, 50)),
                )
            )
    print(f"p50 / p90 in µs, {repeat} reads per cell (page cache, one thread, {os.cpu_count()} cores)")
    print(f"{'blob':<14} {'step':<18} {'plain':>15} {'encrypted':>15} {'overhead p50':>13}")
    for label, step, (p50, p90), (e50, e90) in rows:
        print(
            f"{label:<14} {step:<18} {p50:>7.0f} / {p90:<6.0f}{e50:>7.0f} / {e90:<6.0f}{e50 - p50:>+10.0f} µs"
        )


if __name__ == "__main__":
    main()
