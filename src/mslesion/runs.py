"""The folder contracts: what every file of a run, ablation and prediction folder is called, and the one reader
and writer of each file that more than one stage reads.

Run folder (`mslesion train`; the unit of reproducibility):
  config.json       resolved TrainConfig, with format_version and mslesion_version
  split.json        which lesions (patient, lesion id, index) went to train / val / test
  checkpoint.pt     training state after the last finished epoch (atomic; used by --resume)
  model.pt          the finished model: weights, population batch-norm statistics, mean image, metadata
  history.json      loss / accuracy per epoch
  metrics.json      test metrics (written by evaluate)
  predictions.csv   per test lesion: class probabilities and prediction (written by evaluate)
  train.log         the log of the run

Ablation folder (`mslesion ablate`):
  ablation.json     resolved AblationConfig
  results.json · results.csv · results.md · ablation.png
  runs/<channels>/seed<S>/fold<F>/   one run folder per grid point
  runs-binary/<channels>/seed<S>/fold<F>/   a phenotype CV grid's binary twins (same folds)

Prediction folder (`mslesion predict` on NIfTI subjects): a BIDS derivative dataset (TASK = binary, phenotype or
custom: the model's class map; PREFIX = sub-<label>[_ses-<label>]):
  dataset_description.json        DatasetType derivative; GeneratedBy: mslesion, its version, each command line
  desc-TASK_dseg.tsv              the label map's legend: index, name, abbreviation, color
  desc-TASK_dseg.itksnap.txt · desc-TASK_dseg.lut    the same legend for ITK-SNAP and FSLeyes
  lesion_predictions.csv · lesion_predictions.json   every lesion of every subject, and what each column means
  summary.csv                     per subject: lesion count and volume per call, flag counts, PRLs
  predict_config.json             the resolved PredictConfig, the model (sha256), its classes and channels
  errors.csv                      with --continue-on-error: subjects that could not be predicted, and why
  sub-<label>/[ses-<label>/]anat/
    PREFIX_desc-TASK_dseg.nii.gz            lesion voxels = their call (the legend's values)
    PREFIX_label-<class>_probseg.nii.gz     one per class: each lesion's probability of that class
    PREFIX_desc-TASK_lesions.tsv · .json    that subject's lesions (BIDS TSV: n/a for empty) and its columns
    PREFIX_desc-TASK_summary.json           counts, volumes, the input files, notes, timings
Several predict runs with the same model and settings may add subjects; a subject already there is replaced only
with --overwrite. On a patch file (.h5) predict writes the top-level tables and predict_config.json only.

Format versions: a file without `format_version` is version 1 (mslesion 0.1.0). See CHANGELOG.md.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mslesion import __version__
from mslesion.atomic import atomic_path, write_json
from mslesion.config import AblationConfig, TrainConfig, canonical_channels, from_dict, to_dict
from mslesion.data.task import ClassMap, Task
from mslesion.errors import InputError
from mslesion.metrics import Predictions
from mslesion.model import LesionNet
from mslesion.transforms import augmentation_symmetries

RUN_FORMAT_VERSION = 2

# run folder
CONFIG, SPLIT, CHECKPOINT, MODEL = "config.json", "split.json", "checkpoint.pt", "model.pt"
HISTORY, METRICS, PREDICTIONS, LOG = "history.json", "metrics.json", "predictions.csv", "train.log"
# ablation folder
ABLATION_CONFIG, RESULTS_JSON, RESULTS_CSV = "ablation.json", "results.json", "results.csv"
RESULTS_MD, ABLATION_PNG, ABLATION_RUNS = "results.md", "ablation.png", "runs"
BINARY_TWIN_RUNS = "runs-binary"  # a phenotype CV grid's dedicated binary models, on the same folds
# demo folder (quick/ or full/): the cohort, one run folder per channel set, results.json and results.md
DEMO_COHORT = "cohort.h5"
# prediction folder
PREDICT_CONFIG, LESION_PREDICTIONS, PREDICTION_SUMMARY = "predict_config.json", "lesion_predictions.csv", "summary.csv"
LESION_PREDICTIONS_SIDECAR = "lesion_predictions.json"  # the columns of lesion_predictions.csv, described
PREDICTION_ERRORS = "errors.csv"  # with --continue-on-error: the subjects that failed, and why
DATASET_DESCRIPTION = "dataset_description.json"
BIDS_DATATYPE = "anat"

# The lock a writer holds on a run (or prediction) folder, and where a replacement (--overwrite) is built
RUN_LOCK = ".mslesion.lock"
ABLATION_LOCK = ".mslesion-results.lock"  # the ablation folder's own results (its runs have their own locks)

# Settings that may differ between a run folder and the command asking for it: they do not change results.
RESULT_NEUTRAL_SETTINGS = ("out", "device", "threads", "in_memory")  # the same weights whatever they are


def provenance() -> dict[str, Any]:
    """Recorded in every config and output this version writes."""
    return {"format_version": RUN_FORMAT_VERSION, "mslesion_version": __version__}


# --- run folders ------------------------------------------------------------------------------------------------


def write_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    write_json(run_dir / CONFIG, {**to_dict(cfg), **provenance()})


def changed_settings(saved: dict[str, Any], wanted: TrainConfig, also_neutral: tuple[str, ...] = ()) -> list[str]:
    """Settings of `wanted` that differ from a saved config; a setting newer than the file had its default then."""
    saved = {**to_dict(TrainConfig()), **saved}
    neutral = (*RESULT_NEUTRAL_SETTINGS, *also_neutral)
    return sorted(k for k, v in to_dict(wanted).items() if k not in neutral and saved.get(k) != v)


def staging_folder(out: Path) -> Path:
    """Where a replacement of `out` is built (beside it, on the same file system, so the swap is a rename)."""
    return Path(out).parent / f".{Path(out).name}.new"


def is_finished_run(run_dir: Path) -> bool:
    """Trained and evaluated: the stages that read a run folder need nothing more."""
    return all((Path(run_dir) / name).exists() for name in (MODEL, METRICS, PREDICTIONS))


def save_torch(obj: dict[str, Any], path: Path) -> None:
    # serialised in memory first: a full disk then fails as an OSError naming the file, not deep inside torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_torch(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True); a corrupt or foreign file is an InputError."""
    if not path.exists():
        raise InputError("checkpoint not found (did training finish?)", path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error below says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message is a page of advice to load unsafely: not ours to give
        raise InputError("holds objects other than tensors and plain data; refused (checkpoints are loaded with "
                         "weights_only=True, never executed)", path) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError, IndexError, KeyError, TypeError,
            AttributeError) as exc:  # the legacy (non-zip) unpickler fails on damaged opcodes with any of these
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"corrupt or foreign checkpoint ({first_line[:120]})", path) from None
    if not isinstance(obj, dict) or obj.get("format") != "mslesion":
        raise InputError("not an mslesion checkpoint", path)
    check_format_version(obj, path)
    return obj


def check_format_version(record: dict, path: Path) -> None:
    version = record.get("format_version", 1)  # files of 0.1.0 carry none
    if not isinstance(version, int) or version > RUN_FORMAT_VERSION:
        raise InputError(f"written in format {version} by mslesion {record.get('mslesion_version', '?')}; this "
                         f"version ({__version__}) reads formats up to {RUN_FORMAT_VERSION}", path)


def check_run_consistent(run_dir: Path, model: dict) -> None:
    """config.json and model.pt must describe the same run: a folder mixing two runs is refused, not evaluated."""
    if not (run_dir / CONFIG).exists():
        return
    config = read_json(run_dir / CONFIG)
    if not isinstance(config, dict):
        raise InputError("config.json is not a run configuration", run_dir / CONFIG)
    check_format_version(config, run_dir / CONFIG)
    saved = model.get("config", {})
    for key in ("channels", "classes", "data"):
        if key in config and key in saved and config[key] != saved[key]:
            raise InputError(f"config.json and model.pt disagree on {key} ({config[key]} vs {saved[key]}): the "
                             "folder mixes two runs", run_dir)
    if list(model.get("channels", [])) != list(saved.get("channels", model.get("channels", []))):
        raise InputError("model.pt's channels disagree with its own configuration", run_dir / MODEL)


def model_metadata(model: LesionNet, cfg: TrainConfig, class_map: ClassMap, channels: tuple[str, ...],
                   synth_version: int | None = None) -> dict:
    return {
        "synth_version": synth_version,
        "format": "mslesion",
        **provenance(),
        "config": to_dict(cfg),
        "channels": list(channels),
        "class_names": list(class_map.names),
        "classes": class_map.spec(),
        "patch_size": model.patch_size,
        "in_channels": model.in_channels,
        "n_classes": model.n_classes,
    }


# --- built-in starter models ------------------------------------------------------------------------------------

BUILTIN_PREFIX = "builtin:"
BUILTIN_INDEX = "index.json"


def builtin_root() -> Path:
    """The starter models shipped inside the package (mslesion/builtin/<name>/model.pt and index.json)."""
    return Path(__file__).resolve().parent / "builtin"


def builtin_models() -> list[dict]:
    """The model cards of the shipped starter models (name, channels, task, training data, test figures)."""
    index = builtin_root() / BUILTIN_INDEX
    return json.loads(index.read_text())["models"] if index.exists() else []


def model_folder(spec: str | Path) -> Path:
    """The folder of a run given as a path or as builtin:<name>."""
    text = str(spec)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(spec)
    name = text[len(BUILTIN_PREFIX):]
    names = [m["name"] for m in builtin_models()]
    if name not in names:
        raise InputError(f"no built-in model {name!r}; available: {', '.join(names) or 'none'} (mslesion models)")
    return builtin_root() / name


def file_sha256(path: Path) -> str:

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_provenance(spec: str | Path) -> dict[str, Any]:
    """Which model made an output: the built-in's name and version, or the run folder and model.pt's sha256."""
    folder = model_folder(spec)
    record: dict[str, Any] = {"model": str(spec), "model_sha256": file_sha256(folder / MODEL)}
    if str(spec).startswith(BUILTIN_PREFIX):
        card = next(m for m in builtin_models() if m["name"] == folder.name)
        record["builtin_version"] = card.get("version")
    return record


@dataclass
class TrainedModel:
    model: LesionNet
    config: TrainConfig
    class_map: ClassMap
    channels: tuple[str, ...]
    temperature: float = 1.0
    ood: dict | None = None  # mslesion.ood statistics; None for models trained before version 0.4
    synth_version: int | None = None  # the synthetic generator version of the training data, if synthetic
    activation_ranges: list | None = None  # int8 inference's calibration (mslesion.quantized); None before 0.4.7

    def tta_symmetries(self) -> int:
        """The symmetries test-time augmentation averages over: the group the model was trained to be invariant
        to (48 cube symmetries for --augment random/full, 8 axis flips for flips). Rotations a flips model never
        saw would only add error; a model trained without augmentation has no group, and --tta is refused."""
        symmetries = augmentation_symmetries(self.config.augment)
        if symmetries == 1:
            raise InputError("--tta: the model was trained with --augment none, so it learned no symmetry to average "
                             "over; leave out --tta")
        return symmetries


def load_trained(run_dir: str | Path) -> TrainedModel:
    """The finished model of a run folder (or builtin:<name>), in eval mode on the CPU."""
    run_dir = model_folder(run_dir)
    if not run_dir.is_dir():
        raise InputError("run folder not found", run_dir)
    obj = load_torch(run_dir / MODEL)
    check_run_consistent(run_dir, obj)
    try:
        cfg = from_dict(TrainConfig, obj["config"])
        model = LesionNet(obj["in_channels"], obj["n_classes"], obj["patch_size"], arch=cfg.arch)
        model.load_state_dict(obj["state_dict"])
        class_map = ClassMap.parse(obj["classes"])
    except InputError as exc:  # a setting stored in the file, not one the user gave
        raise InputError(f"the run configuration stored in it is invalid ({exc.problem})", run_dir / MODEL) from None
    except (KeyError, RuntimeError, TypeError) as exc:
        raise InputError(f"model file does not match this version of mslesion ({exc.__class__.__name__})",
                         run_dir / MODEL) from None
    model.eval()
    return TrainedModel(model, cfg, class_map, tuple(obj["channels"]), float(obj.get("temperature", 1.0)),
                        obj.get("ood"), obj.get("synth_version"), obj.get("activation_ranges"))


def read_json(path: Path) -> Any:
    if not path.exists():
        raise InputError("file not found", path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg} at line {exc.lineno})", path) from None


# --- predictions.csv of a run: written by evaluate, read by ablate and report ------------------------------------


@dataclass
class RunPredictions:
    """The test predictions of a run, one row per lesion."""

    index: np.ndarray  # lesion index into the run's task
    probabilities: np.ndarray  # [N, K]
    patients: np.ndarray
    targets: np.ndarray  # true class index
    names: tuple[str, ...]  # class names
    labels: np.ndarray | None = None  # Table 1 codes
    volumes: np.ndarray | None = None  # mm³, where the run's data knew them
    lesions: np.ndarray | None = None  # lesion id within its patient (with the patient: the lesion's identity)

    def predictions(self) -> Predictions:
        """The rows as the metrics read them: targets, probabilities and patients."""
        return Predictions(self.targets, self.probabilities, self.patients)

    def lesion_keys(self) -> list[tuple[str, int]]:
        """(patient, lesion id) per row: a lesion's identity in any run that tested its patient."""
        return [(str(p), int(lesion)) for p, lesion in zip(self.patients, self.lesions, strict=True)]


def write_predictions(path: Path, task: Task, indices: np.ndarray, probabilities: np.ndarray) -> None:
    """One row per lesion: its class probabilities, the predicted class, then the derived whole-subject columns
    (p_unclassified, p_remyelinating, p_demyelinating; ClassMap.derived_probabilities) after `predicted`."""
    names = task.class_map.names
    derived = task.class_map.derived_probabilities(probabilities)
    derived = {k: v for k, v in derived.items() if k[2:] not in names}  # a class's own column is not repeated
    if task.volumes is not None:
        derived["volume_mm3"] = task.volumes[indices]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "patient", "lesion", "label", "target", *(f"p_{n}" for n in names), "predicted",
                         *derived])
        for row, i in enumerate(indices):
            writer.writerow([int(i), task.patients[i], int(task.lesions[i]), int(task.labels[i]),
                             names[task.targets[i]], *(f"{p:.6f}" for p in probabilities[row]),
                             names[int(probabilities[row].argmax())], *(f"{v[row]:.6f}" for v in derived.values())])


def read_predictions(path: Path) -> RunPredictions:
    if not path.exists():
        raise InputError("no predictions: evaluate the run first (mslesion evaluate), or rerun mslesion ablate", path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "index" not in rows[0]:
        raise InputError("not the predictions.csv of a run folder (no 'index' column)", path)
    header = list(rows[0].keys()) if rows else []
    before = header[:header.index("predicted")] if "predicted" in header else header  # derived columns follow it
    names = tuple(k[2:] for k in before if k and k.startswith("p_"))
    try:
        return RunPredictions(
            index=np.asarray([int(r["index"]) for r in rows], dtype=np.int64),
            probabilities=np.asarray([[float(r[f"p_{n}"]) for n in names] for r in rows], dtype=float),
            patients=np.asarray([r["patient"] for r in rows], dtype=object),
            targets=np.asarray([names.index(r["target"]) for r in rows], dtype=np.int64),
            names=names,
            labels=np.asarray([int(r["label"]) for r in rows], dtype=np.int64),
            volumes=np.asarray([float(r["volume_mm3"]) for r in rows]) if "volume_mm3" in header else None,
            lesions=np.asarray([int(r["lesion"]) for r in rows], dtype=np.int64),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"malformed predictions table ({exc.__class__.__name__}: {exc})", path) from None


# --- ablation folders ---------------------------------------------------------------------------------------------


def run_folder(out: Path, channel_set: str, seed: int, fold: int, runs: str = "") -> Path:
    """A grid run's folder; `runs` names another family of runs (BINARY_TWIN_RUNS: a phenotype grid's twins)."""
    return (Path(out) / (runs or ABLATION_RUNS) / canonical_channels(channel_set).replace(",", "+") / f"seed{seed}"
            / f"fold{fold}")


def is_ablation(folder: Path) -> bool:
    return (Path(folder) / ABLATION_CONFIG).exists()


def write_ablation_config(folder: Path, cfg: AblationConfig) -> None:
    write_json(Path(folder) / ABLATION_CONFIG, {**to_dict(cfg), **provenance()})


def load_ablation_config(folder: Path) -> AblationConfig:
    return from_dict(AblationConfig, read_json(Path(folder) / ABLATION_CONFIG))


# --- prediction folders -------------------------------------------------------------------------------------------


# Settings that may differ between the predict runs adding subjects to one prediction folder: same results.
PREDICTION_NEUTRAL_SETTINGS = ("out", "device", "threads", "batch_size")


def prediction_record(run_dir: str | Path, config: dict, trained: TrainedModel,
                      precision_used: str = "") -> dict:
    """predict_config.json: the settings, the model (by sha256, or the built-in's name and version), the precision
    actually used, the synthetic generator version of the training data, and what the model predicts."""
    return {**provenance(), "config": config, **model_provenance(run_dir), "synth_version": trained.synth_version,
            "precision_used": precision_used, "channels": list(trained.channels),
            "classes": trained.class_map.spec(), "temperature": trained.temperature,
            "patch_size": trained.model.patch_size,
            **({"tta_symmetries": trained.tta_symmetries()} if config.get("tta") else {})}


def changed_prediction_settings(saved: dict, wanted: dict) -> list[str]:
    """What differs between a prediction folder's record and a new run's (settings that change results only)."""
    changed = [k for k in ("model_sha256", "channels", "classes", "temperature", "patch_size")
               if saved.get(k) != wanted[k]]
    old, new = saved.get("config", {}), wanted["config"]
    return changed + sorted(k for k in new if k not in PREDICTION_NEUTRAL_SETTINGS and old.get(k) != new[k])


def is_prediction_folder(folder: Path) -> bool:
    return (Path(folder) / PREDICT_CONFIG).exists()


def subject_folder(subject: str, session: str = "") -> Path:
    """The folder one predict writes per subject (and session), relative to the prediction folder: the unit that
    --overwrite replaces. `subject` and `session` are BIDS labels (without sub-/ses-)."""
    return Path(f"sub-{subject}") / (f"ses-{session}" if session else "")


def subject_prefix(subject: str, session: str = "") -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def anat_folder(subject: str, session: str = "") -> Path:
    return subject_folder(subject, session) / BIDS_DATATYPE


def label_map_name(prefix: str, task: str) -> str:
    return f"{prefix}_desc-{task}_dseg.nii.gz"


def probability_map_name(prefix: str, label: str) -> str:
    return f"{prefix}_label-{label}_probseg.nii.gz"


def lesion_table_name(prefix: str, task: str) -> str:
    return f"{prefix}_desc-{task}_lesions.tsv"


def lesion_table_sidecar_name(prefix: str, task: str) -> str:
    return f"{prefix}_desc-{task}_lesions.json"


def subject_summary_name(prefix: str, task: str) -> str:
    return f"{prefix}_desc-{task}_summary.json"


def legend_name(task: str) -> str:
    return f"desc-{task}_dseg.tsv"


def itksnap_legend_name(task: str) -> str:
    return f"desc-{task}_dseg.itksnap.txt"


def fsleyes_legend_name(task: str) -> str:
    return f"desc-{task}_dseg.lut"


def subject_summaries(folder: Path) -> list[Path]:
    """The per-subject summaries of a prediction folder, in subject (then session) order."""
    return sorted(Path(folder).glob(f"sub-*/**/{BIDS_DATATYPE}/sub-*_summary.json"))
