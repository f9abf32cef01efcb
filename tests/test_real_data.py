"""extract and predict on real MS scans: open_ms_data (FLAIR + consensus lesion masks, CC-BY; see its SOURCE.md).

CI has the shared data folder beside the repository (`../shared`); without it these tests are skipped.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import toy_patches
from test_extract import run_cli

from mslesion.config import ExtractConfig, LesionFinding, TrainConfig
from mslesion.data.extract import extract_subject
from mslesion.data.patches import read_patches, write_patches
from mslesion.data.subjects import Subject
from mslesion.runs import LESION_PREDICTIONS, PREDICTION_SUMMARY, anat_folder, label_map_name, subject_prefix
from mslesion.train import train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "open_ms_data"
# 6-connected components of at least 10 voxels (10 mm³), as listed in SOURCE.md.
EXPECTED_LESIONS = {"patient07": 26, "patient19": 65, "patient26": 14}

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def subject(name: str) -> Subject:
    return Subject(name, DATA / name / "lesion_mask.nii.gz", flair=DATA / name / "FLAIR.nii.gz")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("real") / "manifest.csv"
    lines = [f"{name},{DATA / name / 'FLAIR.nii.gz'},{DATA / name / 'lesion_mask.nii.gz'}" for name in EXPECTED_LESIONS]
    path.write_text("subject,flair,mask\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_LESIONS))
def test_extract_finds_the_documented_lesions(name):
    started = time.perf_counter()
    result = extract_subject(subject(name), ExtractConfig(), ("flair", "mask"))
    seconds = time.perf_counter() - started
    print(f"{name}: {len(result)} lesions in {seconds:.2f} s")
    assert len(result) == EXPECTED_LESIONS[name]
    assert np.all(result.patches[:, 1, 17, 17, 17] == 1)  # every patch centred on a voxel of its lesion
    flair, mask = result.patches[:, 0], result.patches[:, 1] > 0
    # FLAIR scaled to normal tissue: lesions are hyperintense, the tissue around them is about 1.
    assert 0.7 < np.median(flair[~mask & (flair > 0.5)]) < 1.3
    assert np.median(flair[mask]) > 1.2
    assert np.isfinite(result.patches).all()
    assert all(r["volume_mm3"] >= 10 for r in result.records)


def test_connectivity_26_merges_components():
    s = Subject("m", DATA / "masks_only" / "patient01_lesion_mask.nii.gz")
    six = extract_subject(s, ExtractConfig(), ("mask",))
    twenty_six = extract_subject(s, ExtractConfig(finding=LesionFinding(connectivity=26)), ("mask",))
    assert len(six) > 0 and len(twenty_six) > 0
    # Merging can only join lesions (fewer) or lift small ones over 10 mm³; the total volume never shrinks.
    assert sum(r["voxels"] for r in twenty_six.records) >= sum(r["voxels"] for r in six.records)


@pytest.mark.slow
def test_extract_masks_only_manifest(tmp_path, monkeypatch, capsys):
    masks = sorted((DATA / "masks_only").glob("*_lesion_mask.nii.gz"))[:4]
    manifest = tmp_path / "masks.csv"
    manifest.write_text("subject,mask\n" + "\n".join(f"{m.name[:9]},{m}" for m in masks) + "\n")
    code, text = run_cli(["extract", manifest, "--out", tmp_path / "masks.h5", "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    patches = read_patches(tmp_path / "masks.h5")
    assert patches.channels == ("mask",) and len(set(patches.patients)) == len(masks)
    rows = list(csv.DictReader((tmp_path / "masks_lesions.csv").open()))
    assert len(rows) == len(patches)


@pytest.fixture(scope="module")
def flair_mask_run(tmp_path_factory) -> Path:
    """A tiny FLAIR+mask model with the real patch size (35): one epoch on a few toy patches."""
    folder = tmp_path_factory.mktemp("run")
    write_patches(folder / "toy.h5", toy_patches({2: 6, 3: 6}, size=35, n_patients=4, channels=("flair", "mask")))
    cfg = TrainConfig(data=str(folder / "toy.h5"), out=str(folder / "run"), channels=("flair", "mask"), epochs=1,
                      batch_size=8, augment="none", threads=1)
    return train(cfg, show_progress=False)


@pytest.mark.slow
def test_predict_on_real_subjects(flair_mask_run, manifest, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pred"
    started = time.perf_counter()
    code, text = run_cli(["predict", flair_mask_run, manifest, "--out", out, "--quiet"], monkeypatch, capsys)
    print(f"predict on {len(EXPECTED_LESIONS)} subjects: {time.perf_counter() - started:.1f} s")
    assert code == 0, text
    summary = {r["participant_id"]: r for r in csv.DictReader((out / PREDICTION_SUMMARY).open())}
    # ids not named sub-… become sub-<id> (patient26 → sub-patient26)
    assert {k: int(v["lesions"]) for k, v in summary.items()} == {f"sub-{k}": v for k, v in EXPECTED_LESIONS.items()}
    rows = list(csv.DictReader((out / LESION_PREDICTIONS).open()))
    assert len(rows) == sum(EXPECTED_LESIONS.values())
    mask_img = nib.load(DATA / "patient26" / "lesion_mask.nii.gz")
    label_img = nib.load(out / anat_folder("patient26") / label_map_name(subject_prefix("patient26"), "binary"))
    np.testing.assert_allclose(label_img.affine, mask_img.affine, atol=1e-4)
    labels = np.asarray(label_img.dataobj)
    kept = sum(int(r["voxels"]) for r in rows if r["participant_id"] == "sub-patient26")
    assert np.count_nonzero(labels) == kept
    assert np.all(np.asarray(mask_img.dataobj)[labels > 0] == 1)  # labelled voxels are lesion voxels, same grid
