"""AI speed benchmark: detector training throughput and inference time per radiograph.

* Training: the real training loop (:func:`radstack.ai.train.train`: preprocessing of 2500 × 2048 uint16
  images, augmentation, targets, forward, backward, AdamW step) at the default 512 px input, batch 8;
  images per second from the time between batches (the first batch, with its warm-up, is left out), and
  CPU seconds per image.
* Inference: :class:`radstack.ai.runtime.OnnxDetector` on a 2500 × 2048 uint16 radiograph, preprocessing
  included (numpy) and alone, milliseconds per image.

The weights are untrained (speed does not depend on them). The load average is printed with the table:
on a shared machine the figures are only as good as the quiet they were measured in.

Run: ``.venv/bin/python bench/ai_speed.py [--threads 2] [--batches 6] [--repeat 30]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import format_table
from radstack.ai.detector import CenterNet, export_onnx
from radstack.ai.preprocess import PreprocessSpec, preprocess
from radstack.ai.runtime import OnnxDetector
from radstack.ai.samples import Sample
from radstack.ai.train import BatchProgress, TrainConfig, train

SHAPE = (2500, 2048)


def _radiograph(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit image with a bright vertical "bone" and one box on it."""
    rng = np.random.default_rng(seed)
    image = rng.normal(800, 80, SHAPE)
    image[:, 900:1150] += 2000
    return np.clip(image, 0, 4095).astype(np.uint16), np.array([[880, 1200, 1170, 1300]], np.float32)


def bench_training(threads: int, batches: int, batch_size: int) -> tuple[float, float]:
    """(images per second, CPU seconds per image) of the training loop."""
    image, box = _radiograph(0)
    samples = [Sample(image, box, bool(i % 2)) for i in range((batches + 1) * batch_size)]
    stamps: list[tuple[float, float]] = []

    def on_batch(_: BatchProgress) -> None:
        stamps.append((time.perf_counter(), time.process_time()))

    train(samples, [], TrainConfig(epochs=1, batch_size=batch_size, threads=threads), on_batch=on_batch)
    wall = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]
    return batch_size / statistics.median(wall), statistics.median(cpu) / batch_size


def bench_inference(threads: int, repeat: int) -> tuple[float, float, float, int]:
    """(ms per image with preprocessing, ms preprocessing alone, p90 ms, ONNX bytes)."""
    spec = PreprocessSpec()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        size = len(export_onnx(CenterNet(), spec, path))
        detector = OnnxDetector(path, threads=threads)
    image, _ = _radiograph(1)
    for _ in range(3):
        detector.predict(image)
    total, pre = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        detector.predict(image)
        total.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        preprocess(image, spec)
        pre.append((time.perf_counter() - start) * 1000)
    p90 = float(np.percentile(total, 90))
    return statistics.median(total), statistics.median(pre), p90, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--batches", type=int, default=6, help="timed training batches")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=30, help="timed inferences")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rate, cpu_per_image = bench_training(args.threads, args.batches, args.batch_size)
    median, pre, p90, size = bench_inference(args.threads, args.repeat)
    load_after = os.getloadavg()[0]
    params = sum(p.numel() for p in CenterNet().parameters())
    rows = [
        ["training, 512 px, batch 8", f"{rate:.2f} img/s", f"{cpu_per_image:.2f} CPU s/img"],
        ["inference 2500×2048 uint16 (preprocess + ONNX)", f"{median:.1f} ms", f"p90 {p90:.1f} ms"],
        ["  of which preprocessing", f"{pre:.1f} ms", ""],
        ["model", f"{params / 1000:.0f}k params", f"ONNX {size / 1e6:.2f} MB"],
    ]
    print(format_table(["step", "figure", "detail"], rows))
    print(
        f"threads {args.threads}, torch {torch.__version__}, "
        f"load average {load_before:.1f} before, {load_after:.1f} after, {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
