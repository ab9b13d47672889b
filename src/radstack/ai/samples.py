"""What flows into training and evaluation, and what a model gives back: plain data, no torch.

A data set is any ``Sequence[Sample]``: a list of in-memory synthetic images, or a lazy sequence that
reads pixels from the store on ``__getitem__``. Training reads each sample once per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from radstack.ai.preprocess import Letterbox, Photometric

__all__ = ["Prediction", "Sample", "as_boxes", "predictions"]


def as_boxes(boxes: Any) -> NDArray[np.float32]:
    """``boxes`` as a float32 ``(N, 4)`` array of ``[x0, y0, x1, y1]``.

    Raises
    ------
    ValueError
        If the values do not form ``(N, 4)`` boxes with ``x0 <= x1`` and ``y0 <= y1``.
    """
    array = np.asarray(boxes, dtype=np.float32)
    if array.size % 4 or (array.size and array.shape[-1] != 4):
        raise ValueError(f"boxes of shape {array.shape} are not [x0, y0, x1, y1] quadruples")
    out = array.reshape(-1, 4)
    if not np.all(np.isfinite(out)):
        raise ValueError("a box has a non-finite coordinate")
    if np.any(out[:, 2] < out[:, 0]) or np.any(out[:, 3] < out[:, 1]):
        raise ValueError("a box has x1 < x0 or y1 < y0; boxes are [x0, y0, x1, y1]")
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Sample:
    """One labelled radiograph.

    Attributes
    ----------
    image
        Stored pixel values, rows × columns (uint16, any integer dtype, or float).
    boxes
        Fracture boxes ``(N, 4)`` ``[x0, y0, x1, y1]`` in the image's pixels (edges); empty if none.
    label
        Whether the image shows a fracture.
    patient_id
        Who the image belongs to (splits are by patient; never logged).
    fracture_type
        The kind of fracture (``transverse``, ``buckle``, …) for a per-type breakdown; ``None`` if none or
        unknown.
    photometric
        ``MONOCHROME1`` images are inverted in preprocessing.
    key
        An identifier to report the sample by (a SOP Instance UID, a file name).
    sites
        Regions ``(M, 4)`` without a finding that training windows are placed on like on findings: the
        spot of an intact twin where its fractured twin is broken (a hard negative). Empty for most.
    """

    image: NDArray[Any]
    boxes: NDArray[np.float32]
    label: bool
    patient_id: str = ""
    fracture_type: str | None = None
    photometric: Photometric | str = Photometric.MONOCHROME2
    key: str = ""
    sites: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", as_boxes(self.boxes))
        object.__setattr__(self, "sites", as_boxes(self.sites))
        object.__setattr__(self, "photometric", Photometric(self.photometric))
        if self.image.ndim != 2:
            raise ValueError(f"sample {self.key!r}: image must be 2-D, got shape {self.image.shape}")


@dataclass(frozen=True, slots=True, eq=False)
class Prediction:
    """What the detector says about one image.

    Attributes
    ----------
    probability
        The image-level fracture probability in [0, 1].
    boxes
        Detected boxes ``(N, 4)`` in the original image's pixels, highest score first.
    scores
        Their scores ``(N,)`` in [0, 1].
    """

    probability: float
    boxes: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "probability": float(self.probability),
            "boxes": [[round(float(v), 2) for v in box] for box in self.boxes],
            "scores": [round(float(s), 6) for s in self.scores],
        }


def predictions(
    boxes: NDArray[Any],
    scores: NDArray[Any],
    probability: NDArray[Any],
    letterboxes: Sequence[Letterbox],
    min_score: float,
) -> list[Prediction]:
    """One :class:`Prediction` per image from the detector's batch outputs (boxes in model-input pixels,
    scores, probability), keeping the boxes scoring at least ``min_score``, mapped to each image's pixels."""
    out = []
    for i, letterbox in enumerate(letterboxes):
        keep = scores[i] >= min_score
        out.append(
            Prediction(
                probability=float(probability[i]),
                boxes=letterbox.to_original(boxes[i][keep]),
                scores=scores[i][keep].astype(np.float32),
            )
        )
    return out
