"""Tiny models made in the test (nothing downloaded): an ONNX export of a small conv net, its contract,
a MONAI bundle of a small UNet, and evaluation metrics in the registry's schema."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from typing import Any

import torch
from torch import nn

__all__ = [
    "BUNDLE_UNET",
    "CONTRACT",
    "bundle_metadata",
    "bundle_zip",
    "metrics",
    "tiny_onnx",
    "unet_state_dict",
    "unsorted_onnx",
]

#: The contract of :func:`tiny_onnx`: a dynamic batch of 1-channel 32² images in, a 2-channel heatmap
#: and a probability out.
CONTRACT: dict[str, Any] = {
    "inputs": [{"name": "image", "shape": [None, 1, 32, 32], "dtype": "float32"}],
    "outputs": [
        {"name": "heatmap", "shape": ["batch", 2, 32, 32], "dtype": "float32"},
        {"name": "probability", "shape": ["batch", 1], "dtype": "float32"},
    ],
    "preprocessing": {"size": 32, "window": "auto", "scale": [0, 1]},
}


class TinyDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmap = self.features(image)
        probability = torch.sigmoid(heatmap.amax(dim=(2, 3))[:, :1])
        return heatmap, probability


def tiny_onnx(seed: int = 0) -> bytes:
    """A small conv net exported with ``torch.onnx.export`` (its weights depend on ``seed``)."""
    torch.manual_seed(seed)
    net = TinyDetector().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, 32, 32),),
            buffer,  # type: ignore[arg-type]  # a binary file works as well as a path
            input_names=["image"],
            output_names=["heatmap", "probability"],
            dynamic_axes={"image": {0: "batch"}, "heatmap": {0: "batch"}, "probability": {0: "batch"}},
            dynamo=False,
        )
    return buffer.getvalue()


def unsorted_onnx() -> bytes:
    """A well-formed ONNX file whose graph ``onnx.checker`` refuses (a node reads a tensor nothing makes)."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 32, 32])
    out = helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [1, 1, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["heatmap"])], "broken", [image], [out])
    data: bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return data


#: The network_def of the test bundle: MONAI's UNet, small.
BUNDLE_UNET: dict[str, Any] = {
    "_target_": "UNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def unet_state_dict() -> bytes:
    from monai.networks.nets.unet import UNet

    torch.manual_seed(0)
    kwargs = {k: v for k, v in BUNDLE_UNET.items() if not k.startswith("_")}
    buffer = io.BytesIO()
    torch.save(UNet(**kwargs).state_dict(), buffer)
    return buffer.getvalue()


def bundle_metadata(out_channels: int = 2) -> dict[str, Any]:
    """``configs/metadata.json`` of the test bundle, declaring ``out_channels`` output channels."""
    return {
        "version": "0.1.0",
        "name": "tiny_segmentation",
        "description": "A tiny 2D segmentation network for tests.",
        "intended_use": "Testing the registry only; not for diagnosis.",
        "data_source": "synthetic squares",
        "data_type": "numpy",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": ["16*n", "16*n"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": out_channels,
                    "spatial_shape": ["16*n", "16*n"],
                    "dtype": "float32",
                    "channel_def": {"0": "background", "1": "square"},
                }
            },
        },
    }


def bundle_zip(metadata: dict[str, Any] | None = None, *, weights: bytes | None = None) -> bytes:
    """A MONAI bundle as a zip with one top folder (as bundles are shipped)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny_segmentation/configs/metadata.json", json.dumps(metadata or bundle_metadata()))
        archive.writestr("tiny_segmentation/configs/inference.json", json.dumps({"network_def": BUNDLE_UNET}))
        archive.writestr(
            "tiny_segmentation/models/model.pt", weights if weights is not None else unet_state_dict()
        )
        archive.writestr("tiny_segmentation/docs/README.md", "# Tiny segmentation\n")
    return buffer.getvalue()


def metrics() -> dict[str, Any]:
    """Evaluation metrics in the registry's schema (:mod:`radstack.ai.card`), as the evaluation writes them."""
    fpr = [0.0, 0.05, 0.1, 0.2, 0.4, 1.0]
    tpr = [0.0, 0.6, 0.8, 0.9, 0.97, 1.0]
    return {
        "n_images": 200,
        "n_fracture": 100,
        "n_normal": 100,
        "auroc": 0.93,
        "auroc_ci": [0.9, 0.96],
        "roc": {"fpr": fpr, "tpr": tpr, "thresholds": [None, 0.9, 0.7, 0.5, 0.3, 0.0]},
        "operating_points": {
            "suspicious": {"threshold": 0.3, "sensitivity": 0.97, "specificity": 0.6, "box_recall": 0.9},
            "definite": {"threshold": 0.7, "sensitivity": 0.8, "specificity": 0.9, "box_recall": 0.75},
        },
        "box_recall_iou": 0.3,
        "froc": {
            "fp_per_image": [0.0, 0.25, 0.5, 1.0, 2.0, 3.0],
            "sensitivity": [0.0, 0.7, 0.8, 0.88, 0.93, 0.95],
            "thresholds": [0.9, 0.7, 0.5, 0.3, 0.1, 0.05],
            "at": {"0.5": 0.8, "1": 0.88, "2": 0.93},
            "n_boxes": 120,
            "n_images": 200,
        },
        "calibration": {
            "bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0],
            "counts": [80, 20, 0, 100],
            "mean_predicted": [0.1, 0.4, None, 0.9],
            "observed": [0.05, 0.45, None, 0.92],
            "ece": 0.04,
            "brier": 0.06,
        },
        "per_type": {"transverse": {"n": 40, "auroc": 0.97}, "buckle": {"n": 20, "auroc": 0.85}},
    }
