"""Scripts that measure with the library: their own logic (pairing, copying) on tiny hand-written run folders."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mslesion.paper import PAPER_CLASSES, PHENOTYPE_CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compare_demo_protocols  # noqa: E402
import derived_vs_dedicated  # noqa: E402

Row = tuple[str, int, int, list[float]]


def write_run(folder: Path, classes: str, names: tuple[str, ...], rows: list[Row]) -> Path:
    """A run folder with config.json and predictions.csv; rows: (patient, lesion id, Table 1 code, probabilities)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"classes": classes}))
    codes = {name: [int(c) for c in part.split("=")[1].split(",")] for name, part in
             zip(names, classes.split(";"), strict=True)}
    with open(folder / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "patient", "lesion", "label", "target", *(f"p_{n}" for n in names), "predicted"])
        for i, (patient, lesion, code, p) in enumerate(rows):
            target = next(n for n, cs in codes.items() if code in cs)
            writer.writerow([i, patient, lesion, code, target, *p, names[int(np.argmax(p))]])
    return folder


PHENOTYPE_NAMES = ("unclassified", "isointense", "PRL", "hypointense_rim", "hyperintense", "hypointense")
BINARY_NAMES = ("remyelinating", "demyelinating")


def test_derived_vs_dedicated_pairs_lesions_by_patient_and_lesion_id(tmp_path: Path):
    # phenotype rows: a class-1 lesion (not in the binary task), then codes 3 and 2 of two patients
    pheno = write_run(tmp_path / "pheno", PHENOTYPE_CLASSES, PHENOTYPE_NAMES, [
        ("sub-a", 1, 1, [0.7, 0.1, 0.1, 0.0, 0.1, 0.0]),
        ("sub-a", 2, 3, [0.2, 0.1, 0.5, 0.0, 0.1, 0.1]),
        ("sub-b", 1, 2, [0.1, 0.6, 0.1, 0.0, 0.0, 0.2]),
    ])
    # the binary run tested the same two binary-task lesions, in the other order
    binary = write_run(tmp_path / "binary", PAPER_CLASSES, BINARY_NAMES, [
        ("sub-b", 1, 2, [0.8, 0.2]),
        ("sub-a", 2, 3, [0.3, 0.7]),
    ])
    derived, dedicated = derived_vs_dedicated.paired_sets(pheno, binary)
    np.testing.assert_array_equal(derived.targets, [1, 0])  # demyelinating (code 3), remyelinating (code 2)
    np.testing.assert_array_equal(dedicated.targets, derived.targets)
    np.testing.assert_allclose(dedicated.probabilities[:, 1], [0.7, 0.2])  # reordered to the phenotype rows
    np.testing.assert_allclose(derived.probabilities[:, 1], [0.6 / 0.8, 0.1 / 0.9])  # p_dem / (p_rem + p_dem)
    assert list(derived.patients) == list(dedicated.patients) == ["sub-a", "sub-b"]


def test_derived_vs_dedicated_refuses_runs_that_tested_other_lesions(tmp_path: Path):
    pheno = write_run(tmp_path / "pheno", PHENOTYPE_CLASSES, PHENOTYPE_NAMES, [
        ("sub-a", 2, 3, [0.2, 0.1, 0.5, 0.0, 0.1, 0.1]),
    ])
    binary = write_run(tmp_path / "binary", PAPER_CLASSES, BINARY_NAMES, [("sub-a", 3, 3, [0.3, 0.7])])
    with pytest.raises(SystemExit, match="did not test the same lesions"):
        derived_vs_dedicated.paired_sets(pheno, binary)


def binary_rows(seed: int, n_patients: int = 12, noise: float = 0.0) -> list[Row]:
    """Four lesions per patient, one in three remyelinating (code 2), with probabilities that track the class."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for lesion in range(4):
            code = 2 if (p + lesion) % 3 == 0 else 3
            p_dem = np.clip((0.8 if code == 3 else 0.25) + rng.normal(0, 0.15 + noise), 0.01, 0.99)
            rows.append((f"sub-{p:02d}", lesion + 1, code, [1 - p_dem, p_dem]))
    return rows


def write_demo(out: Path, runs: dict[str, list[Row]]) -> Path:
    for name, rows in runs.items():
        write_run(out / "quick" / name, PAPER_CLASSES, BINARY_NAMES, rows)
    return out


def test_demo_protocol_comparison_accepts_the_same_predictions(tmp_path: Path, capsys):
    rows = binary_rows(0)
    old = write_demo(tmp_path / "old", {"qsm": rows, "flair+qsm": rows})
    new = write_demo(tmp_path / "new", {"qsm": rows, "flair+qsm": rows})
    assert compare_demo_protocols.main([str(old), str(new), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "qsm: inside" in out and "flair+qsm: inside" in out and "every row inside" in out


def test_demo_protocol_comparison_rejects_a_row_that_leaves_the_interval(tmp_path: Path, capsys):
    rows = binary_rows(0)
    # the new qsm model calls every lesion demyelinating: its remyelinating TPR falls from ~1 to 0
    worse = [(patient, lesion, code, [0.1, 0.9]) for patient, lesion, code, _ in rows]
    old = write_demo(tmp_path / "old", {"qsm": rows, "flair": rows})
    new = write_demo(tmp_path / "new", {"qsm": worse, "flair": rows})
    assert compare_demo_protocols.main([str(old / "quick"), str(new / "quick"), "--bootstrap", "200"]) == 1
    out = capsys.readouterr().out
    assert "qsm: NOT inside" in out and "tpr_remyelinating" in out and "OUTSIDE" in out
    assert "flair: inside" in out


def test_demo_protocol_comparison_refuses_demos_that_tested_other_lesions(tmp_path: Path):
    old = write_demo(tmp_path / "old", {"qsm": binary_rows(0)})
    new = write_demo(tmp_path / "new", {"qsm": binary_rows(0, n_patients=11)})
    with pytest.raises(SystemExit, match="did not test the same lesions"):
        compare_demo_protocols.main([str(old), str(new)])
