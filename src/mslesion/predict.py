"""Per-lesion predictions on new subjects (`mslesion predict`): NIfTI in, CSV + label/probability maps out.

Lesions are found and cut exactly as `extract` does (`extract_subject`), with the run's channels and patch
size. Everything is written into a temporary folder beside `--out` and moved into place at the end, so an
error on the tenth subject leaves no half-written output.

On NIfTI subjects the output folder is a BIDS derivative dataset (its contract: `mslesion.runs`; its BIDS parts:
`mslesion.bids`): per subject (and session) a label map of the calls in paper.CALL_LEGEND's fixed values, one
probability map per class, the lesion table (TSV and its column sidecar) and a summary that records the input
files (the prediction report reads the images from there); at the top the legend (BIDS, ITK-SNAP, FSLeyes), the
consolidated lesion table and per-subject summary. Later runs with the same model and settings add subjects; a
subject already there is replaced only with --overwrite, and each subject is swapped in only when complete.

Per lesion: the class probabilities; the derived p_unclassified / p_remyelinating / p_demyelinating
(ClassMap.derived_probabilities); `flags` (extract's geometry flags and the model's out-of-distribution flags,
mslesion.ood); `predicted`, the model's class (or uncertain below --abstain); and `call`, the final word:
out_of_distribution when any flag is raised (unless --keep-ood), else uncertain, else the class as a call name
(a Table 1 type, unclassified, remyelinating or demyelinating).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mslesion.atomic import (
    check_folder_output,
    csv_text,
    has_results,
    locked_folder,
    replace_folder,
    staged_folder,
    write_atomic,
    write_json,
)
from mslesion.bids import (
    SESSION_COLUMN,
    SUBJECT_COLUMN,
    column_descriptions,
    dataset_description,
    probability_labels,
    read_tsv,
    subject_labels,
    task_name,
    tsv_text,
    write_legends,
)
from mslesion.config import PredictConfig, to_dict
from mslesion.data.extract import FLAGS, extract_subject
from mslesion.data.nifti import to_original_orientation
from mslesion.data.subjects import Subject
from mslesion.errors import InputError
from mslesion.paper import PRL_CODE
from mslesion.progress import progress_bar
from mslesion.runs import (
    BIDS_DATATYPE,
    DATASET_DESCRIPTION,
    LESION_PREDICTIONS,
    LESION_PREDICTIONS_SIDECAR,
    PREDICT_CONFIG,
    PREDICTION_ERRORS,
    PREDICTION_SUMMARY,
    RUN_LOCK,
    TrainedModel,
    changed_prediction_settings,
    is_prediction_folder,
    label_map_name,
    lesion_table_name,
    lesion_table_sidecar_name,
    load_trained,
    prediction_record,
    probability_map_name,
    read_json,
    subject_folder,
    subject_prefix,
    subject_summaries,
    subject_summary_name,
)
from mslesion.runtime import parse_device, set_threads

UNCERTAIN, OUT_OF_DISTRIBUTION = "uncertain", "out_of_distribution"
BINARY_NOTE = ("a binary model (remyelinating/demyelinating) cannot recognise unclassifiable lesions: it calls "
               "every lesion one of its two classes")


def classify(trained: TrainedModel, images, cfg: PredictConfig, bars=None,
             name: str = "lesions") -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (and TTA spread); with bars, a bar over the forward passes (48 per lesion with --tta for a
    model trained on all cube symmetries: a subject of 65 lesions is 3,120 passes, over a minute on a CPU)."""
    from mslesion.inference import predict_probabilities

    symmetries = trained.tta_symmetries() if cfg.tta else 1
    bar = bars.task(f"{name}: {len(images)} lesions{f' × {symmetries} symmetries' if cfg.tta else ''}",
                    total=len(images) * symmetries) if bars is not None and len(images) else None
    model, precision = trained.model, cfg.precision
    if precision == "int8":  # the quantised net computes in integers itself: no autocast around it
        model, precision = int8_model(trained), "fp32"
    return predict_probabilities(model, images, cfg.batch_size, parse_device(cfg.device), tta=cfg.tta,
                                 temperature=trained.temperature, precision=precision,
                                 progress=bar.advance if bar is not None else None, symmetries=symmetries)


def int8_model(trained: TrainedModel):
    """The run's net quantised for `--precision int8` (mslesion.quantized), with the input padding this machine
    runs fastest."""
    from mslesion.precision import int8_input_pad
    from mslesion.quantized import Int8LesionNet

    pad = int8_input_pad(trained.model.in_channels)
    return Int8LesionNet(trained.model, trained.activation_ranges, input_pad=pad)


def check_int8(trained: TrainedModel, cfg: PredictConfig) -> None:
    """--precision int8 needs the CPU and a model that stored its activation ranges (trained by 0.4.7 or later)."""
    if cfg.precision != "int8":
        return
    from mslesion.quantized import int8_available, preferred_engine

    if parse_device(cfg.device).type != "cpu":
        raise InputError("--precision int8 runs on the CPU only; on a GPU use auto or bf16")
    if not int8_available():
        raise InputError(f"--precision int8: this PyTorch build has no int8 3D convolution (quantized engine "
                         f"{preferred_engine()}); use auto, bf16 or fp32")
    if not trained.activation_ranges:
        raise InputError("--precision int8: this model stores no activation ranges (models trained before mslesion "
                         "0.4.7, and the built-in starter models, have none); use auto, bf16 or fp32, or train it "
                         "again", cfg.run)


def decisions(probabilities: np.ndarray, names: tuple[str, ...], abstain: float) -> tuple[np.ndarray, list[str]]:
    """Predicted class index per lesion (-1 = uncertain) and its name."""
    index = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, np.int64)
    if abstain > 0 and len(probabilities):
        index = np.where(probabilities.max(axis=1) < abstain, -1, index)
    return index, [UNCERTAIN if i < 0 else names[i] for i in index]


def flag_names(trained: TrainedModel) -> tuple[str, ...]:
    """Every flag a lesion can carry with this model, in a fixed order (the summary's columns)."""
    from mslesion.ood import BINARY_CHANNELS, FEATURE_FLAG, VOLUME_FLAG, intensity_flag

    if trained.ood is None:
        return FLAGS
    channels = [intensity_flag(c) for c in trained.channels if c not in BINARY_CHANNELS]
    return (*FLAGS, VOLUME_FLAG, *channels, FEATURE_FLAG)


@dataclass
class Judged:
    """A model's verdict on a set of lesions: probabilities, spread (TTA), flags, feature scores and calls."""

    probabilities: np.ndarray
    spread: np.ndarray | None
    index: np.ndarray  # predicted class, -1 = uncertain
    predicted: list[str]
    flags: list[list[str]]
    scores: np.ndarray | None  # feature (Mahalanobis) score; None without stored statistics
    calls: list[str]


def judge(trained: TrainedModel, images: np.ndarray, volumes: np.ndarray | None, geometry_flags: list[list[str]],
          cfg: PredictConfig, bars=None, name: str = "lesions") -> Judged:
    """Classify, flag and call every lesion (with bars, a progress bar over the forward passes)."""
    from mslesion.ood import ood_flags

    probabilities, spread = classify(trained, images, cfg, bars, name)
    index, predicted = decisions(probabilities, trained.class_map.names, cfg.abstain)
    flags, scores = [list(f) for f in geometry_flags], None
    if trained.ood is not None:
        model_flags, scores = ood_flags(trained.ood, trained.model, images, volumes, trained.channels,
                                        parse_device(cfg.device))
        flags = [a + b for a, b in zip(flags, model_flags, strict=True)]
    call_names = trained.class_map.call_names()
    calls = [OUT_OF_DISTRIBUTION if f and not cfg.keep_ood else UNCERTAIN if i < 0 else call_names[i]
             for i, f in zip(index, flags, strict=True)]
    return Judged(probabilities, spread, index, predicted, flags, scores, calls)


def prediction_rows(base: list[dict], judged: Judged, trained: TrainedModel) -> list[dict]:
    names = trained.class_map.names
    derived = {k: v for k, v in trained.class_map.derived_probabilities(judged.probabilities).items()
               if k[2:] not in names}
    rows = []
    for n, record in enumerate(base):
        row = dict(record)
        for k, name in enumerate(names):
            row[f"p_{name}"] = round(float(judged.probabilities[n, k]), 5)
            if judged.spread is not None:
                row[f"spread_{name}"] = round(float(judged.spread[n, k]), 5)
        row.update({key: round(float(value[n]), 5) for key, value in derived.items()})
        if judged.scores is not None:
            row["ood_score"] = round(float(judged.scores[n]), 3)
        row["flags"] = ";".join(judged.flags[n])
        row["predicted"], row["call"] = judged.predicted[n], judged.calls[n]
        rows.append(row)
    return rows


def columns(base: tuple[str, ...], trained: TrainedModel, tta: bool) -> tuple[str, ...]:
    names = trained.class_map.names
    probability = tuple(f"p_{n}" for n in names)
    spread = tuple(f"spread_{n}" for n in names) if tta else ()
    derived = tuple(k for k in trained.class_map.derived_probabilities(np.zeros((0, len(names)))) if k[2:] not in names)
    score = ("ood_score",) if trained.ood is not None else ()
    base = tuple(c for c in base if c != "flags")
    return (*base, *probability, *spread, *derived, *score, "flags", "predicted", "call")


def subject_summary(identity: dict[str, str], rows: list[dict], trained: TrainedModel, cfg: PredictConfig,
                    with_volume: bool) -> dict:
    """Who (`identity`: the table's subject columns), lesions per call (and their volume), lesions per flag, PRL
    calls and whether they reach --prl-count."""
    summary: dict = {**identity, "lesions": len(rows)}
    for name in list(trained.class_map.legend().values())[1:]:
        chosen = [r for r in rows if r["call"] == name]
        summary[f"n_{name}"] = len(chosen)
        if with_volume:
            summary[f"volume_{name}_mm3"] = round(sum(r["volume_mm3"] for r in chosen), 3)
    for flag in flag_names(trained):
        summary[f"n_{flag}"] = sum(flag in r["flags"].split(";") for r in rows)
    knows_prl = bool(trained.class_map.class_of(PRL_CODE)) and len(trained.class_map.class_of(PRL_CODE)) == 1 and \
        trained.class_map.codes[trained.class_map.class_of(PRL_CODE)[0]] == (PRL_CODE,)
    summary["n_prl_like"] = summary.get("n_PRL", 0) if knows_prl else ""
    summary[f"prl_{cfg.prl_count}_or_more"] = (summary["n_prl_like"] >= cfg.prl_count) if knows_prl else ""
    return summary


def write_maps(folder: Path, prefix: str, lesions, judged: Judged, trained: TrainedModel) -> None:
    """Label map (each lesion's call, in the fixed legend) and one probability map per class, on the input grid
    with the input's affine, units and qform/sform codes."""
    import nibabel as nib

    legend = trained.class_map.legend()
    value_of = {name: value for value, name in legend.items()}
    size = int(lesions.lesion_map.max()) + 1
    label_lut = np.zeros(size, np.uint8 if max(legend) < 256 else np.uint16)
    label_lut[lesions.map_ids] = [value_of[c] for c in judged.calls]
    nib.save(to_original_orientation(label_lut[lesions.lesion_map], lesions.grid),
             folder / label_map_name(prefix, task_name(trained.class_map)))
    for k, label in enumerate(probability_labels(trained.class_map)):
        prob_lut = np.zeros(size, np.float32)
        prob_lut[lesions.map_ids] = judged.probabilities[:, k]
        nib.save(to_original_orientation(prob_lut[lesions.lesion_map], lesions.grid),
                 folder / probability_map_name(prefix, label))


def model_notes(trained: TrainedModel) -> list[str]:
    notes = [BINARY_NOTE] if not trained.class_map.is_phenotype and 1 not in {c for g in trained.class_map.codes
                                                                              for c in g} else []
    if trained.ood is None:
        notes.append("the model stores no training statistics (trained before version 0.4): only the geometry "
                     "flags are raised")
    return notes


# Per-subject summary entries that are not columns of summary.csv
SUMMARY_DETAILS = ("source_id", "inputs", "label_map_values", "probability_maps", "notes", "seconds_extract",
                   "seconds_classify")


def subject_inputs(subject: Subject) -> dict[str, str]:
    """The input files, absolute: the prediction report reads the images from them."""
    files = {"mask": subject.mask, "flair": subject.flair, "qsm": subject.qsm, "phenotype": subject.phenotype}
    return {role: str(Path(path).resolve()) for role, path in files.items() if path is not None}


def predict_subject(trained: TrainedModel, subject: Subject, labels: tuple[str, str], cfg: PredictConfig,
                    unit: Path, bars=None) -> dict:
    """Predict one subject into `unit` (its sub-<label>[/ses-<label>] folder); returns its summary."""
    started = time.perf_counter()
    lesions = extract_subject(subject, cfg.extract_config(trained.model.patch_size, trained.channels),
                              trained.channels)
    extracted = time.perf_counter()
    volumes = np.asarray([r["volume_mm3"] for r in lesions.records], dtype=np.float64)
    geometry = [[f for f in r["flags"].split(";") if f] for r in lesions.records]
    judged = judge(trained, lesions.patches, volumes, geometry, cfg, bars, subject.id)
    inferred = time.perf_counter()
    identity = {SUBJECT_COLUMN: f"sub-{labels[0]}", SESSION_COLUMN: f"ses-{labels[1]}" if labels[1] else ""}
    rows = prediction_rows([{**r, **identity} for r in lesions.records], judged, trained)
    task, prefix, anat = task_name(trained.class_map), subject_prefix(*labels), unit / BIDS_DATATYPE
    anat.mkdir(parents=True)
    table = subject_columns(trained, cfg.tta)
    anat.joinpath(lesion_table_name(prefix, task)).write_text(tsv_text(rows, table))
    write_json(anat / lesion_table_sidecar_name(prefix, task), column_descriptions(table, trained.class_map))
    write_maps(anat, prefix, lesions, judged, trained)
    summary = subject_summary(identity, rows, trained, cfg, with_volume=True)
    notes = lesions.notes + model_notes(trained)
    detail = {**summary, "source_id": subject.id, "inputs": subject_inputs(subject),
              "label_map_values": {str(k): n for k, n in trained.class_map.legend().items()},
              "probability_maps": dict(zip(probability_labels(trained.class_map), trained.class_map.names,
                                           strict=True)),
              "notes": notes, "seconds_extract": round(extracted - started, 3),
              "seconds_classify": round(inferred - extracted, 3)}
    write_json(anat / subject_summary_name(prefix, task), detail)
    return {**summary, "notes": notes, "seconds": round(inferred - started, 3)}


SUBJECT_BASE = (SUBJECT_COLUMN, SESSION_COLUMN, "lesion", "part", "x_mm", "y_mm", "z_mm", "centre_i", "centre_j",
                "centre_k", "voxels", "volume_mm3", "label", "flags")


def subject_columns(trained: TrainedModel, tta: bool) -> tuple[str, ...]:
    return columns(SUBJECT_BASE, trained, tta)


def check_channels(trained: TrainedModel, subjects: list[Subject], run: str) -> None:
    """Fail before any work when a subject lacks an image the model was trained on."""
    for subject in subjects:
        missing = [c for c in trained.channels if subject.image(c) is None]
        if missing:
            raise InputError(f"the model of {run} needs channel(s) {', '.join(missing)} but subject {subject.id} "
                             f"has no {'/'.join(m.upper() for m in missing)} image", subject.mask)


def replaces_everything(out: Path, record: dict, units: list[tuple[str, str]], overwrite: bool) -> bool:
    """Whether this run writes the whole folder (new, or replaced with --overwrite) rather than adding subjects;
    raises when it would replace anything without --overwrite."""
    if not has_results(out):
        return True
    if not is_prediction_folder(out) or not (out / DATASET_DESCRIPTION).exists():
        if overwrite:
            return True
        raise InputError("holds earlier results that are not a prediction dataset of this version; use "
                         "--overwrite to replace them (or another --out)", out)
    changed = changed_prediction_settings(read_json(out / PREDICT_CONFIG), record)
    if changed:
        if overwrite:
            return True
        raise InputError(f"holds predictions made with another model or settings ({', '.join(changed)}); use "
                         "--overwrite to replace all of them, or another --out", out)
    present = [subject_prefix(*u) for u in units if (out / subject_folder(*u)).exists()]
    if present and not overwrite:
        shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
        raise InputError(f"holds {shown} already; use --overwrite to replace {'it' if len(present) == 1 else 'them'}"
                         " (the other subjects stay)", out)
    return False


def predict_subjects(cfg: PredictConfig, subjects: list[Subject], show_progress: bool = True,
                     overwrite: bool = False, continue_on_error: bool = False,
                     command: str = "") -> tuple[list[dict], list[dict]]:
    """Predict every subject into the BIDS derivative folder `cfg.out`; returns this run's per-subject summaries
    and the subjects that failed.

    Without continue_on_error the first unreadable subject stops the command and nothing is written; with it, the
    failed subjects are listed (subject, reason) in errors.csv and the others are predicted. Each subject's folder
    is swapped in only when it is complete; the top-level tables are then rebuilt from every subject present."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    trained = _load(cfg)
    check_channels(trained, subjects, cfg.run)
    labels = subject_labels(subjects)
    record = prediction_record(cfg.run, to_dict(cfg), trained, precision_used(cfg))
    summaries, failures, done = [], [], []
    with locked_folder(out, RUN_LOCK):
        everything = replaces_everything(out, record, list(labels.values()), overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            with progress_bar(show_progress) as bars:
                bar = bars.task("subjects", total=len(subjects))
                for subject in subjects:
                    unit = subject_folder(*labels[subject.id])
                    try:
                        summaries.append(predict_subject(trained, subject, labels[subject.id], cfg, tmp / unit,
                                                        bars))
                        done.append(unit)
                    except InputError as exc:
                        if not continue_on_error:
                            raise
                        failures.append({"subject": subject.id, "error": str(exc)})
                        shutil.rmtree(tmp / unit, ignore_errors=True)
                    bar.advance()
            if everything:
                write_top_level(tmp, cfg, trained, record, command, failures)
                replace_folder(tmp, out)
            else:
                for unit in done:
                    (out / unit).parent.mkdir(parents=True, exist_ok=True)
                    replace_folder(tmp / unit, out / unit)
                write_top_level(out, cfg, trained, record, command, failures)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return summaries, failures


def write_top_level(folder: Path, cfg: PredictConfig, trained: TrainedModel, record: dict, command: str,
                    failures: list[dict]) -> None:
    """dataset_description.json, the legends, and the consolidated tables of every subject in `folder`."""
    task, table = task_name(trained.class_map), subject_columns(trained, cfg.tta)
    previous = read_json(folder / DATASET_DESCRIPTION) if (folder / DATASET_DESCRIPTION).exists() else None
    write_json(folder / DATASET_DESCRIPTION, dataset_description(previous, command or "(mslesion.predict)"))
    write_legends(folder, trained.class_map)
    rows, summaries = [], []
    for path in subject_summaries(folder):
        prefix = path.name.removesuffix(f"_desc-{task}_summary.json")
        if prefix == path.name:
            continue
        summaries.append({k: v for k, v in read_json(path).items() if k not in SUMMARY_DETAILS})
        rows.extend(read_tsv(path.parent / lesion_table_name(prefix, task)))
    summary_columns = tuple(summaries[0]) if summaries else (SUBJECT_COLUMN, SESSION_COLUMN)
    for name, text in ((LESION_PREDICTIONS, csv_text(rows, table)),
                       (PREDICTION_SUMMARY, csv_text(summaries, summary_columns))):
        write_atomic(folder / name, lambda tmp, text=text: tmp.write_text(text))
    write_json(folder / LESION_PREDICTIONS_SIDECAR, column_descriptions(table, trained.class_map))
    if failures:
        write_atomic(folder / PREDICTION_ERRORS,
                     lambda tmp: tmp.write_text(csv_text(failures, ("subject", "error"))))
    else:
        (folder / PREDICTION_ERRORS).unlink(missing_ok=True)  # an earlier run's failures are not this one's
    write_json(folder / PREDICT_CONFIG, record)


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
    geometry = [[] for _ in range(len(patches))]  # a patch file holds no volumes to find geometry flags in
    with progress_bar(show_progress) as bars:
        judged = judge(trained, patches.images, patches.volume_mm3, geometry, cfg, bars, Path(path).name)
    parts = patches.parts if patches.parts is not None else np.zeros(len(patches), np.int64)
    base = [{"subject": str(p), "lesion": int(lesion), "part": int(part), "label": int(label)}
            for p, lesion, part, label in zip(patches.patients, patches.lesions, parts, patches.labels, strict=True)]
    rows = prediction_rows(base, judged, trained)
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    summaries = [subject_summary({"subject": s}, [r for r in rows if r["subject"] == s], trained, cfg,
                                 with_volume=False) for s in subjects]
    with locked_folder(cfg.out, RUN_LOCK), staged_folder(cfg.out) as tmp:
        table = columns(("subject", "lesion", "part", "label"), trained, cfg.tta)
        tmp.joinpath(LESION_PREDICTIONS).write_text(csv_text(rows, table))
        summary_columns = tuple(summaries[0]) if summaries else ("subject",)
        tmp.joinpath(PREDICTION_SUMMARY).write_text(csv_text(summaries, summary_columns))
        write_json(tmp / PREDICT_CONFIG, prediction_record(cfg.run, to_dict(cfg), trained, precision_used(cfg)))
    return summaries


def precision_used(cfg: PredictConfig) -> str:
    """What `--precision` resolves to on this machine for inference (auto: measured once and cached)."""
    from mslesion.precision import resolve

    return resolve(parse_device(cfg.device), cfg.precision, "inference")


def _load(cfg: PredictConfig) -> TrainedModel:
    set_threads(cfg.threads)
    parse_device(cfg.device)  # an unavailable device fails before any work
    trained = load_trained(cfg.run)
    if cfg.tta:
        trained.tta_symmetries()  # a model without a symmetry group fails before any work too
    check_int8(trained, cfg)
    return trained
