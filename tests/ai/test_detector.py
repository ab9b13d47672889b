"""The detector: ONNX export against torch, decoding, and the onnxruntime runner's contract checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radstack.ai.detector import STRIDE, CenterNet, DetectorConfig, ImageScore, export_onnx
from radstack.ai.preprocess import PreprocessSpec, preprocess
from radstack.ai.runtime import InvalidModel, OnnxDetector
from radstack.ai.train import predict
from tests.ai.tiny import tiny_dataset

SPEC = PreprocessSpec(size=96)
CONFIG = DetectorConfig(widths=(8, 16, 24, 32, 48), blocks=(0, 1, 1, 1, 1), neck_width=16, max_detections=8)


def _model(config: DetectorConfig = CONFIG) -> CenterNet:
    """A randomly initialised model whose batch-norm statistics are not the identity (so folding them into
    the convolutions on export is exercised), and whose heatmap varies strongly: a fresh model's heatmap is
    nearly flat, and peaks a float rounding apart would make the top-K order arbitrary."""
    torch.manual_seed(0)
    model = CenterNet(config)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    with torch.no_grad():
        model.head_out.weight.mul_(30.0)
        model.calibration.copy_(torch.tensor([1.5, -0.3]))  # Platt scaling is part of the graph
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[CenterNet, Path]:
    model = _model()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, SPEC, path)
    return model, path


def test_onnxruntime_matches_torch_within_1e_4(exported: tuple[CenterNet, Path]) -> None:
    model, path = exported
    samples = tiny_dataset(3, seed=5, size=120)
    batch = np.stack([preprocess(s.image, SPEC)[0] for s in samples])[:, None]
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(batch))]
    got = OnnxDetector(path, threads=1).run(batch)
    for name, a, b in zip(("boxes", "scores", "probability"), got, expected, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=name)
    assert got[0].shape == (3, CONFIG.max_detections, 4)


def test_the_runner_reads_its_spec_from_the_file_and_maps_boxes_to_original_pixels(
    exported: tuple[CenterNet, Path],
) -> None:
    model, path = exported
    detector = OnnxDetector(path.read_bytes(), threads=1)
    assert detector.spec == SPEC
    assert detector.description["detector"]["max_detections"] == CONFIG.max_detections
    samples = tiny_dataset(2, seed=6, size=192)  # twice the input size: boxes come back ×2
    from_onnx = detector.predict_batch([s.image for s in samples])
    from_torch = predict(model, samples, SPEC, min_score=0.0)
    for a, b in zip(from_onnx, from_torch, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        assert a.boxes.max() > SPEC.size  # in the 192-pixel original, not the 96-pixel input


def test_decode_turns_a_planted_peak_into_its_box() -> None:
    model = _model(DetectorConfig(max_detections=2))
    model.calibration.copy_(torch.tensor([1.0, 0.0]))
    size = 32
    logits = torch.full((1, 1, size, size), -10.0)
    logits[0, 0, 10, 20] = 3.0  # the peak, at cell (x=20, y=10)
    log_size = torch.zeros(1, 2, size, size)
    log_size[0, :, 10, 20] = torch.log(torch.tensor([6.0, 2.0]))  # 6 × 2 cells
    offset = torch.zeros(1, 2, size, size)
    offset[0, :, 10, 20] = torch.tensor([0.5, 0.25])
    boxes, scores, probability = model.decode(logits, log_size, offset, torch.tensor([-5.0]))
    centre_x, centre_y = (20 + 0.5) * STRIDE, (10 + 0.25) * STRIDE
    expected = [centre_x - 3 * STRIDE, centre_y - STRIDE, centre_x + 3 * STRIDE, centre_y + STRIDE]
    np.testing.assert_allclose(boxes[0, 0].numpy(), expected, rtol=1e-6)
    assert scores[0, 0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert scores[0, 1] == pytest.approx(torch.sigmoid(torch.tensor(-10.0)).item())  # any other cell
    assert probability[0] == pytest.approx(scores[0, 0].item())  # the default image score is the peak
    model.calibration.copy_(torch.tensor([2.0, -1.0]))  # Platt scaling maps every score's logit alike
    _, calibrated, probability = model.decode(logits, log_size, offset, torch.tensor([-5.0]))
    assert calibrated[0, 0] == pytest.approx(torch.sigmoid(torch.tensor(2.0 * 3.0 - 1.0)).item())
    assert probability[0] == pytest.approx(calibrated[0, 0].item())
    model.calibration.copy_(torch.tensor([1.0, 0.0]))
    model.config = DetectorConfig(image_score=ImageScore.GLOBAL)
    assert model.decode(logits, log_size, offset, torch.tensor([-5.0]))[2][0] == pytest.approx(
        torch.sigmoid(torch.tensor(-5.0)).item()
    )


def test_a_corrupt_or_mismatched_model_is_refused(exported: tuple[CenterNet, Path]) -> None:
    _, path = exported
    with pytest.raises(InvalidModel, match="not a loadable ONNX model"):
        OnnxDetector(b"this is not onnx")
    with pytest.raises(InvalidModel, match=r"input shape .* is not \(batch, 1, 128, 128\)"):
        OnnxDetector(path, spec=PreprocessSpec(size=128))


def test_detector_config_round_trips_and_refuses_bad_shapes() -> None:
    assert DetectorConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="five stages"):
        DetectorConfig(widths=(8, 16))
    with pytest.raises(ValueError):
        DetectorConfig(image_score="median")  # type: ignore[arg-type]
