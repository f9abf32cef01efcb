"""predict's output as a BIDS derivative dataset: pybids finds every file by its entities; labels, legends, headers,
column sidecars; several runs add subjects, replacing one needs --overwrite; colliding ids are refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_extract import LESIONS, run_cli, write_subject
from test_predict import SubjectFiles, make_run, read_rows

from mslesion.bids import bids_labels, entity_value, legend_rows, probability_labels, task_name
from mslesion.data.task import PHENOTYPE, ClassMap
from mslesion.paper import CALL_LEGEND, PAPER_CLASSES
from mslesion.runs import (
    DATASET_DESCRIPTION,
    LESION_PREDICTIONS,
    LESION_PREDICTIONS_SIDECAR,
    PREDICTION_SUMMARY,
    fsleyes_legend_name,
    itksnap_legend_name,
    legend_name,
)


def bids_input(root: Path, subject: str, session: str = "", lesions=LESIONS, seed: int = 0):
    """A raw BIDS subject (and session) as `predict FOLDER` discovers it."""
    key = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    return write_subject(folder, key, lesions=lesions, seed=seed)


def predict(args: list, monkeypatch, capsys) -> tuple[int, str]:
    return run_cli(["predict", *args, "--quiet"], monkeypatch, capsys)


def test_labels_entities_and_legend():
    assert bids_labels("sub-07_ses-2") == ("07", "2")
    assert bids_labels("patient_07") == ("patient07", "")
    assert bids_labels("sub-p.01") == ("p01", "")
    assert probability_labels(PHENOTYPE) == ("unclassified", "isointense", "PRL", "HRL", "hyperintense",
                                             "hypointense")
    assert probability_labels(ClassMap.parse(PAPER_CLASSES)) == ("remyelinating", "demyelinating")
    assert probability_labels(ClassMap.parse("a_b=2,3;ab=5,6")) == ("class0", "class1")  # would collide
    assert entity_value("out_of_distribution") == "OOD"
    assert [task_name(m) for m in (PHENOTYPE, ClassMap.parse(PAPER_CLASSES), ClassMap.parse("a=2;b=3"))] == [
        "phenotype", "binary", "custom"]
    rows = legend_rows(ClassMap.parse("a=2;odd=3,4"))
    assert {r["index"]: r["name"] for r in rows} == {**CALL_LEGEND, 11: "odd"}
    assert all(str(r["color"]).startswith("#") and len(str(r["color"])) == 7 for r in rows)
    assert len({r["abbreviation"] for r in rows}) == len(rows)


def test_prediction_folder_is_a_bids_derivative_that_pybids_indexes(tmp_path, monkeypatch, capsys):
    bids = pytest.importorskip("bids")
    run = make_run(tmp_path / "run")
    raw = tmp_path / "raw"
    bids_input(raw, "01", "1")
    bids_input(raw, "01", "2", lesions=LESIONS[:2])
    bids_input(raw, "02", lesions=LESIONS[:1])
    out = tmp_path / "derivatives" / "mslesion"
    code, text = predict([run, raw, "--out", out], monkeypatch, capsys)
    assert code == 0, text
    description = json.loads((out / DATASET_DESCRIPTION).read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "mslesion"
    assert f"mslesion predict {run} {raw}" in description["GeneratedBy"][0]["Description"]

    layout = bids.BIDSLayout(out, validate=False, is_derivative=True)
    assert layout.get_subjects() == ["01", "02"] and layout.get_sessions() == ["1", "2"]
    for subject, session, n in (("01", "1", 3), ("01", "2", 2), ("02", None, 1)):
        where = {"subject": subject, **({"session": session} if session else {"session": bids.layout.Query.NONE})}
        (dseg,) = layout.get(desc="binary", suffix="dseg", extension=".nii.gz", **where)
        probs = layout.get(suffix="probseg", extension=".nii.gz", **where)
        assert sorted(p.entities["label"] for p in probs) == ["demyelinating", "remyelinating"]
        (table,) = layout.get(desc="binary", suffix="lesions", extension=".tsv", **where)
        (sidecar,) = layout.get(desc="binary", suffix="lesions", extension=".json", **where)
        rows = list(csv.DictReader(Path(table.path).read_text().splitlines(), delimiter="\t"))
        assert len(rows) == n and {(r["participant_id"], r["session_id"]) for r in rows} == {
            (f"sub-{subject}", f"ses-{session}" if session else "n/a")}
        assert set(json.loads(Path(sidecar.path).read_text())) == set(rows[0])  # every column described
        labels = np.asarray(nib.load(dseg.path).dataobj)
        value_of = {name: value for value, name in CALL_LEGEND.items()}
        for row in rows:
            assert labels[int(row["centre_i"]), int(row["centre_j"]), int(row["centre_k"])] == value_of[row["call"]]
    described = json.loads((out / LESION_PREDICTIONS_SIDECAR).read_text())
    assert set(described) == set(read_rows(out / LESION_PREDICTIONS)[0])
    summary = read_rows(out / PREDICTION_SUMMARY)
    assert [(r["participant_id"], r["session_id"], r["lesions"]) for r in summary] == [
        ("sub-01", "ses-1", "3"), ("sub-01", "ses-2", "2"), ("sub-02", "", "1")]
    # The legend, for BIDS and for two viewers.
    legend = list(csv.DictReader((out / legend_name("binary")).read_text().splitlines(), delimiter="\t"))
    assert list(legend[0]) == ["index", "name", "abbreviation", "color"]
    assert {int(r["index"]): r["name"] for r in legend} == CALL_LEGEND
    snap = [line for line in (out / itksnap_legend_name("binary")).read_text().splitlines() if line[:1] != "#"]
    assert len(snap) == len(CALL_LEGEND) and snap[3].split()[:4] == ["3", "228", "26", "28"]  # PRL: red
    assert snap[3].split()[-1] == '"PRL"'
    lut = (out / fsleyes_legend_name("binary")).read_text().splitlines()
    assert lut[2].split() == ["3", "0.89412", "0.10196", "0.10980", "PRL"] and len(lut) == len(CALL_LEGEND) - 1


def test_headers_keep_the_inputs_units_codes_and_affine(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run")
    s = write_subject(tmp_path / "s", "patient_07")
    for path in (s.mask, s.flair, s.qsm):  # scanner-anatomical sform, units in mm and seconds
        img = nib.load(path)
        img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=2)
        nib.save(img, path)
    out = tmp_path / "p"
    code, text = predict([run, "--mask", s.mask, "--flair", s.flair, "--qsm", s.qsm, "--subject", "patient_07",
                          "--out", out], monkeypatch, capsys)
    assert code == 0, text
    files = SubjectFiles(out, "patient07")
    for path in (files.label_map, files.probability_map("remyelinating")):
        img = nib.load(path)
        assert img.header.get_xyzt_units() == ("mm", "sec")
        assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
        np.testing.assert_array_equal(img.affine, nib.load(s.mask).affine)
    summary = json.loads(files.summary.read_text())
    assert summary["source_id"] == "patient_07" and summary["inputs"]["flair"] == str(s.flair.resolve())


def test_runs_add_subjects_and_replacing_one_needs_overwrite(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run", channels=("flair", "mask"))
    a = write_subject(tmp_path / "a", "sub-a")
    b = write_subject(tmp_path / "b", "sub-b", lesions=LESIONS[:1])
    out = tmp_path / "p"

    def one(s, *extra):
        return predict([run, "--mask", s.mask, "--flair", s.flair, "--out", out, *extra], monkeypatch, capsys)

    assert one(a)[0] == 0
    first_a = SubjectFiles(out, "a").rows()
    code, text = one(b)
    assert code == 0, text
    assert [r["participant_id"] for r in read_rows(out / LESION_PREDICTIONS)] == ["sub-a"] * 3 + ["sub-b"]
    assert [r["participant_id"] for r in read_rows(out / PREDICTION_SUMMARY)] == ["sub-a", "sub-b"]
    assert len(json.loads((out / DATASET_DESCRIPTION).read_text())["GeneratedBy"]) == 2  # both commands
    # The same subject again: refused without --overwrite, nothing changed; with it, only that subject replaced.
    before = SubjectFiles(out, "b").lesions.read_bytes()
    code, text = one(b)
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "sub-b" in lines[0] and "--overwrite" in lines[0], text
    assert SubjectFiles(out, "b").lesions.read_bytes() == before
    code, text = one(b, "--overwrite")
    assert code == 0, text
    assert SubjectFiles(out, "a").rows() == first_a
    assert len(read_rows(out / LESION_PREDICTIONS)) == 4
    # Other settings would mix two kinds of results in one dataset: refused, or everything replaced with --overwrite.
    code, text = one(b, "--abstain", "0.9")
    assert code == 2 and "abstain" in text and "--overwrite" in text, text
    code, text = one(b, "--abstain", "0.9", "--overwrite")
    assert code == 0, text
    assert not SubjectFiles(out, "a").folder.exists()
    assert [r["participant_id"] for r in read_rows(out / PREDICTION_SUMMARY)] == ["sub-b"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p")]  # no staging folder left behind


def test_ids_that_become_the_same_label_are_refused(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run", channels=("flair", "mask"))
    a = write_subject(tmp_path / "a", "a")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"subject,flair,mask\npatient_07,{a.flair},{a.mask}\npatient07,{a.flair},{a.mask}\n")
    code, text = predict([run, manifest, "--out", tmp_path / "p"], monkeypatch, capsys)
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "patient_07" in lines[0] and "sub-patient07" in lines[0], text
    assert not (tmp_path / "p").exists()
