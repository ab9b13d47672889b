"""AI benchmark: the starter model's training time, its inference time per 2500 × 2048 radiograph, and its
held-out evaluation on synthetic radiographs of a seed never used in training, whole and composited onto
the real RG3 radiograph.

1. Training (skipped with ``--shipped``): :func:`radstack.ai.starter.build_starter` on the recipe (by
   default the shipped ``radstack/ai/starter/recipe.json``), timed per phase: data generation, training,
   ONNX export, evaluation on the recipe's own test split.
2. Inference: :class:`radstack.ai.runtime.OnnxDetector` on full-size 2500 × 2048 uint16 radiographs,
   preprocessing included, milliseconds per image (median and p90).
3. Held-out evaluation: ``--count`` full-size images of ``--seed`` (10% RG3 composites, half with a
   fracture), each run through the ONNX model exactly as the platform runs it, scored with the operating
   points chosen on the recipe's validation split; then ``--rg3-count`` images that are all RG3 composites.
   The issue's targets are printed beside each figure.

Run: ``.venv/bin/python bench/ai.py [--shipped] [--count 2000] [--seed 777001] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _common import format_table
from radstack.ai.evaluate import OperatingPoints, auroc, bootstrap_auroc_ci, evaluate
from radstack.ai.preprocess import preprocess
from radstack.ai.runtime import OnnxDetector
from radstack.ai.samples import Prediction
from radstack.ai.starter import (
    RECIPE_PATH,
    STARTER_DIR,
    BuildProgress,
    Recipe,
    build_starter,
    read_manifest,
)
from radstack.ai.synthetic import Options, SyntheticImage, generate

#: Seeds the starter recipe must never use (checked): the held-out sets are drawn from them.
HELD_OUT_SEED = 777001
RG3_SEED = 777002


@dataclass(frozen=True, slots=True)
class Truth:
    """What evaluation needs of an image, without its pixels."""

    label: bool
    boxes: np.ndarray
    fracture_type: str | None


def _draw(seed: int, count: int, options: Options, processes: int) -> Iterator[SyntheticImage]:
    """Images 0 … count - 1 of ``seed``, drawn by worker processes ahead of the caller."""
    with ProcessPoolExecutor(processes) as pool:
        yield from pool.map(generate, [seed] * count, range(count), [options] * count, chunksize=4)


def _run(
    detector: OnnxDetector, seed: int, count: int, options: Options, processes: int, what: str
) -> tuple[list[Prediction], list[Truth], list[float], int]:
    """Predictions and truths of ``count`` images; milliseconds per predict; how many were composites."""
    predictions, truths, times = [], [], []
    composites = 0
    started = time.perf_counter()
    for n, image in enumerate(_draw(seed, count, options, processes), start=1):
        t0 = time.perf_counter()
        predictions.append(detector.predict(image.pixels))
        times.append((time.perf_counter() - t0) * 1000)
        truth = image.truth
        truths.append(
            Truth(
                bool(truth["fracture"]),
                np.asarray(truth["boxes"], np.float32).reshape(-1, 4),
                truth["type"] if truth["fracture"] else None,
            )
        )
        composites += bool(truth["composited"])
        if n % 100 == 0 or n == count:
            print(f"  {what}: {n}/{count} images, {time.perf_counter() - started:.0f} s", flush=True)
    return predictions, truths, times, composites


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.1f}%"


def _ci(value: float, ci: Any) -> str:
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if ci else f"{value:.3f}"


def _training(recipe: Recipe, out: Path) -> dict[str, Any]:
    def progress(event: BuildProgress) -> None:
        if event.seconds is not None:
            print(f"  {event.phase}: {event.seconds:.1f} s", flush=True)
        elif event.epoch is not None:
            report = event.epoch
            val = report.validation
            print(
                f"  epoch {report.epoch}/{report.epochs}: loss {report.train_loss:.3f}, validation AUROC "
                f"{val.get('auroc', float('nan')):.3f}, {report.seconds:.0f} s",
                flush=True,
            )

    build = build_starter(recipe, out, progress)
    return build.manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE_PATH)
    parser.add_argument("--shipped", action="store_true", help="evaluate the shipped artifact, no training")
    parser.add_argument("--count", type=int, default=2000, help="held-out images")
    parser.add_argument("--rg3-count", type=int, default=300, help="held-out RG3 composites")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=30, help="timed inferences of one radiograph")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        if args.shipped:
            manifest, onnx = read_manifest(STARTER_DIR), STARTER_DIR / "fracture.onnx"
            print(f"shipped starter model, sha256 {manifest['onnx']['sha256'][:16]}…")
        else:
            recipe = Recipe.load(args.recipe)
            used = {recipe.train.seed, recipe.validation.seed, recipe.test.seed}
            if {args.seed, RG3_SEED} & used:
                parser.error(
                    f"seeds {args.seed} and {RG3_SEED} must not be among the recipe's {sorted(used)}"
                )
            print(f"training the starter recipe {args.recipe} …")
            manifest = _training(recipe, Path(tmp))
            onnx = Path(tmp) / "fracture.onnx"
        detector = OnnxDetector(onnx, threads=args.threads, providers=["CPUExecutionProvider"])
        points = OperatingPoints.from_dict(manifest["operating_points"])

        # Inference on one full-size long-bone radiograph, repeated.
        image = next(
            im.pixels
            for im in (generate(args.seed + 10, i, Options(rg3_rate=0.0)) for i in range(20))
            if im.pixels.shape == (2500, 2048)
        )
        for _ in range(3):
            detector.predict(image)
        total, pre = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            detector.predict(image)
            total.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            preprocess(image, detector.spec)
            pre.append((time.perf_counter() - t0) * 1000)

        print(f"held-out evaluation: {args.count} images of seed {args.seed} …")
        predictions, truths, times, composites = _run(
            detector, args.seed, args.count, Options(rg3_rate=0.1), args.processes, "held-out"
        )
        evaluation = evaluate(predictions, truths, points).to_dict()
        print(f"RG3 composites: {args.rg3_count} images of seed {RG3_SEED} …")
        rg3_predictions, rg3_truths, _, _ = _run(
            detector, RG3_SEED, args.rg3_count, Options(rg3_rate=1.0), args.processes, "RG3"
        )
    rg3_labels = [t.label for t in rg3_truths]
    rg3_scores = [p.probability for p in rg3_predictions]
    rg3_auroc = auroc(rg3_labels, rg3_scores)
    rg3_ci = bootstrap_auroc_ci(rg3_labels, rg3_scores)
    load_after = os.getloadavg()[0]

    timings = manifest.get("timings", {})
    ops = evaluation["operating_points"]
    froc = evaluation["froc"]["at"]
    rows = [
        [
            "training time (2 cores)",
            f"{timings.get('training_seconds', float('nan')):.0f} s",
            "≤ 600 s",
            f"data generation {timings.get('data_seconds', float('nan')):.0f} s, "
            f"device {manifest['training']['device']}, {manifest['training']['threads']} thread(s)",
        ],
        [
            "inference per 2500×2048 radiograph",
            f"{statistics.median(total):.1f} ms",
            "≤ 100 ms",
            f"p90 {np.percentile(total, 90):.1f} ms, preprocessing {statistics.median(pre):.1f} ms; "
            f"held-out median {statistics.median(times):.1f} ms",
        ],
        [
            "AUROC (95% CI)",
            _ci(evaluation["auroc"], evaluation["auroc_ci"]),
            "≥ 0.97",
            f"{evaluation['n_fracture']} fractures, {evaluation['n_normal']} normal, {composites} on RG3",
        ],
        [
            "box recall, IoU ≥ 0.3, at 'suspicious'",
            _pct(ops["suspicious"]["box_recall"]),
            "≥ 90%",
            f"threshold {ops['suspicious']['threshold']:.3f}",
        ],
        [
            "FROC sensitivity at 1 FP/image",
            _pct(froc["1"]),
            "≥ 90%",
            f"at 0.5: {_pct(froc['0.5'])}, at 2: {_pct(froc['2'])}",
        ],
        [
            "RG3 composites AUROC (95% CI)",
            _ci(rg3_auroc, rg3_ci),
            "≥ 0.9",
            f"{sum(rg3_labels)} fractures, {len(rg3_labels) - sum(rg3_labels)} normal",
        ],
    ]
    for name in ("suspicious", "definite"):
        point = ops[name]
        rows.append(
            [
                f"'{name}': sensitivity / specificity",
                f"{_pct(point['sensitivity'])} / {_pct(point['specificity'])}",
                "",
                f"threshold {point['threshold']:.3f} (chosen on validation)",
            ]
        )
    calibration = evaluation["calibration"]
    rows.append(["calibration", f"ECE {calibration['ece']:.3f}", "", f"Brier {calibration['brier']:.3f}"])
    print()
    print(format_table(["figure", "measured", "target", "detail"], rows))
    type_rows = [
        [
            kind,
            str(entry["n"]),
            f"{entry['auroc']:.3f}" if entry.get("auroc") is not None else "—",
            _pct(entry["suspicious"]["sensitivity"]),
            _pct(entry["suspicious"]["box_recall"]),
            _pct(entry["definite"]["sensitivity"]),
        ]
        for kind, entry in sorted(evaluation["per_type"].items())
    ]
    print()
    print(
        format_table(
            ["fracture type", "n", "AUROC", "sens. suspicious", "box recall suspicious", "sens. definite"],
            type_rows,
        )
    )
    print(
        f"threads {args.threads}, load average {load_before:.1f} before, {load_after:.1f} after, "
        f"{os.cpu_count()} CPUs; model {manifest['onnx']['sha256'][:16]}…, {manifest['code_version']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
