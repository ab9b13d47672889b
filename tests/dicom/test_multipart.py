"""The streaming multipart/related reader (RFC 2046 §5.1, RFC 2387) on awkward but valid bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from radstack.dicomweb.multipart import iter_multipart, multipart_body, parse_media_type
from radstack.errors import BadRequest, PayloadTooLarge


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read(data: bytes, boundary: str, size: int = 7, max_bytes: int = 10**9) -> list[tuple[str, bytes, bool]]:
    async def run() -> list[tuple[str, bytes, bool]]:
        out = []
        async for part in iter_multipart(_chunks(data, size), boundary, max_bytes=max_bytes):
            out.append((part.content_type, part.read(), part.complete))
            part.close()
        return out

    return asyncio.run(run())


PAYLOADS = [
    ("application/dicom", bytes(range(256)) * 3),
    ("text/plain", b"--not-the-boundary\r\n--b"),
    ("application/dicom", b""),
]


@pytest.mark.parametrize("size", [1, 2, 7, 4096])
def test_round_trip_in_any_chunking(size: int) -> None:
    body = b"".join(multipart_body(PAYLOADS, "bnd"))
    assert read(body, "bnd", size) == [(t, d, True) for t, d in PAYLOADS]


def test_preamble_epilogue_and_quoted_boundary() -> None:
    body = b"preamble text\r\n" + b"".join(multipart_body(PAYLOADS[:1], "a:b c")) + b"epilogue"
    media_type, params = parse_media_type('multipart/related; type="application/dicom"; boundary="a:b c"')
    assert media_type == "multipart/related" and params["boundary"] == "a:b c"
    assert read(body, params["boundary"]) == [(PAYLOADS[0][0], PAYLOADS[0][1], True)]


def test_missing_closing_delimiter_marks_the_last_part_incomplete() -> None:
    body = b"".join(multipart_body(PAYLOADS[:2], "bnd"))[: -len(b"--bnd--\r\n") - 1]
    body += b"\r\n--bnd\r\nContent-Type: application/dicom\r\n\r\nhalf a file"
    got = read(body, "bnd")
    assert [complete for _t, _d, complete in got] == [True, True, False]


def test_malformed_bodies() -> None:
    with pytest.raises(BadRequest, match="no delimiter"):
        read(b"just bytes", "bnd")
    with pytest.raises(BadRequest, match="header"):
        read(b"--bnd\r\nno colon here\r\n\r\nbody\r\n--bnd--", "bnd")
    with pytest.raises(PayloadTooLarge):
        read(b"".join(multipart_body(PAYLOADS, "bnd")), "bnd", max_bytes=100)
