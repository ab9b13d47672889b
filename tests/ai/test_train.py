"""Training: it learns, it is deterministic, it resumes exactly, it cancels, and augmentation moves boxes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from radstack.ai.evaluate import choose_operating_points, evaluate
from radstack.ai.preprocess import PreprocessSpec, preprocess
from radstack.ai.train import (
    AugmentConfig,
    BatchProgress,
    EpochReport,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    TrainResult,
    _augment,
    _crop,
    _losses,
    _targets,
    load_checkpoint_model,
    predict,
    train,
)
from tests.ai.tiny import TINY_DETECTOR, tiny_dataset

TINY = TrainConfig(
    seed=3,
    epochs=3,
    batch_size=16,
    learning_rate=3e-3,
    detector=TINY_DETECTOR,
    preprocess=PreprocessSpec(size=64),
    threads=1,  # bit-identical runs need the same thread count; one is also fastest on a shared machine
)


def _curve(history: tuple[EpochReport, ...]) -> list[tuple[float, dict[str, float]]]:
    return [(report.train_loss, report.validation) for report in history]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_short_run_learns_fractures_it_has_not_seen() -> None:
    train_set, validation_set, test_set = tiny_dataset(256, seed=1), tiny_dataset(48, 2), tiny_dataset(96, 3)
    config = _with(TINY, epochs=8)
    reports: list[EpochReport] = []
    result = train(train_set, validation_set, config, on_epoch=reports.append)
    assert [r.epoch for r in reports] == list(range(1, 9))
    assert reports[-1].train_loss < 0.5 * reports[0].train_loss
    validation = predict(result.model, validation_set, config.preprocess)
    points = choose_operating_points([s.label for s in validation_set], [p.probability for p in validation])
    held_out = evaluate(predict(result.model, test_set, config.preprocess), test_set, points, n_bootstrap=200)
    assert held_out.auroc > 0.85, held_out.auroc
    assert held_out.auroc_ci[0] > 0.7
    assert held_out.froc.at["1"] > 0.6  # the boxes land on the fractures, in the original pixels
    # Platt scaling fitted on validation: held-out probabilities closer to the truth than the raw peaks.
    assert result.calibration is not None
    with torch.no_grad():
        result.model.calibration.copy_(torch.tensor([1.0, 0.0]))
    raw = evaluate(predict(result.model, test_set, config.preprocess), test_set, points, n_bootstrap=10)
    assert held_out.calibration.brier < raw.calibration.brier
    assert raw.auroc == held_out.auroc  # the ranking is unchanged


def _with(config: TrainConfig, **changes: object) -> TrainConfig:
    return TrainConfig.from_dict({**config.to_dict(), **changes})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    return train(tiny_dataset(64, seed=1), tiny_dataset(16, seed=2), TINY, checkpoint_path=path), path


def test_the_same_seed_gives_the_same_loss_curve_and_weights(uninterrupted: tuple[TrainResult, Path]) -> None:
    first, _ = uninterrupted
    again = train(tiny_dataset(64, seed=1), tiny_dataset(16, seed=2), TINY)
    assert _curve(again.history) == _curve(first.history)
    assert _same_weights(again.model, first.model)
    other = train(tiny_dataset(64, seed=1), tiny_dataset(16, seed=2), _with(TINY, seed=4, epochs=1))
    assert other.history[0].train_loss != first.history[0].train_loss


def test_a_cancelled_run_resumes_from_its_checkpoint_to_the_same_result(
    uninterrupted: tuple[TrainResult, Path], tmp_path: Path
) -> None:
    first, _ = uninterrupted
    path = tmp_path / "checkpoint.pt"
    progress: list[BatchProgress] = []

    def stop_in_second_epoch() -> bool:
        return bool(progress) and progress[-1].epoch == 2 and progress[-1].batch == 2

    with pytest.raises(TrainingCancelled) as cancelled:
        train(
            tiny_dataset(64, seed=1),
            tiny_dataset(16, seed=2),
            TINY,
            checkpoint_path=path,
            on_batch=progress.append,
            should_stop=stop_in_second_epoch,
        )
    assert cancelled.value.completed_epochs == 1
    assert load_checkpoint_model(path)[2] == 1  # the checkpoint is epoch 1's, not a half epoch
    # A fresh process would do exactly this: call train again with the same checkpoint path.
    resumed = train(tiny_dataset(64, seed=1), tiny_dataset(16, seed=2), TINY, checkpoint_path=path)
    assert resumed.resumed_from_epoch == 1
    assert _curve(resumed.history) == _curve(first.history)
    assert _same_weights(resumed.model, first.model)


def test_progress_is_reported_per_batch_and_a_finished_checkpoint_is_reused(
    uninterrupted: tuple[TrainResult, Path],
) -> None:
    first, path = uninterrupted
    progress: list[BatchProgress] = []
    again = train(
        tiny_dataset(64, seed=1),
        tiny_dataset(16, seed=2),
        TINY,
        checkpoint_path=path,
        on_batch=progress.append,
    )
    assert progress == []  # every epoch was done: nothing runs again
    assert _same_weights(again.model, first.model)
    fresh: list[BatchProgress] = []
    train(tiny_dataset(32, seed=1), [], _with(TINY, epochs=1), on_batch=fresh.append)
    assert [(p.batch, p.batches) for p in fresh] == [(1, 2), (2, 2)]
    assert fresh[-1].fraction == 1.0 and all(math.isfinite(p.loss) for p in fresh)


def test_a_checkpoint_of_another_configuration_is_refused(uninterrupted: tuple[TrainResult, Path]) -> None:
    _, path = uninterrupted
    with pytest.raises(ValueError, match="different training configuration"):
        train(tiny_dataset(64, seed=1), [], _with(TINY, learning_rate=1e-3), checkpoint_path=path)
    with pytest.raises(ValueError, match="training split is empty"):
        train([], [], TINY)
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1, batch 2: the loss is nan"):
        train(tiny_dataset(32, seed=1), [], _with(TINY, learning_rate=math.inf, epochs=1))


def test_config_round_trips_through_json() -> None:
    config = TrainConfig(augment=AugmentConfig(rotate_degrees=5.0, scale=(0.95, 1.05)), schedule="cosine")  # type: ignore[arg-type]
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown training config fields"):
        TrainConfig.from_dict({"epochs": 2, "momentum": 0.9})


def test_augmentation_moves_boxes_with_the_pixels() -> None:
    size = 64
    images = torch.zeros(4, 1, size, size)
    images[:, :, 10:20, 30:50] = 1.0  # a bright block at x 30..50, y 10..20
    boxes = [torch.tensor([[30.0, 10.0, 50.0, 20.0]]) for _ in range(4)]
    strong = AugmentConfig(
        rotate_degrees=30,
        scale=(0.8, 1.2),
        translate=0.1,
        contrast=(1, 1),
        brightness=0,
        gamma=(1, 1),
        noise_std=0,
    )
    out, moved, labels = _augment(images, boxes, torch.ones(4), strong, torch.Generator().manual_seed(0))
    for i in range(4):
        ys, xs = np.nonzero(out[i, 0].numpy() > 0.5)
        x0, y0, x1, y1 = moved[i][0].tolist()
        assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1
        assert y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1
        # The block fills a good part of its box (a rotated box is looser, never misplaced).
        assert (out[i, 0].numpy() > 0.5).sum() > 0.3 * (x1 - x0) * (y1 - y0)
    assert labels.tolist() == [1.0] * 4


def test_training_windows_hold_the_fracture_they_were_placed_on() -> None:
    size, crop = 128, 64
    images = torch.zeros(6, 1, size, size)
    images[:, :, 90:100, 20:40] = 1.0
    boxes = [torch.tensor([[20.0, 90.0, 40.0, 100.0]]) for _ in range(6)]
    _, letterbox = preprocess(np.zeros((size, size), np.uint16), PreprocessSpec(size=size))
    config = AugmentConfig(crop=crop, crop_on_fracture=1.0)
    out, moved, labels = _crop(
        images, boxes, torch.ones(6), [letterbox] * 6, config, torch.Generator().manual_seed(0)
    )
    assert out.shape == (6, 1, crop, crop)
    for i in range(6):
        x0, y0, x1, y1 = (int(v) for v in moved[i][0].tolist())
        assert out[i, 0, y0:y1, x0:x1].min() == 1.0 and out[i, 0].sum() == (x1 - x0) * (y1 - y0)
    assert labels.tolist() == [1.0] * 6
    # Windows placed anywhere may miss the fracture: then the window is labelled normal.
    config = AugmentConfig(crop=crop, crop_on_fracture=0.0)
    out, moved, labels = _crop(
        images, boxes, torch.ones(6), [letterbox] * 6, config, torch.Generator().manual_seed(1)
    )
    for i in range(6):
        holds_half_the_block = bool(out[i].sum() >= 100)  # of its 200 pixels
        assert bool(labels[i]) == bool(len(moved[i])) == holds_half_the_block


def test_windows_off_the_fracture_can_be_placed_on_bone_instead_of_collimation_or_soft_tissue() -> None:
    # A radiograph in miniature: soft tissue (0.3), a bone band (0.7) and a flat white collimated border.
    size, crop, n = 256, 32, 32
    images = torch.full((n, 1, size, size), 0.3)
    images[:, :, :, 120:140] = 0.7
    images[:, :, :, 200:] = 1.0
    boxes = [torch.zeros(0, 4) for _ in range(n)]
    _, letterbox = preprocess(np.zeros((size, size), np.uint16), PreprocessSpec(size=size))

    def share_on_bone(on_bone: float) -> float:
        config = AugmentConfig(crop=crop, crop_on_bone=on_bone)
        out, _, labels = _crop(
            images, boxes, torch.zeros(n), [letterbox] * n, config, torch.Generator().manual_seed(0)
        )
        assert labels.tolist() == [0.0] * n
        return float(((out == 0.7).flatten(1).any(1)).float().mean())

    assert share_on_bone(1.0) == 1.0  # every window shows bone
    assert share_on_bone(0.0) < 0.5  # anywhere: mostly soft tissue and collimation


def test_the_peak_loss_makes_a_false_peak_on_a_normal_window_cost_more() -> None:
    targets = _targets([torch.zeros(0, 4)], 64, 64, 0.54, torch.device("cpu"))  # a normal window

    def loss(config: TrainConfig, peak: float | None) -> float:
        logits = torch.full((1, 1, 16, 16), -4.6)  # the heatmap's prior everywhere
        if peak is not None:
            logits[0, 0, 5, 7] = peak  # one false peak
        outputs = (logits, torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16), torch.zeros(1))
        return float(_losses(outputs, targets, torch.zeros(1), config))

    def extra_cost(config: TrainConfig) -> float:
        return loss(config, 3.0) - loss(config, None)

    without, with_peak = extra_cost(_with(TINY, peak_weight=0.0)), extra_cost(_with(TINY, peak_weight=1.0))
    # The BCE of a logit of 3 against "normal" is log(1 + e^3) ≈ 3.05, against ≈ 0.01 for the prior.
    expected = math.log1p(math.exp(3.0)) - math.log1p(math.exp(-4.6))
    assert with_peak - without == pytest.approx(expected, rel=1e-4)
