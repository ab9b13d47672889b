"""The one ingest pipeline: STOW-RS today, C-STORE, import jobs and drop folders later.

parse → validate → split frames → encode → write blobs → commit the index row last (or find a duplicate).

A way in that knows who sends (STOW-RS, C-STORE) may pass a :class:`Screen`: it sees each analysed
instance before its row commits and may refuse it (nothing is stored: the blobs written so far are
content-addressed orphans, collected later) or hand back an :class:`Admission`, whose rows commit in
the same transaction as the instance's (the labeling intake's labels from a reader's SR or SEG).

Frames of native or lossless input are re-encoded as HTJ2K lossless RPCL (PS3.5 §8.2.14); lossy
frames are kept byte for byte; a CRC32 of each frame's decoded samples is stored with the instance.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian
from sqlalchemy.orm import Session

from radstack.dicom.codecs import (
    HTJ2K_PHOTOMETRIC,
    PixelInfo,
    array_to_native_frame,
    decode_frame,
    encode_htj2k,
    native_frame_to_array,
)
from radstack.dicom.frames import encapsulated_frames, native_frames, pixel_info
from radstack.dicom.header import PIXEL_DATA, encode_header, header_of, instance_json, raw_dataset_bytes
from radstack.dicom.json_model import first_int
from radstack.dicom.part10 import as_part10, malformed, reason_of
from radstack.dicom.transfer_syntax import HTJ2K_RPCL, SyntaxKindValues, kind_of, name_of
from radstack.dicom.uids import check_uid
from radstack.errors import (
    CannotUnderstand,
    DataSetMismatch,
    ProcessingFailure,
    RadstackError,
    StudyMismatch,
    TransferSyntaxNotSupported,
)
from radstack.store.blobs import BlobStore, content_key
from radstack.store.records import Batch, CommitOutcome, InstanceRecord, StoreOutcomeValues
from radstack.store.studies import StudyStore

__all__ = [
    "Admission",
    "Analyser",
    "IngestResult",
    "Prepared",
    "Screen",
    "analyse_file",
    "ingest_dataset",
    "ingest_file",
    "render_defaults",
    "stage_file",
]

log = logging.getLogger(__name__)

_EXPLICIT_LE = str(ExplicitVRLittleEndian)
_LARGEST_FOR_WORKERS = 256 * 1024 * 1024
_IMAGE_PIXEL_KEYWORDS = frozenset({"Rows", "Columns", "BitsAllocated"})
#: Float Pixel Data and Double Float Pixel Data (PS3.3 §C.7.6.24): images without (7FE0,0010).
_OTHER_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009})


@dataclass
class IngestResult:
    """What happened to one object: the UIDs that could be read, and the outcome or the error."""

    sop_class_uid: str | None = None
    sop_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    outcome: StoreOutcomeValues | None = None
    error: RadstackError | None = None
    warnings: list[str] = field(default_factory=list)
    #: Attributes radstack corrected (WarningReason 0xB000, coercion of data elements).
    coercions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Prepared:
    """An analysed instance: its record (the index row to be), and the blobs to write before that row."""

    record: InstanceRecord
    frames: list[bytes]
    header_bytes: bytes
    json_bytes: bytes


class Analyser(Protocol):
    """Runs :func:`stage_file` somewhere: in the calling thread, or in an ingest process."""

    def __call__(
        self, data: bytes, expected_study: str | None, encode: bool
    ) -> tuple[IngestResult, InstanceRecord | None]: ...


class Admission(Protocol):
    """What a :class:`Screen` let in: rows to commit with the instance's, and word of how it ended."""

    def commit(self, session: Session, outcome: CommitOutcome) -> None:
        """Write in the transaction that commits the instance's row (``outcome``: stored, duplicate,
        replaced); raise a :class:`RadstackError` to refuse the instance after all. May run more
        than once (a rolled-back group commit, a retry), each time in a new transaction."""

    def settled(self, error: RadstackError | None) -> None:
        """The commit is over: it happened (``error`` None) or the instance was refused."""


class Screen(Protocol):
    """Looks at an analysed instance before its index row commits (one sender's STOW-RS request or
    C-STORE association).

    ``dataset`` parses the instance (a pydicom data set with its pixel data) when called. Raises a
    :class:`RadstackError` to refuse the instance; returns an :class:`Admission` to commit rows with
    it, or None.
    """

    def __call__(self, record: InstanceRecord, dataset: Callable[[], Dataset]) -> Admission | None: ...


def ingest_file(
    store: StudyStore,
    source: BinaryIO | Path | bytes,
    batch: Batch,
    *,
    expected_study: str | None = None,
    encode: bool = True,
    analyser: Analyser | None = None,
    transfer_syntax: str | None = None,
    screen: Screen | None = None,
) -> IngestResult:
    """Ingest one DICOM object (PS3.10 §7). Never raises.

    ``source`` is a Part-10 file, or its file meta and data set without the preamble, or a bare
    data set in ``transfer_syntax`` (the syntax its sender stated); it is stored as a Part-10 file
    (:func:`radstack.dicom.part10.as_part10`). The CPU-bound part and the blob writes (parse,
    validate, decode, encode, write) run in ``analyser`` (an ingest process pool in the server);
    ``screen`` sees the analysed instance and the index row is committed here.
    """
    try:
        data = as_part10(_read_bytes(source), transfer_syntax)
    except OSError as exc:
        return IngestResult(error=CannotUnderstand(f"the file cannot be read: {exc.strerror or exc}"))
    except RadstackError as exc:
        return IngestResult(error=exc)
    # A very large object is analysed here rather than copied to a worker process and back.
    if analyser is None or len(data) > _LARGEST_FOR_WORKERS:
        analyser = partial(stage_file, store.blobs)
    try:
        result, record = analyser(data, expected_study, encode)
    except Exception as exc:  # a bug: the analysis refuses bad input itself; keep serving
        log.exception("analysis of an object failed")
        return IngestResult(error=ProcessingFailure(f"internal error while analysing: {type(exc).__name__}"))
    if record is not None:
        _screen_and_commit(store, record, batch, result, screen, partial(_read_part10, data))
    return result


def _screen_and_commit(
    store: StudyStore,
    record: InstanceRecord,
    batch: Batch,
    result: IngestResult,
    screen: Screen | None,
    dataset: Callable[[], Dataset],
) -> None:
    """Let ``screen`` see the instance, then commit its row (with what the screen admitted)."""
    admission = None
    if screen is not None:
        try:
            admission = screen(record, dataset)
        except RadstackError as exc:
            result.error = exc
            return
        except Exception as exc:  # a bug: refuse the instance, keep serving
            log.exception("screening SOP instance %s failed", record.sop_uid)
            result.error = ProcessingFailure(f"internal error while screening: {type(exc).__name__}")
            return
    _commit(store, record, batch, result, admission.commit if admission is not None else None)
    if admission is not None:
        admission.settled(result.error)


def ingest_dataset(
    store: StudyStore,
    ds: Dataset,
    batch: Batch,
    *,
    expected_study: str | None = None,
    encode: bool = True,
) -> IngestResult:
    """Ingest a parsed data set whose ``file_meta`` names its transfer syntax (C-STORE, imports)."""
    result, prepared = _analyse(ds, expected_study, encode, size=0, raw_dataset=None)
    record = _write_blobs(store.blobs, prepared, result)
    if record is not None:
        _commit(store, record, batch, result)
    return result


def stage_file(
    blobs: BlobStore, data: bytes, expected_study: str | None, encode: bool
) -> tuple[IngestResult, InstanceRecord | None]:
    """Analyse one Part-10 file and write its blobs: everything but the index row (the Analyser).

    Blobs are content-addressed, so staging an instance that turns out to be a duplicate writes
    nothing new.
    """
    result, prepared = analyse_file(data, expected_study, encode)
    return result, _write_blobs(blobs, prepared, result)


def analyse_file(
    data: bytes, expected_study: str | None, encode: bool
) -> tuple[IngestResult, Prepared | None]:
    """Parse, validate, split, decode and encode one Part-10 file; no I/O (safe in a worker process)."""
    try:
        ds = _read_part10(data)
        raw = raw_dataset_bytes(data, ds)
    except RadstackError as exc:
        return IngestResult(error=exc), None
    return _analyse(ds, expected_study, encode, size=len(data), raw_dataset=raw)


def _analyse(
    ds: Dataset, expected_study: str | None, encode: bool, *, size: int, raw_dataset: bytes | None
) -> tuple[IngestResult, Prepared | None]:
    result = IngestResult()
    try:
        result.sop_class_uid = _str_or_none(ds.get("SOPClassUID"))
        result.sop_uid = _str_or_none(ds.get("SOPInstanceUID"))
        result.study_uid = _str_or_none(ds.get("StudyInstanceUID"))
        result.series_uid = _str_or_none(ds.get("SeriesInstanceUID"))
        prepared = prepare(
            ds,
            expected_study=expected_study,
            encode=encode,
            size=size,
            coercions=result.coercions,
            raw_dataset=raw_dataset,
        )
    except RadstackError as exc:
        result.error = exc
        return result, None
    except Exception as exc:
        # pydicom parses elements when they are first used: bad bytes fail here, named by element.
        refusal = malformed(exc)
        if refusal is not None:
            result.error = refusal
            return result, None
        # A bug or a codec failure: a processing failure, the server keeps serving.
        log.exception("analysis of SOP instance %s failed", result.sop_uid)
        result.error = ProcessingFailure(f"internal error while analysing the instance: {type(exc).__name__}")
        return result, None
    return result, prepared


def _write_blobs(blobs: BlobStore, prepared: Prepared | None, result: IngestResult) -> InstanceRecord | None:
    """Write the frames, header and JSON of ``prepared``: the step before the index row."""
    if prepared is None:
        return None
    record = prepared.record
    try:
        for key, frame in zip(record.frames, prepared.frames, strict=True):
            blobs.put(key, frame)
        blobs.put(record.header_key, prepared.header_bytes)
        blobs.put(record.json_key, prepared.json_bytes)
    except RadstackError as exc:
        result.error = exc
        return None
    except Exception as exc:  # an I/O failure or a bug: no row refers to these blobs, keep serving
        log.exception("writing the blobs of SOP instance %s failed", record.sop_uid)
        result.error = ProcessingFailure(f"internal error while storing: {type(exc).__name__}")
        return None
    return record


def _commit(
    store: StudyStore,
    record: InstanceRecord,
    batch: Batch,
    result: IngestResult,
    also: Callable[[Session, CommitOutcome], None] | None = None,
) -> None:
    """Commit the index row of staged blobs: the last step, which makes the instance visible.

    The same content as the current instance is a duplicate and changes nothing (but ``also``).
    """
    try:
        result.outcome = store.commit_instance(record, batch, also).outcome
        if result.outcome is StoreOutcomeValues.REPLACED:
            result.warnings.append(
                f"SOPInstanceUID {record.sop_uid} was stored before with other content; the new content is "
                "current and the old one stays readable in the previous study version"
            )
    except RadstackError as exc:
        result.error = exc
    except Exception as exc:  # a database failure or a bug: nothing partial is visible, keep serving
        log.exception("committing SOP instance %s failed", record.sop_uid)
        result.error = ProcessingFailure(f"internal error while storing: {type(exc).__name__}")


def prepare(
    ds: Dataset,
    *,
    expected_study: str | None,
    encode: bool,
    size: int,
    coercions: list[str],
    raw_dataset: bytes | None = None,
) -> Prepared:
    """Validate and encode one instance; return its record and the blobs to write first.

    Raises
    ------
    StudyMismatch
        The instance's StudyInstanceUID is not ``expected_study`` (PS3.18 §10.5.1).
    DataSetMismatch
        A SOP class, SOP instance, study or series UID is missing or not a valid UID, or the pixels
        do not match the Image Pixel module: missing, empty, shorter than it promises, a required
        attribute missing or out of range, or encapsulated fragments that do not split into
        NumberOfFrames frames.
    CannotUnderstand
        The file meta has no TransferSyntaxUID, a frame cannot be decoded, or the data set is
        malformed (it cannot be re-encoded or turned into DICOM JSON).
    TransferSyntaxNotSupported
        No installed codec reads the transfer syntax.
    """
    sop_class = check_uid(ds.get("SOPClassUID"), "SOPClassUID")
    sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
    series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
    if expected_study is not None and study_uid != expected_study:
        raise StudyMismatch(
            f"StudyInstanceUID {study_uid} of SOP instance {sop_uid} differs from study {expected_study} "
            "named in the request URL (PS3.18 §10.5.1)"
        )
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not transfer_syntax:
        raise CannotUnderstand(f"SOP instance {sop_uid} has no TransferSyntaxUID (0002,0010)")
    header = header_of(ds)
    media_uid = meta.get("MediaStorageSOPInstanceUID") if meta is not None else None
    if media_uid and str(media_uid) != sop_uid:
        # The data set is authoritative; its file meta is rewritten to match (PS3.10 §7.1).
        coercions.append(
            f"MediaStorageSOPInstanceUID {media_uid} differed from SOPInstanceUID; file meta corrected"
        )
    header.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    header.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    encoded: Callable[[], list[bytes]] = list
    frame_identity: list[bytes] = []
    crcs: list[int] = []
    frame_syntax: str | None = None
    info: PixelInfo | None = None
    image_module = all(keyword in ds for keyword in _IMAGE_PIXEL_KEYWORDS)
    if PIXEL_DATA not in ds and image_module and not _OTHER_PIXEL_TAGS & set(ds._dict):
        # Rows, Columns and BitsAllocated promise an image (PS3.3 §C.7.6.3); a file cut just before
        # its Pixel Data still parses, so this is where it is caught.
        raise DataSetMismatch(
            f"SOP instance {sop_uid} has an Image Pixel module (Rows, Columns, BitsAllocated) but no "
            "PixelData (7FE0,0010): the file is cut or the pixels are missing"
        )
    if PIXEL_DATA in ds:
        info = pixel_info(ds)
        frame_syntax, encoded, frame_identity, crcs, photometric = _frames_of(
            ds, info, transfer_syntax, encode
        )
        if photometric != info.photometric_interpretation:
            header.PhotometricInterpretation = photometric
            info = replace(info, photometric_interpretation=photometric)
            raw_dataset = None

    header_bytes, dataset_bytes = encode_header(header, raw_dataset)
    # The content is the data set (not the sender's file meta) and the decoded pixels.
    digest = hashlib.sha256(dataset_bytes)
    for identity in frame_identity:
        digest.update(identity)
    content_hash = digest.hexdigest()
    try:
        attrs, json_bytes = instance_json(header, info)
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CannotUnderstand(f"the data set is truncated or malformed: {exc}") from exc

    frames = encoded()
    record = InstanceRecord(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        instance_number=first_int(attrs, "00200013"),
        transfer_syntax_uid=transfer_syntax,
        frame_syntax=frame_syntax,
        pixel=info,
        frames=[content_key("f", frame) for frame in frames],
        frame_crcs=crcs,
        content_hash=content_hash,
        header_key=content_key("h", header_bytes),
        json_key=content_key("j", json_bytes),
        size_bytes=size,
        render=render_defaults(header) if info is not None else None,
        attrs=attrs,
    )
    return Prepared(record=record, frames=frames, header_bytes=header_bytes, json_bytes=json_bytes)


def _frames_of(
    ds: Dataset, info: PixelInfo, transfer_syntax: str, encode: bool
) -> tuple[str, Callable[[], list[bytes]], list[bytes], list[int], str]:
    """Split the frames of ``ds`` and decode them as far as needed to identify their content.

    Returns the stored frame syntax, a function that produces the frames to store (encoding is
    deferred until dedupe has passed), the bytes that identify each frame's content (decoded
    samples, or the encoded bytes of lossy frames), their CRC32s, and the photometric
    interpretation of the decoded samples.

    Raises
    ------
    TransferSyntaxNotSupported
        No installed codec reads ``transfer_syntax``.
    DataSetMismatch
        Pixel Data is empty or shorter than ``info`` promises, or its fragments do not split into
        NumberOfFrames frames.
    CannotUnderstand
        A frame cannot be decoded.
    """
    kind = kind_of(transfer_syntax)
    if kind is None:
        raise TransferSyntaxNotSupported(
            f"transfer syntax {name_of(transfer_syntax)} is not supported; send it as explicit VR little "
            "endian or in a JPEG, JPEG-LS, JPEG 2000, HTJ2K or RLE syntax"
        )
    pixel_data = ds.PixelData
    if not isinstance(pixel_data, bytes) or not pixel_data:
        raise DataSetMismatch("PixelData (7FE0,0010) is empty: the pixels are missing (PS3.3 §C.7.6.3)")
    photometric = info.photometric_interpretation
    if kind is SyntaxKindValues.LOSSY:
        frames = encapsulated_frames(pixel_data, info)
        crcs = [_crc(decode_frame(f, transfer_syntax, info)) for f in frames]
        return transfer_syntax, lambda: frames, frames, crcs, photometric

    if kind is SyntaxKindValues.NATIVE:
        big_endian = transfer_syntax == str(ExplicitVRBigEndian)
        word_vr = ds["PixelData"].VR == "OW"
        raw = list(native_frames(pixel_data, info, big_endian=big_endian, word_vr=word_vr))
        if info.bits_allocated == 1 or not encode or not _htj2k_fits(info, photometric):
            return _EXPLICIT_LE, lambda: raw, raw, [zlib.crc32(r) for r in raw], photometric
        arrays = [native_frame_to_array(r, info) for r in raw]
    else:
        arrays = [decode_frame(f, transfer_syntax, info) for f in encapsulated_frames(pixel_data, info)]
        if photometric in ("YBR_RCT", "YBR_ICT"):
            photometric = "RGB"  # the JPEG 2000 decoder undoes the colour transform
        arrays = [a.astype(info.dtype, copy=False).reshape(info.shape) for a in arrays]
        if not encode or not _htj2k_fits(info, photometric):
            raw = [array_to_native_frame(a, info) for a in arrays]
            return _EXPLICIT_LE, lambda: raw, raw, [zlib.crc32(r) for r in raw], photometric
    identity = [np.ascontiguousarray(a).tobytes() for a in arrays]
    return (
        HTJ2K_RPCL,
        lambda: [encode_htj2k(a) for a in arrays],
        identity,
        [zlib.crc32(i) for i in identity],
        photometric,
    )


def render_defaults(ds: Dataset) -> dict[str, object]:
    """Modality and VOI LUT defaults a preview needs (PS3.3 §C.11.1, §C.11.2), first values only."""

    def first(keyword: str) -> object:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, MultiValue):
            value = value[0] if len(value) else None
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    return {
        "slope": first("RescaleSlope") or 1.0,
        "intercept": first("RescaleIntercept") or 0.0,
        "center": first("WindowCenter"),
        "width": first("WindowWidth"),
        "function": str(ds.get("VOILUTFunction", "") or "LINEAR").upper(),
    }


def _htj2k_fits(info: PixelInfo, photometric: str) -> bool:
    return photometric in HTJ2K_PHOTOMETRIC and info.bits_allocated in (8, 16, 32)


def _crc(array: NDArray[np.integer]) -> int:
    return zlib.crc32(np.ascontiguousarray(array).tobytes())


def _read_bytes(source: BinaryIO | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, Path):
        return source.read_bytes()
    source.seek(0)
    return source.read()


def _read_part10(data: bytes) -> Dataset:
    """Open a Part-10 file held in memory; elements are parsed later, when first used.

    Reading bytes in memory fails only because of the bytes (pydicom raises struct, OS, value and
    its own errors for them), so every failure here is the sender's.

    Raises
    ------
    CannotUnderstand
        The bytes are not a Part-10 file, or it is truncated or malformed.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError as exc:
        raise CannotUnderstand(reason_of(exc)) from exc
    except Exception as exc:
        raise CannotUnderstand(f"the DICOM file is truncated or malformed: {reason_of(exc)}") from exc
    _check_not_cut(data, ds)
    return ds


def _check_not_cut(data: bytes, ds: Dataset) -> None:
    """pydicom stops quietly where a cut file ends: a short last value, or a partial element header.

    A defined-length last element must end exactly at the end of the file (deflated files aside,
    whose offsets refer to the inflated stream). Short Pixel Data is left to the pixel module
    check, which names the expected and the actual length.

    Raises
    ------
    CannotUnderstand
        The last defined-length element does not end exactly at the end of ``data`` (a cut file).
    """
    if not ds._dict or str(ds.file_meta.get("TransferSyntaxUID", "")) == str(DeflatedExplicitVRLittleEndian):
        return
    last = ds._dict[max(ds._dict)]
    if last.tag == PIXEL_DATA or not isinstance(last, RawDataElement) or last.value_tell is None:
        return
    if last.length == 0xFFFFFFFF:
        return
    end = last.value_tell + last.length
    if end != len(data):
        raise CannotUnderstand(
            f"the DICOM file is truncated: its last element {last.tag} ends at byte {end} but the file "
            f"has {len(data)} bytes"
        )


def _str_or_none(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
