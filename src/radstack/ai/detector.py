"""A CenterNet-style fracture detector in plain PyTorch, and its ONNX export.

The network (after Zhou et al., *Objects as Points*, 2019, and its lighter successors):

- a small residual encoder, strides 2 … 32, with basic residual blocks (conv-BN-ReLU-conv-BN + skip);
- a feature-pyramid top-down path back to stride 4 (nearest upsampling + 1 × 1 laterals);
- one shared 3 × 3 head at stride 4 with five outputs per cell: the centre heatmap logit, the box size
  (log width, log height, in stride-4 cells) and the sub-cell offset of the centre;
- a global head on the stride-4 head features (average and max pooled) giving an image-level logit.

Decoding is part of the graph, so the ONNX file maps an input tensor straight to boxes, scores and an image
probability: peaks are cells equal to the 3 × 3 max-pool of the heatmap (no NMS op), the top
``max_detections`` peaks are taken with ``TopK``. Inference is then one ``session.run`` and a threshold.

The image-level probability is chosen by :attr:`DetectorConfig.image_score`: the highest peak (so an
image called positive always shows a box), the global head, or their mean.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radstack.ai.preprocess import PreprocessSpec, check_fields
from radstack.ai.runtime import ONNX_INPUT, ONNX_METADATA_KEY, ONNX_OUTPUTS

__all__ = [
    "STRIDE",
    "CenterNet",
    "DetectorConfig",
    "ImageScore",
    "export_onnx",
]

#: Output stride of the heatmap, in input pixels.
STRIDE = 4


class ImageScore(StrEnum):
    """Where the image-level fracture probability comes from."""

    PEAK = "peak"  # the highest heatmap peak
    GLOBAL = "global"  # the global classification head
    MEAN = "mean"  # the mean of both


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detector's architecture; saved with every checkpoint and ONNX file.

    Attributes
    ----------
    widths
        Channels of the encoder stages at strides 2, 4, 8, 16 and 32.
    blocks
        Residual blocks after each stage's strided convolution.
    neck_width
        Channels of the top-down path and of the stride-4 head.
    max_detections
        Peaks kept per image (the ``K`` of the outputs).
    image_score
        How the image-level probability is computed (see :class:`ImageScore`).
    """

    widths: tuple[int, ...] = (16, 32, 64, 96, 128)
    blocks: tuple[int, ...] = (0, 1, 1, 1, 1)
    neck_width: int = 32
    max_detections: int = 16
    image_score: ImageScore = ImageScore.PEAK

    def __post_init__(self) -> None:
        if len(self.widths) != 5 or len(self.blocks) != 5:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} need five stages each")
        if min(self.widths) < 1 or min(self.blocks) < 0 or self.neck_width < 1 or self.max_detections < 1:
            raise ValueError(f"detector config {self} has a non-positive size")
        object.__setattr__(self, "image_score", ImageScore(self.image_score))
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "blocks", tuple(self.blocks))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["blocks"] = list(self.blocks)
        data["image_score"] = str(self.image_score)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            On an unknown field or a bad value.
        """
        check_fields(cls, data, "detector config")
        return cls(**data)


def _conv_bn(c_in: int, c_out: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """A ResNet basic block (He et al. 2016) with an identity skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class CenterNet(nn.Module):
    """The detector. :meth:`heads` gives the raw maps for training; :meth:`forward` decodes them.

    Parameters
    ----------
    config
        The architecture.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig()
        widths, blocks = self.config.widths, self.config.blocks
        stages: list[nn.Module] = []
        c_in = 1
        for width, n_blocks in zip(widths, blocks, strict=True):
            stages.append(
                nn.Sequential(
                    _conv_bn(c_in, width, stride=2), *(_ResidualBlock(width) for _ in range(n_blocks))
                )
            )
            c_in = width
        self.stages = nn.ModuleList(stages)
        neck = self.config.neck_width
        # Laterals for strides 4, 8, 16, 32 (stages 1..4).
        self.laterals = nn.ModuleList(nn.Conv2d(w, neck, 1) for w in widths[1:])
        self.head_hidden = _conv_bn(neck, neck)
        self.head_out = nn.Conv2d(neck, 5, 1)
        self.global_head = nn.Linear(2 * neck, 1)
        # Platt scaling (a, b) of every score's logit, fitted on validation after training:
        # score = sigmoid(a · logit + b). The identity until then; a > 0 keeps the ranking.
        self.calibration: Tensor
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))
        # Heatmap prior of 0.01 (RetinaNet's focal-loss initialisation): training starts stable.
        assert self.head_out.bias is not None
        with torch.no_grad():
            self.head_out.bias.zero_()
            self.head_out.bias[0] = -math.log((1 - 0.01) / 0.01)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Raw outputs for an input ``(B, 1, S, S)``.

        Returns
        -------
        tuple
            ``(heatmap_logits (B, 1, S/4, S/4), log_size (B, 2, S/4, S/4), offset (B, 2, S/4, S/4),
            image_logit (B,))``; sizes are log of width/height in stride-4 cells, offsets in cells.
        """
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        top = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[1:-1]), strict=True):
            top = lateral(feature) + F.interpolate(top, scale_factor=2.0, mode="nearest")
        hidden = self.head_hidden(top)
        out = self.head_out(hidden)
        # The global head pools the stride-4 head features: the deepest stage alone is too coarse to see
        # a hairline (measured: it stayed at chance where the heatmap learned).
        pooled = torch.cat([hidden.mean(dim=(2, 3)), hidden.amax(dim=(2, 3))], dim=1)
        image_logit = self.global_head(pooled).squeeze(1)
        return out[:, 0:1], out[:, 1:3], out[:, 3:5], image_logit

    def decode(
        self, heatmap_logits: Tensor, log_size: Tensor, offset: Tensor, image_logit: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes ``(B, K, 4)`` in input pixels, scores ``(B, K)`` and image probability ``(B,)``."""
        batch, width = heatmap_logits.shape[0], heatmap_logits.shape[3]
        scale, shift = self.calibration[0], self.calibration[1]
        heat = torch.sigmoid(heatmap_logits)
        is_peak = (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        _, index = torch.topk((heat * is_peak).flatten(1), self.config.max_detections, dim=1)
        peak_logits = torch.gather(heatmap_logits.flatten(1), 1, index)
        scores = torch.sigmoid(scale * peak_logits + shift) * torch.gather(is_peak.flatten(1), 1, index)
        ys = torch.div(index, width, rounding_mode="floor")
        xs = index - ys * width
        offset_k = torch.gather(offset.flatten(2), 2, index.unsqueeze(1).expand(batch, 2, -1))
        size_k = torch.exp(torch.gather(log_size.flatten(2), 2, index.unsqueeze(1).expand(batch, 2, -1)))
        cx = (xs.to(heat.dtype) + offset_k[:, 0]) * STRIDE
        cy = (ys.to(heat.dtype) + offset_k[:, 1]) * STRIDE
        half_w = size_k[:, 0] * (STRIDE / 2)
        half_h = size_k[:, 1] * (STRIDE / 2)
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
        peak_logit = heatmap_logits.flatten(1).amax(dim=1)
        if self.config.image_score is ImageScore.PEAK:
            logit = peak_logit
        elif self.config.image_score is ImageScore.GLOBAL:
            logit = image_logit
        else:
            mean = ((torch.sigmoid(peak_logit) + torch.sigmoid(image_logit)) / 2).clamp(1e-7, 1 - 1e-7)
            logit = torch.log(mean) - torch.log1p(-mean)
        probability = torch.sigmoid(scale * logit + shift)
        return boxes, scores, probability

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decoded detections for an input ``(B, 1, S, S)``; see :meth:`decode`."""
        return self.decode(*self.heads(x))


def describe(config: DetectorConfig, spec: PreprocessSpec) -> dict[str, Any]:
    """The JSON description stored in the ONNX metadata: architecture, preprocessing, I/O contract."""
    return {
        "architecture": "centernet",
        "detector": config.to_dict(),
        "preprocess": spec.to_dict(),
        "input": ONNX_INPUT,
        "outputs": list(ONNX_OUTPUTS),
        "stride": STRIDE,
    }


def export_onnx(model: CenterNet, spec: PreprocessSpec, path: Path | None = None) -> bytes:
    """The model as ONNX (opset 18) with decode inside the graph and a dynamic batch axis.

    The detector config and preprocessing spec are stored in the metadata under
    :data:`ONNX_METADATA_KEY`, so the file alone is enough to run it.

    Parameters
    ----------
    model
        The trained detector (exported in eval mode on the CPU; the model itself is left unchanged).
    spec
        Its preprocessing spec (fixes the input size).
    path
        Where to write the file as well, if given.

    Returns
    -------
    bytes
        The serialised ONNX model.
    """
    import copy

    import onnx

    exported = copy.deepcopy(model).to("cpu").eval()
    example = torch.zeros(2, 1, spec.size, spec.size)  # not 1: export would specialise the batch axis
    # torch.export's exporter (the supported one; the TorchScript exporter is deprecated). It logs a
    # warning per torchvision op it cannot register; there is no torchvision here, by design.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch.export's own use of a deprecated pytree API (torch 2.13): nothing a caller can act on.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            program = torch.onnx.export(
                exported,
                (example,),
                input_names=[ONNX_INPUT],
                output_names=list(ONNX_OUTPUTS),
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                opset_version=18,
                dynamo=True,
                verbose=False,
            )
    finally:
        registration_log.setLevel(level)
    assert program is not None
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(describe(model.config, spec), sort_keys=True)
    proto.producer_name = "radstack"
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    if path is not None:
        path.write_bytes(data)
    return data
