"""How far predict's probabilities move from fp32: with `--precision auto` (what predict does by default), with
bf16 (what auto picks on machines where bf16 is faster), with int8 (`--precision int8`, mslesion.quantized) and
with the exported ONNX model under onnxruntime.

    PYTHONPATH=src python benchmarks/precision_drift.py RUN [--lesions 200] [--tta] [--json drift.json]

The lesions are the first N of the run's test split (0: all of it), from the run's own patch file, classified as
predict does (the run's temperature; `--tta` averages over the model's symmetry group). Prints the largest, the
99th percentile and the mean |p − p_fp32| over every class probability, the decisions (most probable class)
that differ from fp32's, the test accuracy and ROC AUC in each precision, and seconds per lesion. int8 needs a
model trained by 0.4.7 or later (its activation ranges); for an older one it is left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mslesion.config import ExportConfig
from mslesion.data.task import load_task
from mslesion.inference import predict_probabilities
from mslesion.metrics import classification_metrics
from mslesion.precision import resolve
from mslesion.predict import int8_model
from mslesion.runs import SPLIT, load_trained, read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--lesions", type=int, default=200,
                        help="test lesions used, 0 = all (bf16 is slow where emulated)")
    parser.add_argument("--tta", action="store_true", help="average over the model's symmetry group, as predict --tta")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    trained = load_trained(args.run)
    test = [row["index"] for row in read_json(args.run / SPLIT)["test"]][: args.lesions or None]
    task = load_task(trained.config.data, trained.channels, trained.config.classes)
    images, targets = task.images[np.asarray(test)], task.targets[np.asarray(test)]
    symmetries = trained.tta_symmetries() if args.tta else 1

    results: dict = {"run": str(args.run), "lesions": len(images), "tta_symmetries": symmetries,
                     "torch": torch.__version__, "auto_means": resolve(torch.device("cpu"), "auto", "inference")}
    probabilities = {}
    for precision in ("fp32", "auto", "bf16", "int8"):
        model, autocast = trained.model, precision
        if precision == "int8":
            if not trained.activation_ranges:
                continue
            model, autocast = int8_model(trained), "fp32"  # predict's own construction; integers, no autocast
        started = time.perf_counter()
        probabilities[precision], _ = predict_probabilities(model, images, batch_size=8, tta=args.tta,
                                                            temperature=trained.temperature, precision=autocast,
                                                            symmetries=symmetries)
        results[f"{precision}_s_per_lesion"] = round((time.perf_counter() - started) / len(images), 4)
        metrics = classification_metrics(targets, probabilities[precision], trained.class_map.names)
        results[f"{precision}_accuracy"], results[f"{precision}_roc_auc"] = metrics["accuracy"], metrics["roc_auc"]
    probabilities["onnx"] = None if args.tta else onnx_probabilities(args.run, images)
    for name in ("auto", "bf16", "int8", "onnx"):
        if probabilities.get(name) is None:
            continue
        difference = np.abs(probabilities[name] - probabilities["fp32"])
        results[f"{name}_max_abs_difference"] = float(difference.max())
        results[f"{name}_p99_abs_difference"] = float(np.percentile(difference, 99))
        results[f"{name}_mean_abs_difference"] = float(difference.mean())
        results[f"{name}_changed_decisions"] = int((probabilities[name].argmax(1)
                                                    != probabilities["fp32"].argmax(1)).sum())
    json.dump(results, sys.stdout, indent=2)
    print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def onnx_probabilities(run: Path, images: np.ndarray) -> np.ndarray | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    from mslesion.export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(ExportConfig(run=str(run), out=str(path)))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"patches": images})[0]


if __name__ == "__main__":
    main()
