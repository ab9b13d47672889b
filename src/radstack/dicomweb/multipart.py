"""multipart/related (RFC 2387) as PS3.18 §8.6.1.2 uses it: a streaming reader and a writer.

The reader never holds a whole request body: each part is spooled to a temporary file (in memory
up to :data:`SPOOL_BYTES`, on disk beyond) and handed over as soon as its closing delimiter is seen.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from radstack.errors import BadRequest, PayloadTooLarge

__all__ = [
    "Part",
    "iter_multipart",
    "multipart_body",
    "new_boundary",
    "parse_media_type",
    "split_unquoted",
]

SPOOL_BYTES = 16 * 1024 * 1024
_MAX_HEADER_BYTES = 16 * 1024
_TOKEN = re.compile(r'\s*([^=;\s]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;]*))?\s*')


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/subtype; a=1; b="x"`` into the lower-cased media type and its parameters."""
    pieces = split_unquoted(value, ";")
    media_type = pieces[0].strip().lower() if pieces else ""
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        match = _TOKEN.fullmatch(piece)
        if not match:
            continue
        name, raw = match.group(1).lower(), (match.group(2) or "").strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
    return media_type, params


def split_unquoted(value: str, separator: str) -> list[str]:
    """Split a header value on ``separator`` outside quoted strings (RFC 9110 §5.6.4)."""
    pieces: list[str] = []
    current: list[str] = []
    quoted, escaped = False, False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


@dataclass
class Part:
    """One body part: its headers (lower-cased names) and its content, spooled."""

    headers: dict[str, str]
    body: BinaryIO
    size: int = 0
    #: False when the stream ended before this part's closing delimiter.
    complete: bool = True
    _closed: bool = field(default=False, repr=False)

    @property
    def content_type(self) -> str:
        return parse_media_type(self.headers.get("content-type", ""))[0]

    @property
    def media_type_params(self) -> dict[str, str]:
        """The parameters of the part's Content-Type, e.g. ``transfer-syntax`` (PS3.18 §8.7.3.5.2)."""
        return parse_media_type(self.headers.get("content-type", ""))[1]

    def read(self) -> bytes:
        self.body.seek(0)
        return self.body.read()

    def close(self) -> None:
        if not self._closed:
            self.body.close()
            self._closed = True


async def iter_multipart(
    chunks: AsyncIterator[bytes], boundary: str, *, max_bytes: int
) -> AsyncIterator[Part]:
    """Yield the parts of a multipart/related body as they complete.

    Raises
    ------
    BadRequest
        When the boundary is not 1 to 70 characters, no delimiter line ``--boundary`` opens the
        body, a part's headers are malformed or longer than 16 KiB, or the body ends inside a
        delimiter line or a part's headers.
    PayloadTooLarge
        When the body grows past ``max_bytes``.
    """
    if not boundary or len(boundary) > 70:
        raise BadRequest(f"multipart boundary {boundary!r} must be 1 to 70 characters (RFC 2046 §5.1.1)")
    delimiter = b"--" + boundary.encode("latin-1")
    inner = b"\r\n" + delimiter
    buffer = bytearray()
    received = 0
    state = "preamble"
    part: Part | None = None
    headers_raw = b""
    stream = chunks.__aiter__()
    exhausted = False

    async def more() -> bool:
        nonlocal received, exhausted
        if exhausted:
            return False
        try:
            chunk = await stream.__anext__()
        except StopAsyncIteration:
            exhausted = True
            return False
        received += len(chunk)
        if received > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        buffer.extend(chunk)
        return True

    while True:
        if state == "preamble":
            # The first delimiter may open the body directly or follow a preamble line.
            index = buffer.find(delimiter)
            if index < 0 or len(buffer) < index + len(delimiter) + 2:
                if not await more():
                    raise BadRequest(f"multipart body has no delimiter line '--{boundary}'")
                continue
            if index > 0 and buffer[index - 2 : index] != b"\r\n":
                raise BadRequest(f"multipart delimiter '--{boundary}' does not start a line")
            del buffer[: index + len(delimiter)]
            state = "after-delimiter"
        elif state == "after-delimiter":
            if len(buffer) < 2 and await more():
                continue
            if buffer[:2] == b"--":
                return  # close delimiter: the epilogue is ignored
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if not await more():
                    raise BadRequest("multipart body ends inside a delimiter line")
                continue
            if buffer[:line_end].strip(b" \t"):
                raise BadRequest(f"unexpected bytes after multipart delimiter '--{boundary}'")
            del buffer[: line_end + 2]
            state = "headers"
            headers_raw = b""
        elif state == "headers":
            if buffer.startswith(b"\r\n"):
                end, skip = 0, 2
            else:
                end, skip = buffer.find(b"\r\n\r\n"), 4
            if end < 0:
                if len(buffer) > _MAX_HEADER_BYTES:
                    raise BadRequest("multipart part headers exceed 16 KiB")
                if not await more():
                    raise BadRequest("multipart body ends inside a part's headers")
                continue
            headers_raw = bytes(buffer[:end])
            del buffer[: end + skip]
            part = Part(headers=_parse_headers(headers_raw), body=_spool())
            state = "body"
        else:  # body
            assert part is not None
            index = buffer.find(inner)
            if index >= 0:
                part.body.write(buffer[:index])
                part.size += index
                del buffer[: index + len(inner)]
                part.body.seek(0)
                yield part
                part = None
                state = "after-delimiter"
                continue
            keep = len(inner) - 1
            if len(buffer) > keep:
                flush = len(buffer) - keep
                part.body.write(buffer[:flush])
                part.size += flush
                del buffer[:flush]
            if not await more():
                part.body.write(buffer)
                part.size += len(buffer)
                part.body.seek(0)
                part.complete = False
                yield part
                return


def _spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # type: ignore[return-value]


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"malformed multipart part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def new_boundary() -> str:
    return f"radstack-{secrets.token_hex(12)}"


def multipart_body(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """Serialise ``(content type, body)`` pairs as a multipart/related body."""
    opening = f"--{boundary}\r\n".encode("latin-1")
    for content_type, body in parts:
        yield opening + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode(
            "latin-1"
        )
        yield body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")
