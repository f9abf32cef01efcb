"""ONNX export (`mslesion export`): a run's whole inference path in one graph, for use without this package.

The graph takes patches float32 [N, C, p, p, p] (N free), cut and normalised as `extract` cuts them, and returns
class probabilities [N, K]: centring by the mean training image and per-channel scaling (both inside
LesionNet.forward), the net, and the softmax of the logits divided by the run's temperature (calibration.py). It
is what `predict --precision fp32` computes without test-time augmentation, to float rounding (a test holds it
to 1e-4).

The fused training block (fast_layers.conv_bn_relu_pool) is a custom autograd function no exporter can trace; its
plain twin (ConvBlock with fused=False) has the same parameters and computes the same values, so the copy that is
exported runs the plain chain Conv3d → BatchNorm3d → ReLU → MaxPool3d in the contiguous layout.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mslesion import __version__
from mslesion.atomic import atomic_path, check_file_output
from mslesion.config import ExportConfig
from mslesion.data.intensity import NORMALISATION
from mslesion.errors import InputError
from mslesion.inference import predict_probabilities
from mslesion.model import ConvBlock, LesionNet
from mslesion.runs import TrainedModel, load_trained

INPUT_NAME, OUTPUT_NAME = "patches", "probabilities"
BATCH_AXES = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}  # any number of lesions per call
# Opset 17 (ONNX 1.12, 2022): read by every onnxruntime of the last years; the graph needs nothing newer.
OPSET = 17
# The exported graph must reproduce the PyTorch probabilities to this (float32 rounding, another conv algorithm).
TOLERANCE = 1e-4
INSTALL_HINT = "pip install 'mslesion[onnx]' (or: pip install onnx onnxruntime)"


class InferenceGraph(nn.Module):
    """softmax(net(x) / T): the calibrated probabilities that predict reports, as one module."""

    def __init__(self, net: LesionNet, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(patches) / self.temperature, dim=1)


def plain_twin(model: LesionNet) -> LesionNet:
    """A copy of the net with every fused block running its plain reference chain, in the contiguous layout."""
    twin = copy.deepcopy(model).cpu().float().eval()
    twin.channels_last(False)
    for block in twin.modules():
        if isinstance(block, ConvBlock):
            block.fused = False
    return twin


def metadata(trained: TrainedModel, run: Path) -> dict[str, str]:
    """The model's metadata_props: what a user needs to feed it and read its output (ONNX stores strings)."""
    model = trained.model
    return {
        "mslesion_version": __version__,
        "channels": ",".join(trained.channels),
        "class_names": ",".join(trained.class_map.names),
        "classes": trained.class_map.spec(),
        "patch_size": str(model.patch_size),
        "arch": model.arch,
        "temperature": repr(float(trained.temperature)),
        "input": f"{INPUT_NAME}: float32 [N, {len(trained.channels)}, {model.patch_size}, {model.patch_size}, "
                 f"{model.patch_size}], channels in the order of 'channels', cut as mslesion extract cuts them",
        "output": f"{OUTPUT_NAME}: float32 [N, {len(trained.class_map.names)}], in the order of 'class_names'; "
                  "temperature already applied",
        "normalisation": json.dumps(NORMALISATION),
        "source_run": str(run),
    }


def import_onnx():
    """The optional packages, or one line saying how to get them."""
    try:
        import onnx
    except ImportError:
        raise InputError(f"ONNX export needs the optional package onnx: {INSTALL_HINT}") from None
    return onnx


def export_onnx(cfg: ExportConfig, overwrite: bool = False) -> dict:
    """Write the ONNX model of a run; returns what was written and how closely onnxruntime matched PyTorch."""
    onnx = import_onnx()
    out = Path(cfg.out)
    check_file_output(out, overwrite)
    trained = load_trained(cfg.run)
    graph = InferenceGraph(plain_twin(trained.model), trained.temperature).eval()
    p, channels = trained.model.patch_size, len(trained.channels)
    example = torch.zeros(2, channels, p, p, p)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.13 calls the TorchScript exporter 'legacy': the torch.export one needs onnxscript as well, and this
        # small static graph gains nothing from it (torch is pinned, so the exporter cannot vanish under us)
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=BATCH_AXES)
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name, model.producer_version = "mslesion", __version__
    model.doc_string = f"MS lesion classifier exported from {cfg.run} by mslesion {__version__}"
    for key, value in metadata(trained, Path(cfg.run)).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    difference = verify(data, trained)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return {"out": str(out), "bytes": len(data), "channels": trained.channels, "classes": trained.class_map.names,
            "patch_size": p, "temperature": trained.temperature, "max_difference": difference}


def verify(data: bytes, trained: TrainedModel, n: int = 5, seed: int = 0) -> float | None:
    """Largest |p_onnx − p_torch| on a few random patches (fp32, no augmentation); None without onnxruntime.

    An export that does not reproduce the net is a bug, not an input problem: it raises, and nothing is written."""
    try:
        import onnxruntime
    except ImportError:
        return None
    p = trained.model.patch_size
    patches = np.random.default_rng(seed).normal(0, 1, (n, len(trained.channels), p, p, p)).astype(np.float32)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    exported = session.run([OUTPUT_NAME], {INPUT_NAME: patches})[0]
    expected, _ = predict_probabilities(trained.model, patches, temperature=trained.temperature, precision="fp32")
    difference = float(np.abs(exported - expected).max())
    if not difference <= TOLERANCE:
        raise RuntimeError(f"the exported graph differs from the PyTorch model by {difference:.2e} (> {TOLERANCE})")
    return difference
