"""Per-lesion predictions on new subjects (`mslesion predict`): NIfTI in, CSV + label/probability maps out.

Lesions are found and cut exactly as `extract` does (`extract_subject`), with the run's channels and patch
size. Everything is written into a temporary folder beside `--out` and moved into place at the end, so an
error on the tenth subject leaves no half-written output.

Output folder (its contract: `mslesion.runs`):
  lesion_predictions.csv               every lesion of every subject
  summary.csv                          per subject: lesion count and volume per predicted class, flag counts
  predict_config.json                  the resolved PredictConfig, the run's classes and channels
  <subject>/lesions.csv                that subject's lesions
  <subject>/<subject>_pred-label_dseg.nii.gz   lesion voxels = predicted class (1, 2, ...; K+1 = uncertain)
  <subject>/<subject>_pred-prob.nii.gz         one volume per class: each lesion's class probability
  <subject>/summary.json               counts, volumes, the label map's legend, timings
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from mslesion.atomic import check_folder_output, csv_text, locked_folder, staged_folder
from mslesion.config import PredictConfig, to_dict
from mslesion.data.extract import FLAGS, extract_subject
from mslesion.data.nifti import to_original_orientation
from mslesion.data.subjects import Subject
from mslesion.errors import InputError
from mslesion.progress import progress_bar
from mslesion.runs import (
    LESION_PREDICTIONS,
    PREDICT_CONFIG,
    PREDICTION_ERRORS,
    PREDICTION_SUMMARY,
    RUN_LOCK,
    SUBJECT_LESIONS,
    SUBJECT_SUMMARY,
    TrainedModel,
    label_map_name,
    load_trained,
    probability_map_name,
    provenance,
)
from mslesion.runtime import parse_device, set_threads

UNCERTAIN = "uncertain"


def classify(trained: TrainedModel, images, cfg: PredictConfig) -> tuple[np.ndarray, np.ndarray | None]:
    from mslesion.inference import predict_probabilities

    return predict_probabilities(trained.model, images, cfg.batch_size, parse_device(cfg.device), tta=cfg.tta,
                                 temperature=trained.temperature, precision=cfg.precision)


def decisions(probabilities: np.ndarray, names: tuple[str, ...], abstain: float) -> tuple[np.ndarray, list[str]]:
    """Predicted class index per lesion (-1 = uncertain) and its name."""
    index = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, np.int64)
    if abstain > 0 and len(probabilities):
        index = np.where(probabilities.max(axis=1) < abstain, -1, index)
    return index, [UNCERTAIN if i < 0 else names[i] for i in index]


def prediction_rows(base: list[dict], probabilities: np.ndarray, spread: np.ndarray | None,
                    names: tuple[str, ...], predicted: list[str]) -> list[dict]:
    rows = []
    for n, record in enumerate(base):
        row = dict(record)
        for k, name in enumerate(names):
            row[f"p_{name}"] = round(float(probabilities[n, k]), 5)
            if spread is not None:
                row[f"spread_{name}"] = round(float(spread[n, k]), 5)
        row["predicted"] = predicted[n]
        rows.append(row)
    return rows


def columns(base: tuple[str, ...], names: tuple[str, ...], tta: bool) -> tuple[str, ...]:
    probability = tuple(f"p_{n}" for n in names)
    spread = tuple(f"spread_{n}" for n in names) if tta else ()
    return (*base, *probability, *spread, "predicted")


def subject_summary(subject: str, rows: list[dict], names: tuple[str, ...], with_volume: bool) -> dict:
    """Lesions per predicted class (and their volume); with volumes (NIfTI input), lesions per flag."""
    summary: dict = {"subject": subject, "lesions": len(rows)}
    for name in (*names, UNCERTAIN):
        chosen = [r for r in rows if r["predicted"] == name]
        summary[f"n_{name}"] = len(chosen)
        if with_volume:
            summary[f"volume_{name}_mm3"] = round(sum(r["volume_mm3"] for r in chosen), 3)
    if with_volume:
        for flag in FLAGS:
            summary[f"n_{flag}"] = sum(flag in r["flags"].split(";") for r in rows)
    return summary


def write_maps(folder: Path, lesions, index: np.ndarray, probabilities: np.ndarray, n_classes: int) -> None:
    """Label map (class index + 1; K + 1 = uncertain) and per-class probability map on the input grid."""
    import nibabel as nib

    size = int(lesions.lesion_map.max()) + 1
    label_lut = np.zeros(size, np.uint8)
    label_lut[lesions.map_ids] = np.where(index < 0, n_classes + 1, index + 1)
    prob_lut = np.zeros((size, n_classes), np.float32)
    prob_lut[lesions.map_ids] = probabilities
    label_img = to_original_orientation(label_lut[lesions.lesion_map], lesions.grid)
    prob_img = to_original_orientation(prob_lut[lesions.lesion_map], lesions.grid)
    nib.save(label_img, folder / label_map_name(lesions.subject))
    nib.save(prob_img, folder / probability_map_name(lesions.subject))


def predict_subject(trained: TrainedModel, subject: Subject, cfg: PredictConfig, folder: Path) -> tuple[list, dict]:
    names = trained.class_map.names
    started = time.perf_counter()
    lesions = extract_subject(subject, cfg.extract_config(trained.model.patch_size, trained.channels),
                              trained.channels)
    extracted = time.perf_counter()
    probabilities, spread = classify(trained, lesions.patches, cfg)
    index, predicted = decisions(probabilities, names, cfg.abstain)
    inferred = time.perf_counter()
    rows = prediction_rows(lesions.records, probabilities, spread, names, predicted)
    folder.mkdir(parents=True)
    folder.joinpath(SUBJECT_LESIONS).write_text(csv_text(rows, subject_columns(names, cfg.tta)))
    write_maps(folder, lesions, index, probabilities, len(names))
    summary = subject_summary(subject.id, rows, names, with_volume=True)
    legend = {"0": "background", **{str(k + 1): n for k, n in enumerate(names)}, str(len(names) + 1): UNCERTAIN}
    detail = {**summary, "label_map_values": legend, "probability_map_volumes": list(names), "notes": lesions.notes,
              "seconds_extract": round(extracted - started, 3), "seconds_classify": round(inferred - extracted, 3)}
    folder.joinpath(SUBJECT_SUMMARY).write_text(json.dumps(detail, indent=2) + "\n")
    return rows, {**summary, "notes": lesions.notes, "seconds": round(inferred - started, 3)}


SUBJECT_BASE = ("subject", "lesion", "part", "x_mm", "y_mm", "z_mm", "centre_i", "centre_j", "centre_k", "voxels",
                "volume_mm3", "label", "flags")


def subject_columns(names: tuple[str, ...], tta: bool) -> tuple[str, ...]:
    return columns(SUBJECT_BASE, names, tta)


def check_channels(trained: TrainedModel, subjects: list[Subject], run: str) -> None:
    """Fail before any work when a subject lacks an image the model was trained on."""
    for subject in subjects:
        missing = [c for c in trained.channels if subject.image(c) is None]
        if missing:
            raise InputError(f"the model of {run} needs channel(s) {', '.join(missing)} but subject {subject.id} "
                             f"has no {'/'.join(m.upper() for m in missing)} image", subject.mask)


def predict_subjects(cfg: PredictConfig, subjects: list[Subject], show_progress: bool = True,
                     overwrite: bool = False, continue_on_error: bool = False) -> tuple[list[dict], list[dict]]:
    """Predict every subject into `cfg.out`; returns the per-subject summaries and the subjects that failed.

    Without continue_on_error the first unreadable subject stops the command and nothing is written; with it, the
    failed subjects are listed (subject, reason) in errors.csv and the others are predicted."""
    check_folder_output(cfg.out, overwrite)
    trained = _load(cfg)
    check_channels(trained, subjects, cfg.run)
    names = trained.class_map.names
    all_rows, summaries, failures = [], [], []
    with locked_folder(cfg.out, RUN_LOCK), staged_folder(cfg.out) as tmp, progress_bar(show_progress) as bars:
        bar = bars.task("subjects", total=len(subjects))
        for subject in subjects:
            try:
                rows, summary = predict_subject(trained, subject, cfg, tmp / subject.id)
            except InputError as exc:
                if not continue_on_error:
                    raise
                failures.append({"subject": subject.id, "error": str(exc)})
                shutil.rmtree(tmp / subject.id, ignore_errors=True)
                bar.advance()
                continue
            all_rows.extend(rows)
            summaries.append(summary)
            bar.advance()
        tmp.joinpath(LESION_PREDICTIONS).write_text(csv_text(all_rows, subject_columns(names, cfg.tta)))
        summary_columns = tuple(k for k in summaries[0] if k != "notes") if summaries else ("subject",)
        tmp.joinpath(PREDICTION_SUMMARY).write_text(csv_text(summaries, summary_columns))
        if failures:
            tmp.joinpath(PREDICTION_ERRORS).write_text(csv_text(failures, ("subject", "error")))
        write_config(tmp, cfg, trained)
    return summaries, failures


def predict_patch_file(cfg: PredictConfig, path: Path, show_progress: bool = True,
                       overwrite: bool = False) -> list[dict]:
    """Predict the lesions of a patch file (no maps: the file holds no volumes)."""
    from mslesion.data.patches import read_patches

    check_folder_output(cfg.out, overwrite)
    trained = _load(cfg)
    patches = read_patches(path, trained.channels, in_memory=cfg.in_memory)
    if patches.patch_shape != (trained.model.patch_size,) * 3:
        raise InputError(f"patches are {patches.patch_shape} but the model of {cfg.run} expects "
                         f"{trained.model.patch_size}³", path)
    names = trained.class_map.names
    probabilities, spread = classify(trained, patches.images, cfg)
    _, predicted = decisions(probabilities, names, cfg.abstain)
    parts = patches.parts if patches.parts is not None else np.zeros(len(patches), np.int64)
    base = [{"subject": str(p), "lesion": int(lesion), "part": int(part), "label": int(label)}
            for p, lesion, part, label in zip(patches.patients, patches.lesions, parts, patches.labels, strict=True)]
    rows = prediction_rows(base, probabilities, spread, names, predicted)
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    summaries = [subject_summary(s, [r for r in rows if r["subject"] == s], names, with_volume=False)
                 for s in subjects]
    with locked_folder(cfg.out, RUN_LOCK), staged_folder(cfg.out) as tmp:
        table = columns(("subject", "lesion", "part", "label"), names, cfg.tta)
        tmp.joinpath(LESION_PREDICTIONS).write_text(csv_text(rows, table))
        summary_columns = tuple(summaries[0]) if summaries else ("subject",)
        tmp.joinpath(PREDICTION_SUMMARY).write_text(csv_text(summaries, summary_columns))
        write_config(tmp, cfg, trained)
    return summaries


def write_config(folder: Path, cfg: PredictConfig, trained: TrainedModel) -> None:
    record = {**provenance(), "config": to_dict(cfg), "channels": list(trained.channels),
              "classes": trained.class_map.spec(), "temperature": trained.temperature,
              "patch_size": trained.model.patch_size}
    folder.joinpath(PREDICT_CONFIG).write_text(json.dumps(record, indent=2) + "\n")


def _load(cfg: PredictConfig) -> TrainedModel:
    set_threads(cfg.threads)
    parse_device(cfg.device)  # an unavailable device fails before any work
    return load_trained(cfg.run)
