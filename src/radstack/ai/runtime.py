"""Running an exported detector with onnxruntime: preprocessing, one ``session.run``, boxes mapped back.

No torch here: an inference node needs only numpy and onnxruntime. The ONNX file written by
:func:`radstack.ai.detector.export_onnx` carries its preprocessing spec in its metadata, so
``OnnxDetector(path)`` is enough; a third-party model with the same contract (input ``image``
``(B, 1, S, S)`` float32; outputs ``boxes (B, K, 4)`` in input pixels, ``scores (B, K)``,
``probability (B,)``) may be given its spec explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from radstack.ai.preprocess import Photometric, PreprocessSpec, preprocess
from radstack.ai.samples import Prediction, predictions

__all__ = [
    "ONNX_INPUT",
    "ONNX_METADATA_KEY",
    "ONNX_OUTPUTS",
    "InvalidModel",
    "OnnxDetector",
    "available_providers",
]

#: The graph's input: ``(batch, 1, size, size)`` float32, from :func:`preprocess`.
ONNX_INPUT = "image"
#: The graph's outputs: boxes ``(batch, K, 4)`` in input pixels, their scores ``(batch, K)`` and the
#: image-level fracture probability ``(batch,)``.
ONNX_OUTPUTS = ("boxes", "scores", "probability")
#: Metadata key of the model's JSON description (architecture, preprocessing spec, contract).
ONNX_METADATA_KEY = "radstack.model"


class InvalidModel(ValueError):
    """The bytes are not an ONNX model, or the model does not have the detector's contract."""


def available_providers() -> list[str]:
    """onnxruntime execution providers to use, best first: CUDA when this onnxruntime has it, then CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxDetector:
    """A loaded detector.

    Parameters
    ----------
    model
        The ONNX file's bytes or path.
    spec
        The preprocessing spec; read from the model's metadata when omitted.
    threads
        onnxruntime intra-op threads (``None``: its default, one per core).
    providers
        Execution providers (default :func:`available_providers`).

    Raises
    ------
    InvalidModel
        If the model cannot be loaded, has no spec, or its inputs/outputs differ from the contract.
    """

    def __init__(
        self,
        model: bytes | Path,
        *,
        spec: PreprocessSpec | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        data = model.read_bytes() if isinstance(model, Path) else model
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                data, options, providers=list(providers or available_providers())
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for a corrupt file
            raise InvalidModel(f"not a loadable ONNX model: {exc}") from None
        self.description: dict[str, Any] = {}
        raw = self._session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        if raw is not None:
            try:
                self.description = json.loads(raw)
            except ValueError:
                raise InvalidModel(f"ONNX metadata {ONNX_METADATA_KEY!r} is not JSON") from None
        if spec is None:
            if "preprocess" not in self.description:
                raise InvalidModel(
                    f"ONNX model has no {ONNX_METADATA_KEY!r} metadata with a preprocessing spec; pass one"
                )
            try:
                spec = PreprocessSpec.from_dict(self.description["preprocess"])
            except (TypeError, ValueError) as exc:
                raise InvalidModel(f"ONNX model's preprocessing spec is invalid: {exc}") from None
        self.spec = spec
        self._check_contract()

    def _check_contract(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != ONNX_INPUT:
            raise InvalidModel(
                f"ONNX model inputs {[i.name for i in inputs]} are not the one input {ONNX_INPUT!r}"
            )
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 1 or shape[2:] != [self.spec.size, self.spec.size]:
            raise InvalidModel(
                f"ONNX model input shape {shape} is not (batch, 1, {self.spec.size}, {self.spec.size})"
            )
        outputs = [o.name for o in self._session.get_outputs()]
        missing = [name for name in ONNX_OUTPUTS if name not in outputs]
        if missing:
            raise InvalidModel(f"ONNX model outputs {outputs} lack {missing}")

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses."""
        return list(self._session.get_providers())

    def predict(
        self,
        image: NDArray[Any],
        photometric: Photometric | str = Photometric.MONOCHROME2,
        *,
        min_score: float = 0.0,
    ) -> Prediction:
        """Detections for one stored image, boxes in its pixels.

        Parameters
        ----------
        image
            Stored pixel values, rows × columns.
        photometric
            The image's Photometric Interpretation.
        min_score
            Boxes scoring below this are dropped.
        """
        return self.predict_batch([image], [photometric], min_score=min_score)[0]

    def predict_batch(
        self,
        images: Sequence[NDArray[Any]],
        photometrics: Sequence[Photometric | str] | None = None,
        *,
        min_score: float = 0.0,
    ) -> list[Prediction]:
        """:meth:`predict` for several images in one ``session.run``."""
        if not images:
            return []
        photometrics = photometrics or [Photometric.MONOCHROME2] * len(images)
        inputs, letterboxes = [], []
        for image, photometric in zip(images, photometrics, strict=True):
            pixels, letterbox = preprocess(image, self.spec, photometric)
            inputs.append(pixels)
            letterboxes.append(letterbox)
        boxes, scores, probability = self.run(np.stack(inputs)[:, None])
        return predictions(boxes, scores, probability, letterboxes, min_score)

    def run(
        self, batch: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """The raw graph outputs for a preprocessed batch ``(B, 1, S, S)``: boxes in input pixels, scores,
        probability."""
        result = self._session.run(
            list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(batch, dtype=np.float32)}
        )
        boxes, scores, probability = (np.asarray(r, dtype=np.float32) for r in result)
        return boxes, scores, probability
