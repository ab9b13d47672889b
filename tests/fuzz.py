"""Seeded mutation fuzzing of DICOM input: pydicom's own test files with bytes flipped, tails cut and
element headers broken, the way a faulty modality, a bad disk or a hostile client would send them.

The mutants depend only on the seed (and on the test files of the installed pydicom), so a failure
is reproduced by running the same test again.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import Tag

__all__ = ["Mutant", "mutants", "source_files", "with_unknown_vr"]

#: Bigger files only make the run slower: the parser's paths are the same.
_LARGEST = 70_000
#: Value representations with a 4-byte length field in explicit VR (PS3.5 §7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_BOGUS_VRS = (b"ZZ", b"\x00\x00", b"XQ", b"un", b"\xff\xff")


@dataclass(frozen=True)
class Mutant:
    """A mutated file: where it came from and what was done to it (for the failure message)."""

    label: str
    data: bytes
    #: Where the data set starts (after preamble and file meta); mutations with ``keep_meta`` stay after it.
    dataset_start: int


def source_files() -> list[Path]:
    """pydicom's bundled test files up to :data:`_LARGEST` bytes, in a fixed order."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in folder.glob("*.dcm") if p.stat().st_size <= _LARGEST)


def _parsed(data: bytes) -> tuple[int, list[RawDataElement], str | None] | None:
    """Data set offset, top-level raw elements and transfer syntax of a test file; None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(DicomBytesIO(data), force=True)
    except Exception:
        return None
    elements = [e for e in ds._dict.values() if isinstance(e, RawDataElement) and e.value_tell]
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, True)
        read_dataset(stream, False, True, stop_when=lambda tag, _vr, _length: tag.group != 2)
    except Exception:
        return None
    return stream.tell(), elements, syntax or None


def _mutate(rng: random.Random, data: bytes, start: int, elements: list[RawDataElement]) -> tuple[str, bytes]:
    out = bytearray(data)
    window = min(len(out), start + 1024)
    kind = rng.randrange(4)
    if kind == 0 or not elements:
        places = sorted(rng.randrange(start, window) for _ in range(rng.randint(1, 8)))
        for place in places:
            out[place] = rng.randrange(256)
        return f"bytes flipped at {places}", bytes(out)
    if kind == 1:
        cut = rng.randrange(start, len(out))
        return f"cut at byte {cut} of {len(out)}", bytes(out[:cut])
    element = rng.choice(elements)
    tell = element.value_tell or 0
    long_header = element.VR in _LONG_VRS
    if kind == 2:
        # The length field: 4 bytes before the value for long VRs (and implicit VR), else 2.
        size = 4 if long_header or element.is_implicit_VR else 2
        out[tell - size : tell] = rng.randbytes(size)
        return f"length of {element.tag} broken", bytes(out)
    at = tell - (8 if long_header else 4)
    out[at : at + 2] = rng.choice(_BOGUS_VRS)
    return f"VR of {element.tag} broken", bytes(out)


def mutants(seed: int, count: int, *, keep_meta: bool = False) -> Iterator[Mutant]:
    """``count`` mutants of pydicom's test files, the same for the same ``seed``.

    With ``keep_meta``, only files with a complete file meta (preamble, SOP class and instance,
    transfer syntax) are used and only their data set is mutated, so a DIMSE peer can still send
    them (the file meta becomes the C-STORE request's command).
    """
    rng = random.Random(seed)
    sources: list[tuple[str, bytes, int, list[RawDataElement]]] = []
    for path in source_files():
        data = path.read_bytes()
        parsed = _parsed(data)
        if parsed is None:
            continue
        start, elements, syntax = parsed
        if keep_meta:
            meta = pydicom.dcmread(DicomBytesIO(data[:start]), force=True).file_meta
            if (
                data[128:132] != b"DICM"
                or not syntax
                or "MediaStorageSOPClassUID" not in meta
                or "MediaStorageSOPInstanceUID" not in meta
                or start < 132
            ):
                continue
        else:
            start = 0
        sources.append((path.name, data, start, elements))
    for _ in range(count):
        name, data, start, elements = rng.choice(sources)
        what, mutated = _mutate(rng, data, start, elements)
        yield Mutant(f"{name}: {what}", mutated, start)


def with_unknown_vr(data: bytes, keyword: str) -> bytes:
    """An explicit VR Part-10 file with the VR of top-level ``keyword`` (a 2-byte length VR) made 'ZZ'.

    pydicom opens such a file and fails only when the element is first used.
    """
    element = pydicom.dcmread(DicomBytesIO(data))._dict[Tag(keyword)]
    assert isinstance(element, RawDataElement) and element.value_tell and element.VR not in _LONG_VRS
    at = element.value_tell - 4  # tag (4), VR (2), length (2), value
    return data[:at] + b"ZZ" + data[at + 2 :]
