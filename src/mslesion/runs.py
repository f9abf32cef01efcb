"""The run folder: the unit of reproducibility.

  config.json     resolved TrainConfig
  split.json      which lesions (patient, lesion id, index) went to train / val / test
  checkpoint.pt   training state after the last finished epoch (atomic; used by --resume)
  model.pt        the finished model: weights, population batch-norm statistics, mean image, metadata
  history.json    loss / accuracy per epoch
  metrics.json    test metrics (written by evaluate)
  predictions.csv per test lesion: class probabilities and prediction
  train.log       the log of the run
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mslesion.atomic import atomic_path
from mslesion.config import TrainConfig, from_dict, to_dict
from mslesion.data.task import ClassMap
from mslesion.errors import InputError
from mslesion.model import LesionNet

CONFIG, SPLIT, CHECKPOINT, MODEL = "config.json", "split.json", "checkpoint.pt", "model.pt"
HISTORY, METRICS, PREDICTIONS, LOG = "history.json", "metrics.json", "predictions.csv", "train.log"


def save_torch(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True); a corrupt or foreign file is an InputError."""
    if not path.exists():
        raise InputError("checkpoint not found (did training finish?)", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"corrupt or foreign checkpoint ({first_line[:120]})", path) from None
    if not isinstance(obj, dict) or obj.get("format") != "mslesion":
        raise InputError("not an mslesion checkpoint", path)
    return obj


def model_metadata(model: LesionNet, cfg: TrainConfig, class_map: ClassMap, channels: tuple[str, ...]) -> dict:
    return {
        "format": "mslesion",
        "config": to_dict(cfg),
        "channels": list(channels),
        "class_names": list(class_map.names),
        "classes": class_map.spec(),
        "patch_size": model.patch_size,
        "in_channels": model.in_channels,
        "n_classes": model.n_classes,
    }


@dataclass
class TrainedModel:
    model: LesionNet
    config: TrainConfig
    class_map: ClassMap
    channels: tuple[str, ...]
    temperature: float = 1.0


def load_trained(run_dir: str | Path) -> TrainedModel:
    """The finished model of a run folder, in eval mode on the CPU."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("run folder not found", run_dir)
    obj = load_torch(run_dir / MODEL)
    try:
        model = LesionNet(obj["in_channels"], obj["n_classes"], obj["patch_size"])
        model.load_state_dict(obj["state_dict"])
        cfg = from_dict(TrainConfig, obj["config"])
        class_map = ClassMap.parse(obj["classes"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise InputError(f"model file does not match this version of mslesion ({exc.__class__.__name__})",
                         run_dir / MODEL) from None
    model.eval()
    return TrainedModel(model, cfg, class_map, tuple(obj["channels"]), float(obj.get("temperature", 1.0)))


def read_json(path: Path) -> Any:
    if not path.exists():
        raise InputError("file not found", path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg} at line {exc.lineno})", path) from None
