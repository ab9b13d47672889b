"""WADO-RS: retrieve instances, metadata, frames, bulk data, rendered images (PS3.18 §10.4).

What is DICOMweb here: negotiating the transfer syntax from the Accept header, frames with their
media types, bulk data URIs, progressive access and rendered media. Reading the stored instance
(Part-10 rebuild, frames in a chosen syntax, the header) is :mod:`radstack.store.retrieve`, which
DIMSE shares; frames are served as stored whenever the client accepts that syntax, so the common
path of a viewer is one blob read.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from anyio import to_thread
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, convert_color_space
from pydicom.uid import ExplicitVRLittleEndian

from radstack.dicom.codecs import htj2k_prefix, htj2k_resolution_prefixes
from radstack.dicom.header import PIXEL_DATA
from radstack.dicom.json_model import element_path
from radstack.dicom.render import (
    DEFAULT_RENDERED_MEDIA_TYPE,
    RENDERED_MEDIA_TYPES,
    RenderParams,
    VoiFunctionValues,
    encode_image,
    fit_size,
    to_display,
)
from radstack.dicom.transfer_syntax import HTJ2K_RPCL, media_type_for, name_of, syntax_for_media_type
from radstack.dicomweb.accept import AcceptItem
from radstack.errors import BadRequest, NotAcceptable, NotFound
from radstack.store.retrieve import (
    can_produce,
    decoded_frame,
    frame_in,
    header_dataset,
    native_info,
    served_as_stored,
    stored_frame,
    stored_syntax,
)
from radstack.store.studies import InstanceRecord, StudyStore

__all__ = [
    "FramePart",
    "RetrievedFrames",
    "bulkdata",
    "frames",
    "instance_syntax",
    "parse_frame_list",
    "render",
    "rendered_media_type",
    "rendered_resource",
    "retrieve_frames",
]

_EXPLICIT_LE = str(ExplicitVRLittleEndian)


@dataclass(frozen=True, slots=True)
class FramePart:
    """One frame as sent: its media type (with transfer-syntax parameter) and bytes."""

    content_type: str
    data: bytes


# --------------------------------------------------------------------------- negotiation
def instance_syntax(accept: Sequence[AcceptItem], records: Sequence[InstanceRecord]) -> str | None:
    """Negotiate the transfer syntax of retrieved instances (PS3.18 §8.7.3.5).

    Returns the syntax, or ``None`` for "each instance in its stored syntax" (``transfer-syntax=*``).

    Raises
    ------
    NotAcceptable
        When no acceptable representation can be produced for every instance.
    """
    tried: list[str] = []
    for item in accept:
        if item.media_type in ("*/*", "multipart/*") or (item.multipart and item.part_type in ("", "*/*")):
            return _EXPLICIT_LE
        if item.part_type != "application/dicom":
            tried.append(
                item.media_type if not item.multipart else f"multipart/related; type={item.part_type}"
            )
            continue
        syntax = item.transfer_syntax
        if syntax is None:
            return _EXPLICIT_LE  # PS3.18 Table 8.7.3-5: the default for application/dicom
        if syntax == "*":
            return None
        if all(can_produce(r, syntax) for r in records):
            return syntax
        tried.append(f"transfer-syntax={syntax}")
    raise NotAcceptable(
        f"none of the acceptable representations ({', '.join(tried) or 'none'}) can be produced; instances are "
        'available as multipart/related; type="application/dicom" with transfer-syntax '
        f"{_EXPLICIT_LE}, * (as stored) or a lossless syntax"
    )


def frame_syntax_for(accept: Sequence[AcceptItem], record: InstanceRecord) -> tuple[str, bool]:
    """Negotiate the syntax of frames or bulk pixel data; returns (syntax, multipart).

    Raises
    ------
    NotAcceptable
        When no acceptable media type and transfer syntax can be produced from the stored frames.
    """
    tried: list[str] = []
    for item in accept:
        part_type = item.part_type
        if item.media_type in ("*/*", "multipart/*") or part_type in ("", "*/*"):
            return _EXPLICIT_LE, True
        syntax: str | None
        if item.transfer_syntax == "*":
            syntax = stored_syntax(record)
        else:
            syntax = syntax_for_media_type(part_type, item.transfer_syntax)
        if syntax is not None and can_produce(record, syntax):
            return syntax, item.multipart
        tried.append(
            f"{part_type}{'; transfer-syntax=' + item.transfer_syntax if item.transfer_syntax else ''}"
        )
    raise NotAcceptable(
        f"frames cannot be produced as {', '.join(tried) or 'requested'}; they are stored as "
        f"{media_type_for(stored_syntax(record))} ({name_of(stored_syntax(record))}) and available "
        "uncompressed (application/octet-stream) or as HTJ2K (image/jphc)"
    )


# --------------------------------------------------------------------------- frames
def parse_frame_list(value: str, record: InstanceRecord) -> list[int]:
    """``1,3,5`` → [1, 3, 5], checked against NumberOfFrames (PS3.18 §10.4.1.1.7).

    Raises
    ------
    BadRequest
        When a frame number is not a positive integer.
    NotFound
        When the instance has no pixel data, or fewer frames than a number asks for.
    """
    if record.pixel is None:
        raise NotFound(f"instance {record.sop_uid} has no pixel data, so no frames")
    numbers: list[int] = []
    for piece in value.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise BadRequest(f"frame number {piece!r} in {value!r} is not a positive integer")
        number = int(piece)
        if number > record.pixel.number_of_frames:
            raise NotFound(
                f"frame {number} does not exist: instance {record.sop_uid} has {record.pixel.number_of_frames} frame(s)"
            )
        numbers.append(number)
    return numbers


def frames(
    store: StudyStore, record: InstanceRecord, numbers: Sequence[int], syntax: str
) -> Iterator[FramePart]:
    """The requested frames in ``syntax``, each with its part media type (PS3.18 §8.7.3.3).

    Raises
    ------
    NotFound
        When a frame's blob is missing from the blob store.
    TransferSyntaxNotSupported
        When a frame must be decoded and no installed decoder handles its stored syntax.
    CannotUnderstand
        When a frame must be decoded and cannot be.
    """
    media_type = media_type_for(syntax)
    content_type = f"{media_type}; transfer-syntax={syntax}"
    for number in numbers:
        yield FramePart(content_type, frame_in(store, record, number, syntax))


def _htj2k_frame(store: StudyStore, record: InstanceRecord, number: int) -> bytes:
    if record.frame_syntax != HTJ2K_RPCL or record.pixel is None:
        raise NotFound(f"frames of instance {record.sop_uid} are not stored as HTJ2K; no resolution levels")
    return stored_frame(store, record, number)


def resolution_levels(store: StudyStore, record: InstanceRecord, number: int) -> list[dict[str, int]]:
    """Progressive access: each HTJ2K resolution level of a frame with its size and byte prefix.

    Level 0 is the smallest; the last level is the full image. Fetching the first ``bytes`` of the
    frame (``Range: bytes=0-{bytes-1}`` on the frame URL with ``Accept: image/jphc``) gives a
    codestream that decodes to that level.

    Raises
    ------
    NotFound
        When the instance's frames are not stored as HTJ2K.
    """
    prefixes = htj2k_resolution_prefixes(_htj2k_frame(store, record, number))
    pixel = record.pixel
    assert pixel is not None
    top = len(prefixes) - 1
    return [
        {
            "level": level,
            "columns": math.ceil(pixel.columns / 2 ** (top - level)),
            "rows": math.ceil(pixel.rows / 2 ** (top - level)),
            "bytes": prefix,
        }
        for level, prefix in enumerate(prefixes)
    ]


def frame_at_level(store: StudyStore, record: InstanceRecord, number: int, level: int) -> bytes:
    """A self-contained HTJ2K codestream of frame ``number`` at resolution ``level`` (one blob read).

    Raises
    ------
    NotFound
        When the instance's frames are not stored as HTJ2K.
    BadRequest
        When the frame has no resolution ``level``.
    """
    data = _htj2k_frame(store, record, number)
    count = len(htj2k_resolution_prefixes(data))
    if not 0 <= level < count:
        raise BadRequest(f"level {level} does not exist; levels 0 to {count - 1} are available")
    return htj2k_prefix(data, level)


# --------------------------------------------------------------------------- bulk data
def bulkdata(store: StudyStore, record: InstanceRecord, path: str) -> bytes:
    """The value of the (possibly nested) element named by a BulkDataURI suffix.

    Raises
    ------
    BadRequest
        When an element of the path is not a tag.
    NotFound
        When the path names no element or sequence item of the instance, or an element without
        bulk data.
    TransferSyntaxNotSupported
        When pixel data must be decoded and no installed decoder handles the stored syntax.
    CannotUnderstand
        When pixel data must be decoded and cannot be.
    """
    pieces = [p for p in path.split("/") if p]
    if pieces == [f"{PIXEL_DATA:08X}"] and record.pixel is not None:
        return b"".join(
            frame_in(store, record, n, _EXPLICIT_LE) for n in range(1, record.pixel.number_of_frames + 1)
        )
    ds = header_dataset(store, record)
    value: object = ds
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            try:
                tag = int(piece, 16)
            except ValueError:
                raise BadRequest(f"bulk data path element {piece!r} is not a tag") from None
            if not isinstance(value, Dataset) or tag not in value:
                raise NotFound(
                    f"element {element_path(tuple(pieces[: index + 1]))} is not in instance {record.sop_uid}"
                )
            value = value[tag].value
        else:
            if not piece.isdigit() or not isinstance(value, Sequence) or int(piece) >= len(value):
                raise NotFound(f"sequence item {piece!r} is not in instance {record.sop_uid}")
            value = value[int(piece)]
    if not isinstance(value, bytes | bytearray):
        raise NotFound(f"element {path} of instance {record.sop_uid} holds no bulk data")
    return bytes(value)


# --------------------------------------------------------------------------- rendered
class RenderCache:
    """Recently rendered images, bounded in bytes.

    Worklists and viewers ask for the same previews again and again. Frames are content-addressed
    and never change, so a rendering keyed by the frame's blob key, the presentation defaults and
    the request's parameters never goes stale, on one node or many.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get_or_render(self, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        image = make()
        with self._lock:
            if key not in self._items and len(image) <= self.max_bytes:
                self._items[key] = image
                self._size += len(image)
                while self._size > self.max_bytes:
                    _key, evicted = self._items.popitem(last=False)
                    self._size -= len(evicted)
        return image


_RENDERED = RenderCache()


def rendered_media_type(accept: Sequence[AcceptItem]) -> str:
    """The rendered media type to answer with, given the Accept items (best first).

    The first item that names an offered type (:data:`~radstack.dicom.render.RENDERED_MEDIA_TYPES`)
    wins; ``image/*`` and ``*/*`` match the Default, image/jpeg (PS3.18 §8.7.7). Values that are
    not supported are ignored (PS3.18 §8.7.7), and when none of the acceptable types is offered
    the response is in the Default media type rather than 406 (PS3.18 §8.3.3.1).

    Every rendered resource radstack serves is one frame: a study, series or multi-frame
    instance is represented by one of its frames, so the Single Frame Image row of PS3.18
    Table 8.7.4-1 applies throughout (the Multi-frame Image and Video rows, all optional and
    without a Default, are not offered).
    """
    for item in accept:
        if item.multipart:
            continue  # rendered resources are single-part: ignored as not supported
        if item.media_type in RENDERED_MEDIA_TYPES:
            return item.media_type
        if item.media_type in ("*/*", "image/*"):
            return DEFAULT_RENDERED_MEDIA_TYPE
    return DEFAULT_RENDERED_MEDIA_TYPE


def render(store: StudyStore, record: InstanceRecord, number: int, params: RenderParams) -> bytes:
    """A frame rendered for display (PS3.18 §8.3.5); recent renderings come from :class:`RenderCache`.

    The header and frame blob keys are content hashes, so the cache key names the exact content
    (the cache can be shared by every store in the process).

    Raises
    ------
    NotFound
        When the instance has no pixel data or no frame ``number``.
    TransferSyntaxNotSupported
        When no installed decoder handles the frame's stored syntax.
    CannotUnderstand
        When the frame cannot be decoded.
    """
    key = (record.header_key, tuple(record.frames), number, params)
    return _RENDERED.get_or_render(key, lambda: _render(store, record, number, params))


def _render(store: StudyStore, record: InstanceRecord, number: int, params: RenderParams) -> bytes:
    """Render one frame, decoded at the smallest sufficient HTJ2K resolution.

    Raises
    ------
    NotFound
        When the instance has no pixel data or no frame ``number``.
    """
    pixel = record.pixel
    if pixel is None:
        raise NotFound(f"instance {record.sop_uid} has no pixel data to render")
    if not 1 <= number <= pixel.number_of_frames:
        raise NotFound(
            f"frame {number} does not exist: instance {record.sop_uid} has {pixel.number_of_frames}"
        )
    size = fit_size(pixel.columns, pixel.rows, params.viewport)
    skipres = 0
    if record.frame_syntax == HTJ2K_RPCL:
        # Each skipped level halves both sides; stop while the result still covers the output size.
        while (
            skipres < 5
            and math.ceil(pixel.columns / 2 ** (skipres + 1)) >= size[0]
            and math.ceil(pixel.rows / 2 ** (skipres + 1)) >= size[1]
        ):
            skipres += 1
    if pixel.photometric_interpretation == "PALETTE COLOR" or pixel.bits_allocated == 1:
        samples = _rendered_via_pydicom(store, record, number)
    else:
        samples = decoded_frame(store, record, number, skipres=skipres)
    photometric = native_info(record).photometric_interpretation
    if samples.ndim == 3 and photometric.startswith("YBR"):
        samples = convert_color_space(samples, "YBR_FULL", "RGB")
    defaults = record.render or {}
    window = params.window
    if window is None and defaults.get("center") is not None and defaults.get("width"):
        function = defaults.get("function", "LINEAR")
        voi = (
            VoiFunctionValues(function)
            if function in VoiFunctionValues.__members__
            else VoiFunctionValues.LINEAR
        )
        window = (float(defaults["center"]), float(defaults["width"]), voi)
    display = to_display(
        samples,
        photometric=photometric,
        slope=float(defaults.get("slope", 1.0)),
        intercept=float(defaults.get("intercept", 0.0)),
        window=window,
    )
    return encode_image(display, size, params.media_type, params.quality)


def _rendered_via_pydicom(store: StudyStore, record: InstanceRecord, number: int) -> NDArray[np.integer]:
    """Palette colour and bit-packed frames: let pydicom apply the colour LUT from the header."""
    ds = header_dataset(store, record)
    samples = (
        decoded_frame(store, record, number) if record.pixel and record.pixel.bits_allocated > 1 else None
    )
    if samples is None:
        ds.PixelData = stored_frame(store, record, number)
        ds.NumberOfFrames = 1
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return np.asarray(ds.pixel_array).astype(np.uint8) * 255
    result: NDArray[np.integer] = apply_color_lut(samples, ds)
    if result.dtype != np.uint8:
        result = (result >> 8).astype(np.uint8)
    return result


# --------------------------------------------------------------------------- route services
@dataclass(frozen=True, slots=True)
class RetrievedFrames:
    """Frames as one retrieve request gets them: the parts, their syntax, and whether the client
    takes a multipart/related body (otherwise :attr:`parts` holds exactly one frame)."""

    parts: tuple[FramePart, ...]
    syntax: str
    multipart: bool


async def retrieve_frames(
    store: StudyStore,
    study: str,
    series: str,
    instance: str,
    frame_list: str,
    accept: Sequence[AcceptItem],
) -> RetrievedFrames:
    """Retrieve the frames ``frame_list`` names of one instance, in a syntax ``accept`` allows
    (PS3.18 §10.4.1.1.7).

    Frames served as stored are one index lookup and one blob read (about a millisecond), cheaper
    than a hop to the thread pool; frames that must be transcoded are made in the pool.

    Parameters
    ----------
    store
        The study store.
    study, series, instance
        The instance's UIDs, as the path names them.
    frame_list
        ``1,3,5``: 1-based frame numbers.
    accept
        The Accept header's items, best first (:func:`radstack.dicomweb.accept.parse_accept`).

    Returns
    -------
    RetrievedFrames
        The frames in the requested order.

    Raises
    ------
    NotFound
        The instance is not stored, has no pixel data, or lacks a frame.
    BadRequest
        A frame number is not a positive integer.
    NotAcceptable
        No acceptable syntax can be produced, or a single-part response was asked for several frames.
    TransferSyntaxNotSupported
        A frame must be decoded and no installed decoder handles its stored syntax.
    CannotUnderstand
        A frame must be decoded and cannot be.
    """
    record = store.get_instance(study, series, instance)
    numbers = parse_frame_list(frame_list, record)
    syntax, multipart = frame_syntax_for(accept, record)
    if not multipart and len(numbers) != 1:
        raise NotAcceptable("a single-part response holds one frame; ask for multipart/related for several")

    def collect() -> tuple[FramePart, ...]:
        return tuple(frames(store, record, numbers, syntax))

    parts = collect() if served_as_stored(record, syntax) else await to_thread.run_sync(collect)
    return RetrievedFrames(parts, syntax, multipart)


def representative_instance(
    store: StudyStore,
    study: str,
    series: str | None = None,
    visible: Callable[[list[InstanceRecord]], list[InstanceRecord]] | None = None,
) -> InstanceRecord:
    """The image that represents a study or series in a rendered or thumbnail response (PS3.18
    §10.4.1.1.3): the middle image of its first series with pixels (of those ``visible`` keeps: the
    caller's view leaves out what blinding hides).

    Raises
    ------
    NotFound
        The study or series is not stored, or holds no image.
    """
    records = store.current_instances(study, series)
    if visible is not None:
        records = visible(records)
    candidates = [r for r in records if r.pixel is not None]
    if not candidates:
        raise NotFound(f"{'series ' + series if series else 'study ' + study} has no image to render")
    first_series = [r for r in candidates if r.series_uid == candidates[0].series_uid]
    return first_series[len(first_series) // 2]


def rendered_resource(
    store: StudyStore,
    study: str,
    series: str | None,
    instance: str | None,
    number: int,
    params: RenderParams,
    visible: Callable[[list[InstanceRecord]], list[InstanceRecord]] | None = None,
) -> bytes:
    """A study, series, instance or frame rendered for display (PS3.18 §10.4.1.1.3, thumbnails
    §10.4.1.1.4); a study or series is shown by its :func:`representative_instance` (among the
    instances ``visible`` keeps).

    Parameters
    ----------
    store
        The study store.
    study, series, instance
        The resource's UIDs, as the path names them (``None`` past the level asked for).
    number
        The 1-based frame (1 for a study, series or instance).
    params
        Media type, quality, window and viewport.
    visible
        The instances a study or series may be shown by (None: all).

    Returns
    -------
    bytes
        The encoded image in ``params.media_type``.

    Raises
    ------
    NotFound
        The resource is not stored, has no pixel data, or lacks the frame.
    TransferSyntaxNotSupported
        The frame has a stored syntax that no installed decoder handles.
    CannotUnderstand
        The frame cannot be decoded.
    """
    if instance is None:
        record = representative_instance(store, study, series, visible)
    else:
        record = store.get_instance(study, series, instance)
    return render(store, record, number, params)
