"""Training of the fracture detector: deterministic, resumable, cancellable.

A run is a function of (training samples, validation samples, :class:`TrainConfig`): the same inputs give
the same weights and the same loss curve on the same device and thread count. To get there:

- the model is initialised after ``torch.manual_seed(seed)``, deterministic algorithms are on;
- each epoch's sample order and augmentation come from generators seeded by ``(seed, epoch)``, so an
  epoch does not depend on how the run got there: a run resumed from the checkpoint of epoch *e* continues
  exactly as the uninterrupted run (the checkpoint holds model, optimizer, scheduler, history and torch's
  RNG state, written atomically after each epoch);
- batches are assembled in the training process (no worker processes to schedule differently).

Augmentation is batched on the device: random flips, a small affine (rotation, scale, translation, one
``grid_sample`` per batch, boxes moved by the same matrix), contrast/brightness, gamma and Gaussian noise.
The loss is CenterNet's: a penalty-reduced focal loss on the heatmap against elliptical Gaussians at the
box centres (TTFNet's sizing), L1 on log box size and centre offset at the centres, and a binary
cross-entropy on the global image head.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from radstack.ai.detector import STRIDE, CenterNet, DetectorConfig
from radstack.ai.evaluate import auroc, fit_platt, froc
from radstack.ai.preprocess import Letterbox, PreprocessSpec, check_fields, preprocess
from radstack.ai.samples import Prediction, Sample, predictions

__all__ = [
    "CHECKPOINT_FORMAT",
    "AugmentConfig",
    "BatchProgress",
    "EpochReport",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "TrainingDiverged",
    "checkpoint_history",
    "load_checkpoint_model",
    "predict",
    "resolve_device",
    "train",
]

CHECKPOINT_FORMAT = 1


class Schedule(StrEnum):
    """Learning-rate schedule over the whole run (stepped per batch)."""

    ONE_CYCLE = "onecycle"
    COSINE = "cosine"


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Training-time augmentation; every draw comes from the epoch's seeded generator."""

    flip_horizontal: float = 0.5  # probability
    flip_vertical: float = 0.5
    rotate_degrees: float = 10.0  # uniform in ±
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05  # fraction of the size, uniform in ±
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.08  # uniform in ±
    gamma: tuple[float, float] = (0.7, 1.4)  # log-uniform
    noise_std: float = 0.02  # per-image σ uniform in [0, noise_std]
    enabled: bool = True
    #: Train on ``crop × crop`` windows of the model input instead of the whole input (``None``: whole). The
    #: network is fully convolutional, so inference still sees the whole input; a window costs
    #: (crop / size)² of an image, and with ``crop_on_fracture`` most windows hold a fracture.
    crop: int | None = None
    #: Probability that a window of a fracture image is placed around one of its boxes (else: anywhere
    #: on the image content).
    crop_on_fracture: float = 0.8
    #: Probability that any other window is centred on bone-like content (a pixel brighter than the median
    #: of the exposed, unsaturated content) rather than anywhere: radiographs are mostly soft tissue and
    #: flat collimation, easy negatives; the look-alikes a detector must learn to ignore lie on bone.
    crop_on_bone: float = 0.8

    def __post_init__(self) -> None:
        if self.crop is not None and (self.crop < 32 or self.crop % 32):
            raise ValueError(f"crop {self.crop} must be a multiple of 32, at least 32")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that decides the weights (saved in every checkpoint).

    ``device`` and ``threads`` decide only where and how fast it runs (``"auto"``: CUDA when available).
    """

    seed: int = 0
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    schedule: Schedule = Schedule.ONE_CYCLE
    grad_clip: float = 5.0
    size_weight: float = 1.0
    offset_weight: float = 1.0
    global_weight: float = 0.5
    #: Weight of a binary cross-entropy on each window's highest heatmap logit against its label: the
    #: image score is that peak, so this pushes down the one worst false peak of a normal window (a
    #: growth plate, a joint edge) and lifts the fracture's, which the per-cell focal loss averages away.
    peak_weight: float = 1.0
    gaussian_alpha: float = 0.54  # TTFNet: σ = alpha · box side / 6
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Fit Platt scaling of the scores on the validation split after the last epoch (see
    #: :func:`radstack.ai.evaluate.fit_platt`); the ranking, so AUROC and FROC, is unchanged.
    calibrate: bool = True
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", Schedule(self.schedule))
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(
                f"epochs ({self.epochs}), batch size ({self.batch_size}) and learning rate "
                f"({self.learning_rate}) must be positive"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the model registry's hyperparameters)."""
        data = asdict(self)
        data["schedule"] = str(self.schedule)
        data["detector"] = self.detector.to_dict()
        data["preprocess"] = self.preprocess.to_dict()
        data["augment"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["augment"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            On an unknown field or a bad value.
        """
        check_fields(cls, data, "training config")
        values = dict(data)
        if "detector" in values:
            values["detector"] = DetectorConfig.from_dict(values["detector"])
        if "preprocess" in values:
            values["preprocess"] = PreprocessSpec.from_dict(values["preprocess"])
        if "augment" in values:
            augment: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in values["augment"].items()
            }
            unknown = set(augment) - set(AugmentConfig.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown augmentation fields {sorted(unknown)}")
            values["augment"] = AugmentConfig(**augment)
        return cls(**values)

    def weights_identity(self) -> dict[str, Any]:
        """The fields that decide the weights (not where the run executes): a checkpoint must match them."""
        data = self.to_dict()
        data.pop("device")
        data.pop("threads")
        return data


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Reported after every training batch."""

    epoch: int  # 1-based
    epochs: int
    batch: int  # 1-based within the epoch
    batches: int
    loss: float

    @property
    def fraction(self) -> float:
        """Progress of the whole run in [0, 1]."""
        return ((self.epoch - 1) * self.batches + self.batch) / (self.epochs * self.batches)


@dataclass(frozen=True, slots=True)
class EpochReport:
    """Reported after every epoch, after its checkpoint is written."""

    epoch: int  # 1-based
    epochs: int
    train_loss: float  # mean over the epoch's batches
    learning_rate: float  # at the end of the epoch
    validation: dict[str, float]  # loss, auroc, auroc_peak, auroc_global, froc_sensitivity_at_1
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "train_loss": self.train_loss,
            "learning_rate": self.learning_rate,
            "validation": {k: (v if math.isfinite(v) else None) for k, v in self.validation.items()},
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochReport:
        validation = {k: (math.nan if v is None else float(v)) for k, v in data["validation"].items()}
        return cls(
            data["epoch"],
            data["epochs"],
            data["train_loss"],
            data["learning_rate"],
            validation,
            data["seconds"],
        )


@dataclass(frozen=True, slots=True, eq=False)
class TrainResult:
    """A finished run: the model after the last epoch (in eval mode, on the CPU) and its history."""

    model: CenterNet
    config: TrainConfig
    history: tuple[EpochReport, ...]
    device: str
    resumed_from_epoch: int  # 0 when the run started fresh
    calibration: tuple[float, float] | None  # Platt (a, b) fitted on validation, None if not fitted


class TrainingCancelled(Exception):
    """``should_stop`` asked to stop; the checkpoint of ``completed_epochs`` (if any) is kept."""

    def __init__(self, completed_epochs: int) -> None:
        super().__init__(f"training cancelled after {completed_epochs} completed epochs")
        self.completed_epochs = completed_epochs


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last epoch's checkpoint is kept."""


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; anything else is passed to :class:`torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------------------
# Data: preprocessing, augmentation, targets


@dataclass(frozen=True, slots=True, eq=False)
class _Batch:
    images: Tensor  # (B, 1, S, S)
    boxes: list[Tensor]  # per image (N, 4), input pixels
    labels: Tensor  # (B,)
    letterboxes: list[Letterbox]
    sites: list[Tensor]  # per image (M, 4), input pixels: where a window goes on an image without boxes


def _load_batch(samples: Sequence[Sample], indices: Sequence[int], spec: PreprocessSpec) -> _Batch:
    """Preprocessed images, boxes in input pixels, labels and each image's mapping back."""
    images, boxes, labels, letterboxes, sites = [], [], [], [], []
    for index in indices:
        sample = samples[index]
        pixels, letterbox = preprocess(sample.image, spec, sample.photometric)
        images.append(torch.from_numpy(pixels))
        boxes.append(torch.from_numpy(letterbox.to_input(sample.boxes)))
        labels.append(float(sample.label))
        letterboxes.append(letterbox)
        sites.append(torch.from_numpy(letterbox.to_input(sample.sites)))
    return _Batch(torch.stack(images).unsqueeze(1), boxes, torch.tensor(labels), letterboxes, sites)


def _keep_inside(boxes: Tensor, width: int, height: int) -> tuple[Tensor, bool]:
    """Boxes clipped to the image, without those that lost half their area or more; and whether any is
    left."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = torch.stack(
        [
            boxes[:, 0].clamp(0, width),
            boxes[:, 1].clamp(0, height),
            boxes[:, 2].clamp(0, width),
            boxes[:, 3].clamp(0, height),
        ],
        1,
    )
    kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = kept_area >= 0.5 * area
    return clipped[keep], bool(keep.any())


def _bone_point(image: Tensor, letterbox: Letterbox, draw: float) -> tuple[float, float] | None:
    """A point (x, y) of bone-like content, picked by ``draw`` in [0, 1) among the pixels of an 8-pixel
    grid that are brighter than the median of the exposed content and not saturated (collimation is flat
    white); ``None`` when there is no such pixel."""
    step = 8
    grid = image[: letterbox.content_height : step, : letterbox.content_width : step]
    exposed = grid[grid < 0.98]
    if exposed.numel() == 0:
        return None
    candidates = torch.nonzero((grid > exposed.median()) & (grid < 0.98))
    if len(candidates) == 0:
        return None
    row, column = candidates[int(draw * len(candidates))].tolist()
    return float(column * step), float(row * step)


def _crop(
    images: Tensor,
    boxes: list[Tensor],
    labels: Tensor,
    letterboxes: Sequence[Letterbox],
    config: AugmentConfig,
    generator: torch.Generator,
    sites: Sequence[Tensor] = (),
) -> tuple[Tensor, list[Tensor], Tensor]:
    """A ``config.crop`` window of each image: around a random box of a fracture image with probability
    ``crop_on_fracture`` (an image without boxes: around one of its ``sites``, if any), else on bone-like
    content with probability ``crop_on_bone``, else anywhere on the image content (not on the letterbox
    padding)."""
    assert config.crop is not None
    crop = config.crop
    size = images.shape[-1]
    out, new_boxes, new_labels = [], [], labels.clone()
    for i, letterbox in enumerate(letterboxes):
        draws = torch.rand(5, generator=generator).tolist()
        x_max = max(0, min(size, letterbox.content_width) - crop)
        y_max = max(0, min(size, letterbox.content_height) - crop)
        bone = None
        targets = boxes[i] if len(boxes[i]) or not sites else sites[i]
        if len(targets) and draws[0] < config.crop_on_fracture:
            box = targets[int(draws[1] * len(targets))]
            cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
            # The centre lands in the middle 60% of the window.
            x = cx - crop * (0.2 + 0.6 * draws[2])
            y = cy - crop * (0.2 + 0.6 * draws[3])
        elif draws[4] < config.crop_on_bone and (bone := _bone_point(images[i, 0], letterbox, draws[1])):
            x, y = bone[0] - crop * (0.2 + 0.6 * draws[2]), bone[1] - crop * (0.2 + 0.6 * draws[3])
        else:
            x, y = draws[2] * x_max, draws[3] * y_max
        x0 = int(min(max(round(x), 0), size - crop))
        y0 = int(min(max(round(y), 0), size - crop))
        out.append(images[i, :, y0 : y0 + crop, x0 : x0 + crop])
        if len(boxes[i]):
            shifted = boxes[i] - torch.tensor([x0, y0, x0, y0], dtype=boxes[i].dtype)
            kept, any_left = _keep_inside(shifted, crop, crop)
            new_boxes.append(kept)
            if not any_left:
                new_labels[i] = 0.0  # the window holds no fracture
        else:
            new_boxes.append(boxes[i])
    return torch.stack(out), new_boxes, new_labels


def _augment(
    images: Tensor, boxes: list[Tensor], labels: Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[Tensor, list[Tensor], Tensor]:
    """Flips + affine + intensity, all drawn from ``generator`` (on the CPU, so any device gives the same
    draws); boxes follow the geometry, and a box pushed mostly out of the image is dropped."""
    batch, _, height, width = images.shape

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)

    flip_x = torch.where(torch.rand(batch, generator=generator) < config.flip_horizontal, -1.0, 1.0)
    flip_y = torch.where(torch.rand(batch, generator=generator) < config.flip_vertical, -1.0, 1.0)
    angle = uniform(-config.rotate_degrees, config.rotate_degrees) * (math.pi / 180)
    scale = uniform(*config.scale)
    shift = torch.stack([uniform(-config.translate, config.translate) for _ in range(2)], 1) * 2
    contrast = uniform(*config.contrast)
    brightness = uniform(-config.brightness, config.brightness)
    gamma = torch.exp(uniform(math.log(config.gamma[0]), math.log(config.gamma[1])))
    noise_std = uniform(0.0, config.noise_std)
    noise = torch.randn(images.shape, generator=generator)

    # Forward map in normalised coordinates (align_corners=False: pixel edges at ±1): p_out = A p_in + t.
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    forward = rotation * scale[:, None, None] * torch.stack([flip_x, flip_y], 1).double()[:, None, :]
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], 2)  # p_in = A⁻¹ (p_out − t)
    grid = F.affine_grid(theta.to(images.dtype).to(images.device), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def per_image(v: Tensor) -> Tensor:
        return v.to(images.dtype).to(images.device)[:, None, None, None]

    out = (out - 0.5) * per_image(contrast) + 0.5 + per_image(brightness)
    out = out.clamp(0.0, 1.0) ** per_image(gamma)
    out = (out + noise.to(images.device) * per_image(noise_std)).clamp(0.0, 1.0)

    new_boxes = []
    new_labels = labels.clone()
    norm = torch.tensor([width, height], dtype=torch.float64)
    for i, b in enumerate(boxes):
        if not len(b):
            new_boxes.append(b)
            continue
        b64 = b.double()
        corners = torch.stack(
            [b64[:, [0, 1]], b64[:, [2, 1]], b64[:, [0, 3]], b64[:, [2, 3]]], 1
        )  # (N, 4 corners, xy) in pixels
        p = corners / norm * 2 - 1
        q = p @ forward[i].T + shift[i]
        q = (q + 1) / 2 * norm
        kept, any_left = _keep_inside(torch.cat([q.amin(1), q.amax(1)], 1), width, height)
        new_boxes.append(kept.float())
        if not any_left:
            new_labels[i] = 0.0  # the fracture left the image
    return out, new_boxes, new_labels


def _targets(
    boxes: list[Tensor], height: int, width: int, alpha: float, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Heatmap ``(B, 1, h, w)``, log-size and offset targets ``(B, 2, h, w)`` and the centre mask
    ``(B, 1, h, w)`` at stride :data:`STRIDE`.

    Each box puts an elliptical Gaussian (σ = alpha · side / 6, in cells, at least 0.5) on the heatmap,
    peaking at exactly 1 in the cell holding its centre; overlaps keep the maximum.
    """
    batch = len(boxes)
    h, w = height // STRIDE, width // STRIDE
    heat = torch.zeros(batch, 1, h, w)
    size = torch.zeros(batch, 2, h, w)
    offset = torch.zeros(batch, 2, h, w)
    mask = torch.zeros(batch, 1, h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    for i, image_boxes in enumerate(boxes):
        # Larger boxes first, so a small box's centre is not overwritten by a large one's size.
        order = torch.argsort(
            (image_boxes[:, 2] - image_boxes[:, 0]) * (image_boxes[:, 3] - image_boxes[:, 1]), descending=True
        )
        for x0, y0, x1, y1 in (image_boxes[order] / STRIDE).tolist():
            bw, bh = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            ix, iy = min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)
            sx, sy = max(alpha * bw / 6, 0.5), max(alpha * bh / 6, 0.5)
            gaussian = torch.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
            torch.maximum(heat[i, 0], gaussian, out=heat[i, 0])
            size[i, :, iy, ix] = torch.tensor([math.log(bw), math.log(bh)])
            offset[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            mask[i, 0, iy, ix] = 1.0
    return heat.to(device), size.to(device), offset.to(device), mask.to(device)


def _losses(
    outputs: tuple[Tensor, Tensor, Tensor, Tensor],
    targets: tuple[Tensor, Tensor, Tensor, Tensor],
    labels: Tensor,
    config: TrainConfig,
) -> Tensor:
    """CenterNet focal loss (α = 2, β = 4) + L1 size/offset at centres + BCE of the global head (+ BCE of
    the highest heatmap logit with ``peak_weight``)."""
    logits, log_size, offset, image_logit = outputs
    heat, size_t, offset_t, mask = targets
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    positive = heat.eq(1.0).to(logits.dtype)
    pos_loss = -(log_p * (1 - p) ** 2 * positive).sum()
    neg_loss = -(log_not_p * p**2 * (1 - heat) ** 4 * (1 - positive)).sum()
    n_centres = mask.sum().clamp(min=1.0)
    focal = (pos_loss + neg_loss) / n_centres
    size_loss = (F.l1_loss(log_size, size_t, reduction="none") * mask).sum() / n_centres
    offset_loss = (F.l1_loss(offset, offset_t, reduction="none") * mask).sum() / n_centres
    global_loss = F.binary_cross_entropy_with_logits(image_logit, labels)
    loss = (
        focal
        + config.size_weight * size_loss
        + config.offset_weight * offset_loss
        + config.global_weight * global_loss
    )
    if config.peak_weight:
        peak = logits.flatten(1).amax(dim=1)
        loss = loss + config.peak_weight * F.binary_cross_entropy_with_logits(peak, labels)
    return loss


# ---------------------------------------------------------------------------------------------------------
# Running the model


def _batches(n: int, batch_size: int) -> list[range]:
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _to_predictions(
    decoded: tuple[Tensor, Tensor, Tensor], letterboxes: Sequence[Letterbox], min_score: float
) -> list[Prediction]:
    boxes, scores, probability = (t.detach().float().cpu().numpy() for t in decoded)
    return predictions(boxes, scores, probability, letterboxes, min_score)


@torch.no_grad()
def predict(
    model: CenterNet,
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    min_score: float = 0.01,
) -> list[Prediction]:
    """The torch model's predictions for ``samples``, boxes in each image's pixels.

    The ONNX runner (:class:`radstack.ai.runtime.OnnxDetector`) gives the same numbers; evaluate the
    deployed artifact with that one.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out: list[Prediction] = []
    for chunk in _batches(len(samples), batch_size):
        batch = _load_batch(samples, chunk, spec)
        out.extend(_to_predictions(model(batch.images.to(device)), batch.letterboxes, min_score))
    model.train(was_training)
    return out


@torch.no_grad()
def _validate(
    model: CenterNet, samples: Sequence[Sample], config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Validation loss and quick metrics after an epoch (the full evaluation is :mod:`radstack.ai.evaluate`)."""
    if not samples:
        return {}
    model.eval()
    spec = config.preprocess
    losses, peak, glob, predictions = [], [], [], []
    for chunk in _batches(len(samples), config.batch_size):
        batch = _load_batch(samples, chunk, spec)
        outputs = model.heads(batch.images.to(device))
        targets = _targets(batch.boxes, spec.size, spec.size, config.gaussian_alpha, device)
        losses.append(float(_losses(outputs, targets, batch.labels.to(device), config)) * len(chunk))
        peak.extend(torch.sigmoid(outputs[0]).flatten(1).amax(1).cpu().tolist())
        glob.extend(torch.sigmoid(outputs[3]).cpu().tolist())
        predictions.extend(_to_predictions(model.decode(*outputs), batch.letterboxes, 0.01))
    labels_all = [s.label for s in samples]
    metrics = {"loss": sum(losses) / len(samples)}
    both = 0 < sum(labels_all) < len(labels_all)
    metrics["auroc_peak"] = auroc(labels_all, peak) if both else math.nan
    metrics["auroc_global"] = auroc(labels_all, glob) if both else math.nan
    metrics["auroc"] = auroc(labels_all, [p.probability for p in predictions]) if both else math.nan
    if any(len(s.boxes) for s in samples):
        metrics["froc_sensitivity_at_1"] = froc(predictions, samples).at["1"]
    model.train()
    return metrics


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a crash leaves either the previous checkpoint or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    return state


def checkpoint_history(path: Path) -> tuple[EpochReport, ...]:
    """The per-epoch history stored in a checkpoint (what a resumed run starts from)."""
    return tuple(EpochReport.from_dict(entry) for entry in _load_checkpoint(path)["history"])


def load_checkpoint_model(path: Path) -> tuple[CenterNet, TrainConfig, int]:
    """The model (eval mode, CPU), config and completed epochs stored in a checkpoint."""
    state = _load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model = CenterNet(config.detector)
    model.load_state_dict(state["model"])
    return model.eval(), config, int(state["epoch"])


# ---------------------------------------------------------------------------------------------------------
# The loop


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule is Schedule.ONE_CYCLE:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=total_steps, pct_start=0.2
        )
    warmup = max(1, total_steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        ),
    )


def _epoch_generator(seed: int, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
    """Generators for one epoch's order and augmentation: a function of (seed, epoch) only."""
    sequence = np.random.SeedSequence([seed, epoch])
    order_seed, augment_seed = sequence.generate_state(2, dtype=np.uint64)
    return np.random.default_rng(int(order_seed)), torch.Generator().manual_seed(int(augment_seed) >> 1)


def train(
    train_samples: Sequence[Sample],
    validation_samples: Sequence[Sample],
    config: TrainConfig,
    *,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_batch: Callable[[BatchProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a detector, resuming from ``checkpoint_path`` when it holds an earlier epoch of this run.

    Parameters
    ----------
    train_samples, validation_samples
        The splits (by patient). Validation metrics are reported after each epoch; an empty validation
        sequence skips them.
    config
        Hyperparameters, architecture and preprocessing.
    checkpoint_path
        Written after every epoch (atomically); when the file exists at the start, the run resumes from it.
    on_epoch
        Called after each epoch's checkpoint with the epoch's losses and validation metrics.
    on_batch
        Called after each training batch (progress).
    should_stop
        Checked before each batch; when it returns true, :class:`TrainingCancelled` is raised and the last
        epoch's checkpoint stays for a later resume.

    Returns
    -------
    TrainResult
        The model after the last epoch (eval mode, CPU) and the per-epoch history (including epochs run
        before a resume).

    Raises
    ------
    ValueError
        If there are no training samples, or the checkpoint belongs to a different configuration.
    TrainingDiverged
        If the loss became NaN or infinite (a :class:`ValueError`).
    TrainingCancelled
        When ``should_stop`` asked to stop.
    """
    if not train_samples:
        raise ValueError("training needs at least one sample; the training split is empty")
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.manual_seed(config.seed)

    model = CenterNet(config.detector).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    batches_per_epoch = math.ceil(len(train_samples) / config.batch_size)
    scheduler = _scheduler(optimizer, config, config.epochs * batches_per_epoch)
    history: list[EpochReport] = []
    start_epoch = 0
    if checkpoint_path is not None and checkpoint_path.exists():
        state = _load_checkpoint(checkpoint_path)
        if state["config"] != config.weights_identity():
            raise ValueError(
                f"checkpoint {checkpoint_path} belongs to a different training configuration; "
                "use a new checkpoint path or the same configuration"
            )
        if state["n_train"] != len(train_samples):
            raise ValueError(
                f"checkpoint {checkpoint_path} was trained on {state['n_train']} samples, "
                f"not {len(train_samples)}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = [EpochReport.from_dict(entry) for entry in state["history"]]
        start_epoch = int(state["epoch"])
    resumed_from = start_epoch

    model.train()
    spec = config.preprocess
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order_rng, augment_rng = _epoch_generator(config.seed, epoch)
        order = order_rng.permutation(len(train_samples))
        total, count = 0.0, 0
        for number, chunk in enumerate(_batches(len(order), config.batch_size), start=1):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(epoch)
            batch = _load_batch(train_samples, [int(i) for i in order[chunk]], spec)
            images, boxes, labels = batch.images.to(device), batch.boxes, batch.labels
            if config.augment.crop is not None and config.augment.crop < spec.size:
                images, boxes, labels = _crop(
                    images, boxes, labels, batch.letterboxes, config.augment, augment_rng, batch.sites
                )
            if config.augment.enabled:
                images, boxes, labels = _augment(images, boxes, labels, config.augment, augment_rng)
            targets = _targets(boxes, images.shape[-2], images.shape[-1], config.gaussian_alpha, device)
            loss = _losses(model.heads(images), targets, labels.to(device), config)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch + 1}, batch {number}: the loss is {value}; "
                    f"lower the learning rate ({config.learning_rate})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            total += value * len(chunk)
            count += len(chunk)
            if on_batch is not None:
                on_batch(BatchProgress(epoch + 1, config.epochs, number, batches_per_epoch, value))
        validation = _validate(model, validation_samples, config, device)
        report = EpochReport(
            epoch=epoch + 1,
            epochs=config.epochs,
            train_loss=total / count,
            learning_rate=float(scheduler.get_last_lr()[0]),
            validation=validation,
            seconds=time.perf_counter() - started,
        )
        history.append(report)
        if checkpoint_path is not None:
            _save_checkpoint(
                checkpoint_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": config.weights_identity(),
                    "n_train": len(train_samples),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": [entry.to_dict() for entry in history],
                },
            )
        if on_epoch is not None:
            on_epoch(report)
    final = model.to("cpu").eval()
    calibration = _calibrate(final, validation_samples, config) if config.calibrate else None
    return TrainResult(final, config, tuple(history), str(device), resumed_from, calibration)


def _calibrate(
    model: CenterNet, validation_samples: Sequence[Sample], config: TrainConfig
) -> tuple[float, float] | None:
    """Fit Platt scaling of the model's image probability on validation and store it in the model (so the
    ONNX export carries it); ``None`` (identity kept) when validation has one class or no ranking."""
    labels = [s.label for s in validation_samples]
    if not 0 < sum(labels) < len(labels):
        return None
    model.calibration.copy_(torch.tensor([1.0, 0.0]))
    raw = predict(model, validation_samples, config.preprocess, batch_size=config.batch_size)
    try:
        a, b = fit_platt(labels, [p.probability for p in raw])
    except ValueError:
        return None
    model.calibration.copy_(torch.tensor([a, b]))
    return a, b
