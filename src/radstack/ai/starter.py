"""The starter model ``fracture``: made by one command from a recipe, shipped, installed on first start.

radstack ships a small fracture detector trained by its own pipeline on its own synthetic radiographs,
so a fresh installation has a working detector in production (for demonstration and triage research on
synthetic data, never for clinical use). Three parts:

Recipe (``radstack/ai/starter/recipe.json``)
    Which synthetic images (seed and count of the train, validation and test splits, each its own seed,
    and the :class:`~radstack.ai.synthetic.Options`), the training config
    (:meth:`~radstack.ai.train.TrainConfig.to_dict`'s shape) and the thread count. It is everything that
    decides the model.

Build (:func:`build_starter`; ``radstack models build-starter``, ``make starter-model``)
    Generates the images in memory with :func:`~radstack.ai.synthetic.generate` (in worker processes;
    each image is a pure function of its seed and index, so the pool changes nothing but the time),
    trains with :func:`~radstack.ai.train.train`, exports the ONNX graph, chooses the operating points on
    the validation split and evaluates the exported graph with :class:`~radstack.ai.runtime.OnnxDetector`
    on the test split. Writes ``fracture.onnx`` and its manifest ``fracture.json``: the ONNX's SHA-256,
    the recipe, the code version, the metrics, the operating points, the training device and time, the
    time of each phase and the model card.

Install (:func:`install_starter`, at the first ``radstack serve`` of a data dir)
    When no model ``fracture`` is registered, checks the shipped ONNX against the manifest's SHA-256,
    registers it as ``fracture`` v1 (trained and registered by :data:`BUILDER`), approves it as
    :data:`RELEASER` and promotes it to production: registry changes like any other, so audited. A
    damaged or missing file is logged as an error naming it and nothing is registered.

Reproducibility: the same recipe on the same machine and thread count gives the same weights, the same
ONNX bytes and the same metrics (training is deterministic, see :mod:`radstack.ai.train`). Another thread
count or machine changes float summation order, so the weights differ slightly and test metrics move
within a stated tolerance (``docs/ai.md``).

This module imports neither torch nor onnxruntime at import time: the platform imports it to install the
model, and an inference or API node does not need torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radstack import __version__
from radstack.ai.card import ModelCard
from radstack.ai.contract import Contract
from radstack.ai.preprocess import reduce_ahead
from radstack.ai.registry import (
    ApprovalStatus,
    ArtifactIn,
    ArtifactKind,
    Lineage,
    ModelRegistry,
    ModelVersion,
)
from radstack.ai.registry import Stage as RegistryStage
from radstack.ai.samples import Sample
from radstack.ai.synthetic import Options, SyntheticImage, generate, generate_twins
from radstack.errors import BadRequest, Conflict, NotFound, ProcessingFailure, RadstackError
from radstack.security.policy import Principal

if TYPE_CHECKING:
    from radstack.ai.train import BatchProgress, EpochReport, TrainConfig

__all__ = [
    "BUILDER",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "ONNX_NAME",
    "RECIPE_PATH",
    "RELEASER",
    "STARTER_DIR",
    "BuildProgress",
    "Phase",
    "Recipe",
    "Split",
    "StarterBuild",
    "StarterModelError",
    "build_starter",
    "code_version",
    "install_starter",
    "read_manifest",
]

log = logging.getLogger(__name__)

#: The registered model's name.
MODEL_NAME = "fracture"
#: Where the recipe and the shipped artifact live (package data).
STARTER_DIR = Path(__file__).with_name("starter")
RECIPE_PATH = STARTER_DIR / "recipe.json"
ONNX_NAME = "fracture.onnx"
MANIFEST_NAME = "fracture.json"
MANIFEST_FORMAT = 1
#: The command that remakes the shipped artifact (written into the manifest and the card).
COMMAND = "make starter-model  (radstack models build-starter)"
#: Who trained and registered the starter model, and who approved and promoted it: two system principals,
#: so the registry's separation of duties holds for it as for any model.
BUILDER = Principal("radstack-build", "admin", "system", source="starter-model")
RELEASER = Principal("radstack-release", "admin", "system", source="starter-model")
REVIEW_COMMENT = (
    "The starter model shipped with radstack {version}, installed on the first start of this data dir: "
    "for demonstration and triage research on synthetic data, not for clinical use. Its ONNX file matched "
    "the SHA-256 {sha256} of its manifest. Replace it with a model trained and validated on your own data."
)
#: Images per onnxruntime call when evaluating.
_EVAL_BATCH = 8


class StarterModelError(ProcessingFailure):
    """The shipped starter model cannot be installed: a file is missing, unreadable or damaged."""

    title = "Starter model unavailable"


# ----------------------------------------------------------------------------------------------- recipe
@dataclass(frozen=True, slots=True)
class Split:
    """Images ``0 … count - 1`` of the synthetic data set ``seed``."""

    seed: int
    count: int

    def to_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "count": self.count}


def _split(value: Any, where: str) -> Split:
    if (
        not isinstance(value, Mapping)
        or set(value) != {"seed", "count"}
        or not all(isinstance(value[k], int) and not isinstance(value[k], bool) for k in value)
    ):
        raise BadRequest(f"recipe {where} must be {{'seed': integer, 'count': integer}}, not {value!r}")
    if value["count"] < 2 or value["seed"] < 0:
        raise BadRequest(f"recipe {where} needs a seed ≥ 0 and at least 2 images, not {dict(value)}")
    return Split(int(value["seed"]), int(value["count"]))


_OPTION_FIELDS = ("fracture_rate", "scale", "size", "images_per_patient", "rg3_rate")
_RECIPE_FIELDS = {"description", "data", "training", "threads"}
_DATA_FIELDS = {"train", "validation", "test", "options", "twins"}


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything that decides the starter model (``recipe.json``).

    Attributes
    ----------
    train, validation, test
        The splits: each its own seed, so no image (and no patient) is in two of them.
    options
        How the synthetic images are drawn (size or scale, fracture rate, views, RG3 share).
    training
        The training config as :meth:`~radstack.ai.train.TrainConfig.to_dict` writes it (fields left
        out take their defaults); its ``threads`` is :attr:`threads`.
    threads
        CPU threads of training and of evaluation: part of the recipe because the thread count changes
        float summation order, so the weights.
    description
        What the recipe is for (free text).
    twins
        Draw the training split as fractured images each with its intact twin
        (:func:`~radstack.ai.synthetic.generate_twins`): the detector sees every fracture site with and
        without the fracture. Validation and test are drawn as they come (``options.fracture_rate``).
    """

    train: Split
    validation: Split
    test: Split
    options: Options
    training: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    description: str = ""
    twins: bool = False

    @classmethod
    def from_dict(cls, document: Any) -> Recipe:
        """The recipe in a JSON document.

        Raises
        ------
        BadRequest
            An unknown or missing field, two splits with one seed, bad options or a bad training
            config; the message names the field.
        """
        if not isinstance(document, Mapping):
            raise BadRequest("a recipe is a JSON object with data, training and threads")
        unknown = set(document) - _RECIPE_FIELDS
        if unknown:
            raise BadRequest(
                f"recipe has unknown fields {sorted(unknown)}; accepted: {sorted(_RECIPE_FIELDS)}"
            )
        data = document.get("data")
        if (
            not isinstance(data, Mapping)
            or set(data) - _DATA_FIELDS
            or not {"train", "validation", "test"} <= set(data)
        ):
            raise BadRequest(f"recipe data must be an object with {sorted(_DATA_FIELDS)}, options optional")
        splits = {name: _split(data[name], f"data.{name}") for name in ("train", "validation", "test")}
        seeds = [s.seed for s in splits.values()]
        if len(set(seeds)) != len(seeds):
            raise BadRequest(
                f"recipe splits must use different seeds (train, validation, test: {seeds}), so no image "
                "is in two of them"
            )
        options_doc = data.get("options") or {}
        if not isinstance(options_doc, Mapping) or set(options_doc) - set(_OPTION_FIELDS):
            raise BadRequest(f"recipe data.options accepts {list(_OPTION_FIELDS)}, not {options_doc!r}")
        values = dict(options_doc)
        if values.get("size") is not None:
            values["size"] = tuple(values["size"])
        try:
            options = Options(**values)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"recipe data.options: {exc}") from None
        training = document.get("training") or {}
        if not isinstance(training, Mapping):
            raise BadRequest("recipe training must be a training config object (TrainConfig.to_dict())")
        threads = document.get("threads", 1)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise BadRequest(f"recipe threads must be a positive integer, not {threads!r}")
        if training.get("threads") not in (None, threads):
            raise BadRequest(
                f"recipe training.threads ({training['threads']}) differs from threads ({threads}); "
                "set only threads"
            )
        twins = data.get("twins", False)
        if not isinstance(twins, bool):
            raise BadRequest(f"recipe data.twins must be true or false, not {twins!r}")
        if twins and splits["train"].count % 2:
            raise BadRequest(
                f"recipe data.train.count ({splits['train'].count}) must be even with twins: "
                "each fractured image comes with its intact twin"
            )
        description = document.get("description", "")
        if not isinstance(description, str):
            raise BadRequest("recipe description must be text")
        return cls(
            splits["train"],
            splits["validation"],
            splits["test"],
            options,
            dict(training),
            threads,
            description,
            twins,
        )

    @classmethod
    def load(cls, path: Path) -> Recipe:
        """The recipe in the JSON file ``path``.

        Raises
        ------
        BadRequest
            The file cannot be read as JSON, or :meth:`from_dict` refuses it (the message names the file).
        """
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadRequest(f"recipe {path} cannot be read as JSON: {exc}") from None
        try:
            return cls.from_dict(document)
        except BadRequest as exc:
            raise BadRequest(f"{path}: {exc.message}") from None

    def options_dict(self) -> dict[str, Any]:
        values = {name: getattr(self.options, name) for name in _OPTION_FIELDS}
        values["size"] = list(values["size"]) if values["size"] is not None else None
        return values

    def to_dict(self) -> dict[str, Any]:
        """The JSON document :meth:`from_dict` reads."""
        return {
            "description": self.description,
            "data": {
                "train": self.train.to_dict(),
                "validation": self.validation.to_dict(),
                "test": self.test.to_dict(),
                "options": self.options_dict(),
                "twins": self.twins,
            },
            "training": self.training,
            "threads": self.threads,
        }

    def train_config(self) -> TrainConfig:
        """The training config: :attr:`training` with :attr:`threads`.

        Raises
        ------
        BadRequest
            The training config has an unknown field or a bad value.
        """
        from radstack.ai.train import TrainConfig

        try:
            config = TrainConfig.from_dict(self.training)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"recipe training: {exc}") from None
        return replace(config, threads=self.threads)

    def dataset_version(self) -> str:
        """The lineage's data set: synthetic demo data and its seeds."""
        return (
            "synthetic demo data (radstack.ai.synthetic): "
            f"train seed {self.train.seed} × {self.train.count}, "
            f"validation seed {self.validation.seed} × {self.validation.count}, "
            f"test seed {self.test.seed} × {self.test.count}"
        )


# ---------------------------------------------------------------------------------------------- progress
class Phase(StrEnum):
    DATA = "data generation"
    TRAINING = "training"
    EXPORT = "export"
    EVALUATION = "evaluation"


@dataclass(frozen=True, slots=True)
class BuildProgress:
    """Where a build stands: ``done`` of ``total`` units of ``phase``.

    ``batch`` is set after each training batch, ``epoch`` after each epoch; ``seconds`` when the phase
    has finished (then ``done == total``).
    """

    phase: Phase
    done: int
    total: int
    unit: str
    detail: str = ""
    batch: BatchProgress | None = None
    epoch: EpochReport | None = None
    seconds: float | None = None


# ------------------------------------------------------------------------------------------------ build
def _sample(image: SyntheticImage, size: int, sites: Any = ()) -> Sample:
    """The image as a training sample, reduced ahead for a ``size`` input (see
    :func:`~radstack.ai.preprocess.reduce_ahead`: thousands of 2500 × 2048 images fit in memory)."""
    truth = image.truth
    pixels, factor = reduce_ahead(image.pixels, size)
    return Sample(
        image=pixels,
        boxes=np.asarray(truth["boxes"], np.float32).reshape(-1, 4) / np.float32(factor),
        label=bool(truth["fracture"]),
        patient_id=str(truth["patient_id"]),
        fracture_type=truth["type"],
        key=str(truth["sop_instance_uid"]),
        sites=np.asarray(sites, np.float32).reshape(-1, 4) / np.float32(factor),
    )


def _twin_samples(pair: tuple[SyntheticImage, SyntheticImage], size: int) -> list[Sample]:
    """A fractured image and its intact twin, whose site is where the first is broken."""
    broken, intact = pair
    return [_sample(broken, size), _sample(intact, size, sites=broken.truth["boxes"])]


def _generate(
    splits: Sequence[tuple[str, Split]],
    options: Options,
    processes: int,
    on_image: Callable[[int, str], None],
    *,
    size: int,
    twins: bool = False,
) -> dict[str, list[Sample]]:
    """The samples of every split, in index order, reduced ahead for a ``size`` input. With ``twins`` the
    training split is ``count / 2`` fractured images each followed by its intact twin
    (:func:`~radstack.ai.synthetic.generate_twins`). With ``processes`` > 1 the images are drawn by that
    many spawned worker processes (not forked: the caller may hold threads, torch's among them); every
    image is a pure function of (seed, index, options), so the result is the same either way."""
    out: dict[str, list[Sample]] = {name: [] for name, _ in splits}
    done = 0
    pool = (
        ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        if processes > 1
        else None
    )
    try:
        for name, split in splits:
            paired = twins and name == "train"
            draw: Callable[..., Any] = generate_twins if paired else generate
            indices = list(range(split.count // 2 if paired else split.count))
            if pool is None:
                drawn: Iterator[Any] = (draw(split.seed, index, options) for index in indices)
            else:
                chunk = max(1, min(16, len(indices) // (4 * processes)))
                drawn = pool.map(
                    draw, [split.seed] * len(indices), indices, [options] * len(indices), chunksize=chunk
                )
            for item in drawn:
                new = _twin_samples(item, size) if paired else [_sample(item, size)]
                out[name].extend(new)
                done += len(new)
                on_image(done, name)
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def code_version() -> str:
    """``radstack <version>``, with the git commit of the source when it runs from a checkout (``+dirty``
    when files under ``src/radstack`` other than the starter artifact differ from it)."""
    version = f"radstack {__version__}"
    package = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            [
                "git",
                "-C",
                str(package),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!ai/starter",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} (git {commit}{'+dirty' if changed else ''})" if commit else version


def _card(recipe: Recipe, n_test: int) -> ModelCard:
    options = recipe.options
    size = f"{options.size[0]} × {options.size[1]} px" if options.size else f"scale {options.scale:g}"
    return ModelCard(
        intended_use=(
            "Demonstration and triage research on synthetic data: a small fracture detector that shows "
            "radstack's AI path (registry, approval, inference, results) working out of the box. NOT FOR "
            "CLINICAL USE: it has never seen a real patient's fracture and must not inform any diagnosis."
        ),
        training_data=(
            "Synthetic DX radiographs drawn by radstack.ai.synthetic (no patient data): "
            f"{recipe.train.count} training images (seed {recipe.train.seed}"
            f"{', fractured images each with its intact twin' if recipe.twins else ''}) and "
            f"{recipe.validation.count} validation images (seed {recipe.validation.seed}; operating points "
            f"and calibration); the metrics are on {n_test} test images of seed {recipe.test.seed}, never "
            f"used in training. Images at {size}, fracture rate {options.fracture_rate:g}, "
            f"{options.rg3_rate:.0%} composited onto pydicom-data's real RG3 radiograph. Remade by "
            f"`{COMMAND}` from radstack/ai/starter/recipe.json."
        ),
        limitations=(
            "Small and briefly trained; its metrics describe synthetic images only and say nothing about "
            "real radiographs. The synthetic anatomy is simplified (no casts, implants, healed, pathological "
            "or dislocated fractures) and RG3 is one patient. Validate on real, labelled radiographs before "
            "any clinical use, and replace it with a model trained on your own data."
        ),
    )


def _contract(config: TrainConfig) -> dict[str, Any]:
    """The exported detector's input/output contract (see :mod:`radstack.ai.runtime`)."""
    size, k = config.preprocess.size, config.detector.max_detections
    return {
        "inputs": [{"name": "image", "shape": ["batch", 1, size, size], "dtype": "float32"}],
        "outputs": [
            {"name": "boxes", "shape": ["batch", k, 4], "dtype": "float32"},
            {"name": "scores", "shape": ["batch", k], "dtype": "float32"},
            {"name": "probability", "shape": ["batch"], "dtype": "float32"},
        ],
        "preprocessing": config.preprocess.to_dict(),
    }


def _json_text(value: Any, depth: int = 0) -> str:
    """JSON with one object member per line and every list on one line (the ROC and FROC curves would
    take a line per number otherwise)."""
    if isinstance(value, dict) and value:
        pad = " " * (depth + 1)
        members = [f"{pad}{json.dumps(key)}: {_json_text(value[key], depth + 1)}" for key in sorted(value)]
        return "{\n" + ",\n".join(members) + "\n" + " " * depth + "}"
    return json.dumps(value, sort_keys=True)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


@dataclass(frozen=True, slots=True)
class StarterBuild:
    """What :func:`build_starter` wrote: the two files, and the manifest's content."""

    onnx_path: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.manifest["onnx"]["sha256"])


def _weights_sha256(model: Any) -> str:
    """SHA-256 of the state dict's tensors (names and raw bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_starter(
    recipe: Recipe,
    out_dir: Path,
    progress: Callable[[BuildProgress], None] | None = None,
    *,
    processes: int = 1,
) -> StarterBuild:
    """Make the starter model from ``recipe``: ``out_dir/fracture.onnx`` and its manifest ``fracture.json``.

    Parameters
    ----------
    recipe
        What to make (:class:`Recipe`).
    out_dir
        Where to write (made if missing; the two files are replaced, the ONNX file first, so a build
        that stops half-way leaves a manifest that no longer matches and is refused on install).
    progress
        Called per generated image, per training batch and epoch, and when each phase ends.
    processes
        Worker processes drawing the images (1: here, the default). It changes only how long generation
        takes: the shipped recipe's 4,900 full-size images took 384 s in two workers on two idle cores
        (``make starter-model`` uses two); small images on a busy machine drew faster in one process.

    Returns
    -------
    StarterBuild
        The paths written and the manifest.

    Raises
    ------
    BadRequest
        The recipe's training config is invalid, or a validation or test split has one class only.
    SyntheticDataError
        The images cannot be drawn (an RG3 composite without pydicom-data).
    TrainingDiverged
        The loss became NaN or infinite.
    OSError
        ``out_dir`` cannot be written.
    """
    from radstack.ai.detector import export_onnx
    from radstack.ai.evaluate import auroc, choose_operating_points, evaluate
    from radstack.ai.runtime import OnnxDetector
    from radstack.ai.train import train

    config = recipe.train_config()
    report = progress or (lambda _: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # Data.
    splits = [("train", recipe.train), ("validation", recipe.validation), ("test", recipe.test)]
    total = sum(split.count for _, split in splits)
    t0 = time.perf_counter()
    samples = _generate(
        splits,
        recipe.options,
        processes,
        lambda done, name: report(BuildProgress(Phase.DATA, done, total, "images", name)),
        size=config.preprocess.size,
        twins=recipe.twins,
    )
    timings["data_seconds"] = time.perf_counter() - t0
    report(BuildProgress(Phase.DATA, total, total, "images", seconds=timings["data_seconds"]))
    for name in ("validation", "test"):
        labels = [s.label for s in samples[name]]
        if not 0 < sum(labels) < len(labels):
            raise BadRequest(
                f"the recipe's {name} split (seed {getattr(recipe, name).seed}, {len(labels)} images) has "
                "one class only; make it larger or change the fracture rate"
            )

    # Training.
    t0 = time.perf_counter()
    batches = math.ceil(recipe.train.count / config.batch_size) * config.epochs

    def on_batch(batch: BatchProgress) -> None:
        done = (batch.epoch - 1) * batch.batches + batch.batch
        detail = f"epoch {batch.epoch}/{batch.epochs}, loss {batch.loss:.3f}"
        report(BuildProgress(Phase.TRAINING, done, batches, "batches", detail, batch=batch))

    def on_epoch(epoch: EpochReport) -> None:
        done = epoch.epoch * math.ceil(recipe.train.count / config.batch_size)
        report(BuildProgress(Phase.TRAINING, done, batches, "batches", f"epoch {epoch.epoch}", epoch=epoch))

    result = train(samples["train"], samples["validation"], config, on_batch=on_batch, on_epoch=on_epoch)
    timings["training_seconds"] = time.perf_counter() - t0
    report(BuildProgress(Phase.TRAINING, batches, batches, "batches", seconds=timings["training_seconds"]))

    # Export.
    t0 = time.perf_counter()
    onnx = export_onnx(result.model, config.preprocess)
    timings["export_seconds"] = time.perf_counter() - t0
    report(BuildProgress(Phase.EXPORT, 1, 1, "graph", seconds=timings["export_seconds"]))

    # Evaluation of the exported graph: operating points on validation, metrics on test.
    t0 = time.perf_counter()
    detector = OnnxDetector(onnx, threads=recipe.threads, providers=["CPUExecutionProvider"])
    n_eval = recipe.validation.count + recipe.test.count
    predictions: dict[str, list[Any]] = {"validation": [], "test": []}
    for name in ("validation", "test"):
        split = samples[name]
        for start in range(0, len(split), _EVAL_BATCH):
            chunk = split[start : start + _EVAL_BATCH]
            predictions[name].extend(detector.predict_batch([s.image for s in chunk]))
            done = len(predictions["validation"]) + len(predictions["test"])
            report(BuildProgress(Phase.EVALUATION, done, n_eval, "images", name))
    validation_labels = [s.label for s in samples["validation"]]
    validation_scores = [p.probability for p in predictions["validation"]]
    points = choose_operating_points(validation_labels, validation_scores)
    evaluation = evaluate(predictions["test"], samples["test"], points)
    timings["evaluation_seconds"] = time.perf_counter() - t0
    report(BuildProgress(Phase.EVALUATION, n_eval, n_eval, "images", seconds=timings["evaluation_seconds"]))
    timings["total_seconds"] = time.perf_counter() - started

    sha256 = hashlib.sha256(onnx).hexdigest()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "model": MODEL_NAME,
        "description": "Starter fracture detector trained on synthetic radiographs (not for clinical use)",
        "onnx": {"file": ONNX_NAME, "sha256": sha256, "size": len(onnx)},
        "weights_sha256": _weights_sha256(result.model),
        "command": COMMAND,
        "code_version": code_version(),
        "recipe": recipe.to_dict(),
        "config": config.to_dict(),
        "contract": _contract(config),
        "lineage": Lineage(
            dataset_version=recipe.dataset_version(),
            code_version=code_version(),
            hyperparameters=config.to_dict(),
        ).to_json(),
        "training": {
            "device": result.device,
            "threads": recipe.threads,
            "seconds": round(timings["training_seconds"], 2),
            "calibration": list(result.calibration) if result.calibration is not None else None,
            "history": [epoch.to_dict() for epoch in result.history],
            "torch": _torch_version(),
        },
        "validation_auroc": auroc(validation_labels, validation_scores),
        "operating_points": points.to_dict(),
        "metrics": evaluation.to_dict(),
        "timings": {key: round(value, 2) for key, value in timings.items()},
        "card": _card(recipe, recipe.test.count).to_json(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, manifest_path = out_dir / ONNX_NAME, out_dir / MANIFEST_NAME
    _write_atomically(onnx_path, onnx)
    _write_atomically(manifest_path, (_json_text(manifest) + "\n").encode())
    return StarterBuild(onnx_path, manifest_path, manifest)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


# ---------------------------------------------------------------------------------------------- install
@dataclass(frozen=True, slots=True)
class _Shipped:
    manifest: dict[str, Any]
    manifest_bytes: bytes
    onnx: bytes


def read_manifest(source: Path = STARTER_DIR) -> dict[str, Any]:
    """The manifest in ``source``, once the ONNX file it names matches its SHA-256.

    Raises
    ------
    StarterModelError
        A file is missing or unreadable, the manifest is not one, or the ONNX file's SHA-256 differs from
        the manifest's (the message names the file).
    """
    return _read_shipped(source).manifest


def _read_shipped(source: Path) -> _Shipped:
    """The verified manifest and ONNX bytes in ``source``.

    Raises
    ------
    StarterModelError
        As :func:`read_manifest`.
    """
    manifest_path = source / MANIFEST_NAME
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError as exc:
        raise StarterModelError(
            f"starter model manifest {manifest_path} cannot be read: {exc.strerror}"
        ) from None
    try:
        manifest = json.loads(manifest_bytes)
        expected = str(manifest["onnx"]["sha256"])
        onnx_path = source / Path(str(manifest["onnx"]["file"])).name
        kind = (manifest.get("format"), manifest.get("model"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StarterModelError(f"starter model manifest {manifest_path} is not a manifest: {exc}") from None
    if kind != (MANIFEST_FORMAT, MODEL_NAME):
        raise StarterModelError(
            f"starter model manifest {manifest_path} has format {kind[0]!r} of model {kind[1]!r}, not "
            f"format {MANIFEST_FORMAT} of {MODEL_NAME!r}"
        )
    try:
        onnx = onnx_path.read_bytes()
    except OSError as exc:
        raise StarterModelError(f"starter model file {onnx_path} cannot be read: {exc.strerror}") from None
    actual = hashlib.sha256(onnx).hexdigest()
    if actual != expected:
        raise StarterModelError(
            f"starter model file {onnx_path} has SHA-256 {actual}, but its manifest {manifest_path} says "
            f"{expected}: the file was changed or damaged. Reinstall radstack or remake it with "
            f"`{COMMAND}`"
        )
    return _Shipped(manifest, manifest_bytes, onnx)


def _unfinished(registry: ModelRegistry) -> ModelVersion | None:
    """Version 1 of ``fracture`` when it is the starter model and its installation stopped before
    production (a crash between the registry's steps); ``None`` when the site's registry holds anything
    else: then it is the site's, and is left as it is."""
    try:
        version = registry.version(MODEL_NAME, 1)
        history = registry.history(MODEL_NAME)
    except NotFound:
        return None
    ours = version.registered_by == BUILDER.subject and version.status in (
        ApprovalStatus.PENDING,
        ApprovalStatus.APPROVED,
    )
    if not ours or history or (version.reviewed_by not in (None, RELEASER.subject)):
        return None
    return version


def install_starter(registry: ModelRegistry, source: Path = STARTER_DIR) -> ModelVersion | None:
    """Register the shipped starter model as ``fracture`` v1, approve it and put it in production, when
    the registry has no model ``fracture`` yet; the production version, or ``None`` when nothing changed.

    Safe to call at every start: a registry that holds ``fracture`` (the starter, or a site's own model,
    in whatever state a site put it, rejected or rolled back) is left as it is, except that an installation
    that stopped between registering and production is finished. Of two nodes starting at once, one
    installs. Problems are logged, never raised: a missing or damaged file (its SHA-256 differs from the
    manifest's) is an error naming the file, and nothing is registered.
    """
    try:
        try:
            registry.model(MODEL_NAME)
        except NotFound:
            shipped = _read_shipped(source)
            version = _register(registry, shipped)
        else:
            found = _unfinished(registry)
            if found is None:
                return None
            log.info("finishing the installation of the starter model %s", found.ref)
            version = found
        sha256 = version.artifact(ArtifactKind.ONNX).sha256
        if version.status is ApprovalStatus.PENDING:
            comment = REVIEW_COMMENT.format(version=__version__, sha256=sha256)
            version = registry.approve(MODEL_NAME, version.version, by=RELEASER, comment=comment)
        version = registry.promote(MODEL_NAME, version.version, RegistryStage.PRODUCTION, by=RELEASER)
    except Conflict as exc:  # another node installs it at the same time
        log.info("starter model not installed here: %s", exc.message)
        return None
    except RadstackError as exc:
        log.error("starter model %r not installed: %s", MODEL_NAME, exc.message)
        return None
    log.info(
        "starter model %s installed: approved by %s and in production (ONNX sha256 %s); for demonstration "
        "on synthetic data, not for clinical use",
        version.ref,
        RELEASER.subject,
        sha256,
    )
    return version


def _register(registry: ModelRegistry, shipped: _Shipped) -> ModelVersion:
    """Register the verified shipped files as ``fracture`` v1 (pending).

    Raises
    ------
    StarterModelError
        The manifest lacks a field the registration needs.
    Conflict
        The model exists (another node registered it first).
    """
    manifest = shipped.manifest
    try:
        contract = Contract.from_json(manifest["contract"], "starter manifest contract")
        lineage = Lineage.from_json(manifest["lineage"], "starter manifest lineage")
        card = ModelCard.from_json(manifest["card"], "starter manifest card")
        metrics = manifest["metrics"]
        description = str(manifest.get("description", ""))
    except (KeyError, BadRequest) as exc:
        message = exc.message if isinstance(exc, BadRequest) else f"it has no {exc}"
        raise StarterModelError(f"starter model manifest {MANIFEST_NAME}: {message}") from None
    return registry.register(
        MODEL_NAME,
        [
            ArtifactIn(ONNX_NAME, ArtifactKind.ONNX, shipped.onnx),
            ArtifactIn(MANIFEST_NAME, ArtifactKind.DOC, shipped.manifest_bytes),
        ],
        by=BUILDER,
        contract=contract,
        lineage=lineage,
        metrics=metrics,
        card=card,
        description=description,
        new_model=True,
    )
