"""The prediction report: every subject with its burden table, overview and one card per lesion; a cohort table;
a subject whose inputs moved keeps its tables; renders in a headless browser."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pytest
from test_bids import bids_input
from test_extract import LESIONS, run_cli
from test_predict import make_run
from test_report import browser_screenshot, outline

from mslesion.config import PredictConfig
from mslesion.data.subjects import discover
from mslesion.errors import InputError
from mslesion.predict import predict_subjects
from mslesion.report_predictions import write_prediction_report


@pytest.fixture(scope="module")
def prediction_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict_report")
    run = make_run(root / "run")
    raw = root / "raw"
    bids_input(raw, "01", "1")
    bids_input(raw, "02", lesions=LESIONS[:2], seed=1)
    out = root / "pred"
    predict_subjects(PredictConfig(run=str(run), out=str(out)), discover(raw), show_progress=False)
    return out


def test_prediction_report_shows_every_subject_and_lesion(prediction_folder: Path, tmp_path: Path):
    out = write_prediction_report(prediction_folder, tmp_path / "report.html", show_progress=False)
    parsed = outline(out)
    assert parsed.sections == ["cohort", "sub-01_ses-1", "sub-02", "configuration"]
    assert parsed.external == []  # self-contained
    by_section = {s: [src for section, src in parsed.images if section == s] for s in parsed.sections}
    # an overview and one card per lesion (3 and 2), every image embedded
    assert len(by_section["sub-01_ses-1"]) == 1 + 3 and len(by_section["sub-02"]) == 1 + 2
    assert all(src.startswith("data:image/png;base64,") for _, src in parsed.images)
    text = html.unescape(out.read_text())
    assert "3 lesions: mid axial slice of each channel (flair | qsm | mask" in text
    assert re.search(r"<td>sub-02</td><td></td><td>2</td>", text)  # the cohort table: subject, session, lesions
    assert "PRL count: – (this model has no PRL class)" in text


def test_a_subject_whose_images_moved_keeps_its_tables(prediction_folder: Path, tmp_path: Path):
    copy = tmp_path / "pred"
    shutil.copytree(prediction_folder, copy)
    moved = tmp_path / "moved"
    summary = next(copy.glob("sub-02/anat/*_summary.json"))
    flair = re.search(r'"flair": "([^"]+)"', summary.read_text()).group(1)
    summary.write_text(summary.read_text().replace(flair, str(moved / "gone_FLAIR.nii.gz")))
    out = write_prediction_report(copy, tmp_path / "report.html", show_progress=False)
    text = html.unescape(out.read_text())
    assert "Images unavailable (input moved?)" in text and "gone_FLAIR.nii.gz" in text
    parsed = outline(out)
    assert len([1 for section, _ in parsed.images if section == "sub-02"]) == 0
    assert len([1 for section, _ in parsed.images if section == "sub-01_ses-1"]) == 4


def test_a_folder_without_subjects_is_refused(tmp_path: Path):
    with pytest.raises(InputError, match="not a prediction folder"):
        write_prediction_report(tmp_path, tmp_path / "r.html", show_progress=False)


def test_prediction_report_renders_in_a_browser(prediction_folder: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "report.html"
    code, text = run_cli(["report", prediction_folder, "--out", out, "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    pixels = browser_screenshot(out, tmp_path / "shot.png", height=1600)
    assert pixels.std() > 0.05  # not a blank page
    # the legend's colours are drawn: the demyelinating or remyelinating swatch appears somewhere on the page
    colours = {tuple(round(c * 255) for c in px[:3]) for px in pixels[::2, ::2].reshape(-1, pixels.shape[-1])}
    assert colours & {(27, 158, 119), (217, 95, 2)}
