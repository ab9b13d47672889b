"""Running the registry's models on stored radiographs: the warm model cache and the input checks.

A worker (or the API process, for the real-time endpoint) keeps each model version it ran loaded in
an :class:`~radstack.ai.runtime.OnnxDetector` (onnxruntime: CPU, or the CUDA provider when present),
so a radiograph costs one decode, one preprocessing and one ``session.run``: no model load. A cached
model is keyed by its version and its ONNX artifact's SHA-256, and the production version is looked up
on every call (one indexed query), so a promotion or rollback takes effect on the next image.

Only an *approved* version runs, and only with its two operating points (chosen on validation data
when it was evaluated, :func:`radstack.ai.evaluate.choose_operating_points`): a box scoring at least
``suspicious`` is a finding, one at ``definite`` or above a definite one.

:func:`check_image` refuses what the detector's contract does not fit, before any pixel is decoded:
not a CR or DX image, several frames, colour, lossy-compressed pixel data (its artefacts are not what
the model learnt), or an image too small to hold the anatomy.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from radstack.ai.findings import operating_thresholds
from radstack.ai.registry import ApprovalStatus, ArtifactKind, ModelRegistry, ModelVersion
from radstack.ai.runtime import InvalidModel, OnnxDetector
from radstack.ai.samples import Prediction
from radstack.dicom.codecs import PixelInfo
from radstack.dicom.transfer_syntax import SyntaxKindValues, kind_of
from radstack.errors import BadRequest, Conflict, ProcessingFailure
from radstack.store.records import InstanceRecord

__all__ = [
    "IMAGE_MODALITIES",
    "MIN_IMAGE_SIDE",
    "ImageRefused",
    "LoadedModel",
    "ModelCache",
    "ModelUnavailable",
    "check_image",
    "input_key",
]

#: The modalities a radiograph detector reads (PS3.3 §C.7.3.1.1.1: computed and digital radiography).
IMAGE_MODALITIES = frozenset({"CR", "DX"})
#: The shortest side accepted: a radiograph has hundreds of pixels a side; a thumbnail does not.
MIN_IMAGE_SIDE = 256
#: Model versions kept loaded per process (least recently used first out).
CACHED_MODELS = 4

JsonDict = dict[str, Any]


class ImageRefused(BadRequest):
    """An image the model's contract does not fit (the message says why and what would fit)."""

    title = "Image does not fit the model"
    http_status = 422


class ModelUnavailable(ProcessingFailure):
    """A model version cannot run: its artifact is missing or damaged, or it does not load."""

    title = "Model cannot run"


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version ready to run: the detector and its operating points."""

    version: ModelVersion
    detector: OnnxDetector
    #: Box and image scores at or above this are findings ("suspicious": high priority).
    suspicious: float
    #: At or above this a finding is "definite" (urgent).
    definite: float
    #: The ONNX artifact's SHA-256 (what the cache is keyed by).
    sha256: str

    @property
    def name(self) -> str:
        return self.version.model

    @property
    def number(self) -> int:
        return self.version.version

    def predict(self, images: Sequence[NDArray[Any]], photometrics: Sequence[str]) -> list[Prediction]:
        """Boxes scoring at least the suspicious threshold, per image, in its pixels."""
        return self.detector.predict_batch(images, photometrics, min_score=self.suspicious)


def check_image(sop_uid: str, modality: str, pixel: PixelInfo | None, syntax: str | None, model: str) -> None:
    """Refuse an image the detector's contract does not fit.

    Parameters
    ----------
    sop_uid
        The image's SOP Instance UID, for the message.
    modality
        Its Modality (0008,0060).
    pixel
        Its Image Pixel module (None without pixel data).
    syntax
        The transfer syntax its pixel data is in (a lossy one is refused; an image that was
        lossy-compressed once and is now held losslessly, Lossy Image Compression 01, is read: many
        archived radiographs are, and the training data had such images).
    model
        The model's name, for the message.

    Raises
    ------
    ImageRefused
        Not CR or DX, no pixel data, several frames, colour, lossy-compressed, or smaller than
        :data:`MIN_IMAGE_SIDE` a side; the message names the instance and what was found.
    """
    where = f"instance {sop_uid}"
    if modality not in IMAGE_MODALITIES:
        raise ImageRefused(
            f"{where} has Modality {modality or 'none'!r}; {model} reads radiographs "
            f"({', '.join(sorted(IMAGE_MODALITIES))})"
        )
    if pixel is None:
        raise ImageRefused(f"{where} has no pixel data; {model} reads images")
    if pixel.number_of_frames != 1:
        raise ImageRefused(
            f"{where} has {pixel.number_of_frames} frames; {model} reads single-frame radiographs"
        )
    if pixel.samples_per_pixel != 1 or pixel.photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageRefused(
            f"{where} is {pixel.photometric_interpretation} with {pixel.samples_per_pixel} samples per "
            f"pixel; {model} reads grayscale (MONOCHROME1/2) radiographs"
        )
    if syntax is not None and kind_of(syntax) is SyntaxKindValues.LOSSY:
        raise ImageRefused(
            f"{where} is lossy-compressed (transfer syntax {syntax}); {model} reads lossless or "
            "uncompressed pixel data, whose grey levels and noise it was trained on"
        )
    if min(pixel.rows, pixel.columns) < MIN_IMAGE_SIDE:
        raise ImageRefused(
            f"{where} is {pixel.columns}×{pixel.rows} pixels; {model} needs at least "
            f"{MIN_IMAGE_SIDE} pixels a side"
        )


def input_key(model: LoadedModel, records: Sequence[InstanceRecord]) -> str:
    """What a run read, as one hash: the model version's artifact and each image's content. A run
    with the same key has nothing new to say (the result would be the same)."""
    digest = hashlib.sha256(f"{model.name}\n{model.number}\n{model.sha256}\n".encode())
    for record in sorted(records, key=lambda r: r.sop_uid):
        digest.update(f"{record.sop_uid}:{record.content_hash}\n".encode())
    return digest.hexdigest()


class ModelCache:
    """The model versions this process has loaded, kept warm (thread-safe).

    Parameters
    ----------
    registry
        Where versions and their artifacts are.
    threads
        onnxruntime intra-op threads per model (``None``: one per core).
    """

    def __init__(self, registry: ModelRegistry, *, threads: int | None = None) -> None:
        self.registry = registry
        self.threads = threads
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, int, str], LoadedModel] = OrderedDict()

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """Version ``version`` of ``name`` (its production version when None), loaded.

        Raises
        ------
        NotFound
            No such model or version, or none in production.
        Conflict
            The version is not approved.
        ModelUnavailable
            Its ONNX artifact is missing, damaged or does not load, or its metrics have no operating
            points.
        """
        found = self.registry.production(name) if version is None else self.registry.version(name, version)
        if found.status is not ApprovalStatus.APPROVED:
            raise Conflict(f"{found.ref} is {found.status.value}, not approved; only approved versions run")
        try:
            artifact = found.artifact(ArtifactKind.ONNX)
        except Exception:
            raise ModelUnavailable(f"{found.ref} has no ONNX artifact; radstack runs ONNX models") from None
        key = (found.model, found.version, artifact.sha256)
        with self._lock:
            cached = self._loaded.get(key)
            if cached is not None:
                self._loaded.move_to_end(key)
                return cached
            loaded = self._load(found, artifact.sha256)
            self._loaded[key] = loaded
            while len(self._loaded) > CACHED_MODELS:
                self._loaded.popitem(last=False)
            return loaded

    def clear(self) -> None:
        """Drop every loaded model (their onnxruntime sessions and threads go with the last reference)."""
        with self._lock:
            self._loaded.clear()

    def _load(self, version: ModelVersion, sha256: str) -> LoadedModel:
        try:
            data = self.registry.artifact_bytes(version, ArtifactKind.ONNX)
        except ProcessingFailure as exc:
            raise ModelUnavailable(f"{version.ref} cannot be loaded: {exc.message}") from None
        except Exception as exc:  # the blob is gone (NotFound) or the store failed
            raise ModelUnavailable(f"{version.ref}'s ONNX artifact cannot be read: {exc}") from None
        try:
            detector = OnnxDetector(data, threads=self.threads)
        except InvalidModel as exc:
            raise ModelUnavailable(f"{version.ref} does not load: {exc}") from None
        try:
            suspicious, definite = operating_thresholds(version.metrics)
        except BadRequest as exc:
            raise ModelUnavailable(f"{version.ref} cannot be run: {exc.message}") from None
        return LoadedModel(version, detector, suspicious, definite, sha256)
