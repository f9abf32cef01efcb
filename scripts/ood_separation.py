"""Figures for the README: how well the out-of-distribution flags separate lesions a model was trained for from
shifted ones (mslesion.ood).

1. A model on the default synthetic cohort (flair,qsm,mask). In distribution: its own test split. Shifted: the
   same generator with another seed and 1 mm voxels; field noise ×2 (the field-noise of a 1.5 T scanner against
   the default 3 T: noise in ppm scales with 1/B0); field noise ×4; FLAIR+QSM of a 0.65 mm cohort read as if in
   ppb (QSM ×1000, a unit mix-up a lab makes).
2. A flair,mask model (what the real open_ms_data subjects have) on the synthetic cohort vs the lesions of the
   three open_ms_data subjects with FLAIR (resampled to 0.65 mm as extract does).

Per group: ROC AUC of the feature score (in distribution vs that group), the share of lesions with any flag and
with the feature flag. In distribution (the validation lesions the feature threshold was set on, and the test
lesions, which played no part), the share without any flag is the issue's "≥ 90% pass" figure.

    PYTHONPATH=src python scripts/ood_separation.py --out /tmp/ood --patients 60 --epochs 6
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from mslesion.config import ExtractConfig, LesionFinding, SynthConfig, TrainConfig
from mslesion.data.patches import read_patches
from mslesion.data.synth.cohort import write_cohort
from mslesion.ood import FEATURE_FLAG, ood_flags
from mslesion.runs import SPLIT, load_trained, read_json
from mslesion.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_data"


def cohort(out: Path, name: str, cfg: SynthConfig) -> Path:
    path = out / f"{name}.h5"
    if not path.exists():
        write_cohort(cfg, path)
    return path


def trained_run(out: Path, data: Path, channels: tuple[str, ...], epochs: int) -> Path:
    run = out / f"run_{'+'.join(channels)}"
    if not (run / "model.pt").exists():
        train(TrainConfig(data=str(data), out=str(run), channels=channels, augment="random", epochs=epochs,
                          lr_milestones=(epochs - 2,), val_fraction=0.15, seed=0), show_progress=False)
    return run


def judged(run: Path, images: np.ndarray, volumes: np.ndarray | None) -> tuple[np.ndarray, list[list[str]]]:
    trained = load_trained(run)
    flags, scores = ood_flags(refitted(run), trained.model, images, volumes, trained.channels)
    return scores, flags


def refitted(run: Path) -> dict:
    """The run's OOD statistics fitted again by this version of mslesion.ood (a run trained by an earlier version
    keeps its weights; only the statistics, a function of the weights and the training data, are recomputed)."""
    from mslesion.data.task import load_task
    from mslesion.ood import fit_ood

    if run in REFITTED:
        return REFITTED[run]
    trained = load_trained(run)
    task = load_task(trained.config.data, trained.channels, trained.class_map)
    split = read_json(run / SPLIT)
    train_rows = np.asarray([r["index"] for r in split["train"]])
    val_rows = np.asarray([r["index"] for r in split["val"]]) if split.get("val") else None
    REFITTED[run] = fit_ood(trained.model, task.images[train_rows], task.targets[train_rows],
                            task.images[val_rows] if val_rows is not None else None, task.volumes[train_rows],
                            trained.channels)
    return REFITTED[run]


REFITTED: dict[Path, dict] = {}


def split_part(run: Path, data: Path, channels: tuple[str, ...], part: str = "test"):
    """Images and volumes of one part of the run's split (test, or val: the lesions the thresholds came from)."""
    patches = read_patches(data, channels)
    index = np.asarray([row["index"] for row in read_json(run / SPLIT)[part]])
    labelled = np.flatnonzero(np.isin(patches.labels, (2, 3, 5, 6)))  # the task's rows, in file order
    rows = labelled[index]
    return patches.images[rows], volumes_of(patches, data)[rows]


def in_distribution(run: Path, data: Path, channels: tuple[str, ...], name: str, part: str) -> dict:
    """The flag rates of one in-distribution part of the run's own split (no AUC: nothing to separate)."""
    images, volumes = split_part(run, data, channels, part)
    scores, flags = judged(run, images, volumes)
    return {**row(name, scores, scores, flags), "auc_vs_in_distribution": "–"}


def volumes_of(patches, data: Path) -> np.ndarray | None:
    """As training measured them (data.task.lesion_volumes): the file's volumes, else the mask's voxels."""
    from mslesion.data.task import lesion_volumes

    return lesion_volumes(patches, data, None)


def row(name: str, reference: np.ndarray, scores: np.ndarray, flags: list[list[str]]) -> dict:
    y = np.r_[np.zeros(len(reference)), np.ones(len(scores))]
    return {"group": name, "lesions": len(scores),
            "auc_vs_in_distribution": round(float(roc_auc_score(y, np.r_[reference, scores])), 3),
            "any_flag": round(float(np.mean([bool(f) for f in flags])), 3),
            "feature_flag": round(float(np.mean([FEATURE_FLAG in f for f in flags])), 3)}


def real_lesions(out: Path, channels: tuple[str, ...]) -> np.ndarray:
    from mslesion.data.extract import extract_subject
    from mslesion.data.subjects import Subject

    images = []
    for folder in sorted(SHARED.glob("patient*")):
        if (folder / "FLAIR.nii.gz").exists():
            subject = Subject(folder.name, folder / "lesion_mask.nii.gz", folder / "FLAIR.nii.gz", None, None)
            cfg = ExtractConfig(out="", channels=channels, patch_size=35,
                                finding=LesionFinding(resample=True, voxel_size_mm=(0.65,)))
            images.append(extract_subject(subject, cfg, channels).patches)
    return np.concatenate(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = SynthConfig(patients=args.patients, labelled_only=True, seed=0)
    reference = cohort(args.out, "reference", base)
    table = []

    channels = ("flair", "qsm", "mask")
    run = trained_run(args.out, reference, channels, args.epochs)
    table.append(in_distribution(run, reference, channels, "validation split", "val"))
    images, volumes = split_part(run, reference, channels)
    ref_scores, ref_flags = judged(run, images, volumes)
    table.append({**row("in distribution (test split)", ref_scores, ref_scores, ref_flags),
                  "auc_vs_in_distribution": "–"})
    shifts = {"1 mm voxels, another seed": dataclasses.replace(base, voxel_size_mm=1.0, seed=1),
              "field noise ×2 (1.5 T-like)": dataclasses.replace(base, qsm_noise=2.0, seed=2),
              "field noise ×4": dataclasses.replace(base, qsm_noise=4.0, seed=3)}
    small = dict(patients=max(10, args.patients // 4))
    for name, cfg in shifts.items():
        data = cohort(args.out, name.split()[0] + str(cfg.seed), dataclasses.replace(cfg, **small))
        patches = read_patches(data, channels)
        scores, flags = judged(run, patches.images, volumes_of(patches, data))
        table.append(row(name, ref_scores, scores, flags))
    ppb = images.copy()
    ppb[:, channels.index("qsm")] *= 1000
    scores, flags = judged(run, ppb, volumes)
    table.append(row("QSM in ppb instead of ppm", ref_scores, scores, flags))

    channels = ("flair", "mask")
    run = trained_run(args.out, reference, channels, args.epochs)
    table.append(in_distribution(run, reference, channels, "flair,mask model: validation split", "val"))
    images, volumes = split_part(run, reference, channels)
    ref_scores, ref_flags = judged(run, images, volumes)
    table.append({**row("flair,mask model: in distribution (test split)", ref_scores, ref_scores, ref_flags),
                  "auc_vs_in_distribution": "–"})
    if SHARED.exists():
        scores, flags = judged(run, real_lesions(args.out, channels), None)
        table.append(row("flair,mask model: real open_ms_data lesions", ref_scores, scores, flags))

    with open(args.out / "ood_separation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print("| group | lesions | ROC AUC vs in distribution | any flag | feature flag |")
    print("|---|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['group']} | {r['lesions']} | {r['auc_vs_in_distribution']} | {r['any_flag']:.1%} | "
              f"{r['feature_flag']:.1%} |")


if __name__ == "__main__":
    main()
