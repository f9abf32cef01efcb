"""Run folders written before the format had a version (format 1, mslesion 0.1.0) keep working.

tests/data/v1_run is a two-epoch run trained on tests/data/v1_patches.h5 by mslesion 0.1.0 (commit d17d579)
with `train … --channels qsm --augment random --epochs 2 --batch-size 8 --lr-milestones 2 --val-fraction 0.2
--precision fp32`. Its config.json names the data by the absolute path it had then, which the tests recreate.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mslesion.cli import app

FIXTURE = Path(__file__).parent / "data"
RECORDED_DATA = Path("/tmp/mslesion-v1-fixture/patches.h5")


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    RECORDED_DATA.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURE / "v1_patches.h5", RECORDED_DATA)
    run = tmp_path / "v1_run"
    shutil.copytree(FIXTURE / "v1_run", run)
    return run


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def probabilities(path: Path) -> list[tuple[str, float]]:
    with open(path, newline="") as f:
        return [(row["lesion"], float(row["p_demyelinating"])) for row in csv.DictReader(f)]


def test_evaluate_reproduces_the_old_metrics_and_predictions(old_run: Path):
    recorded_metrics = json.loads((old_run / "metrics.json").read_text())
    recorded_predictions = probabilities(old_run / "predictions.csv")
    invoke("evaluate", old_run)
    metrics = json.loads((old_run / "metrics.json").read_text())
    for key in ("n", "n_per_class", "accuracy", "confusion_matrix", "split", "channels"):
        assert metrics[key] == recorded_metrics[key], key
    assert metrics["roc_auc"] == pytest.approx(recorded_metrics["roc_auc"], abs=1e-6)
    now = probabilities(old_run / "predictions.csv")
    assert [lesion for lesion, _ in now] == [lesion for lesion, _ in recorded_predictions]
    assert [p for _, p in now] == pytest.approx([p for _, p in recorded_predictions], abs=1e-5)


def test_predict_on_the_patch_file_and_report(old_run: Path, tmp_path: Path):
    invoke("predict", old_run, RECORDED_DATA, "--out", tmp_path / "pred", "--quiet")
    with open(tmp_path / "pred" / "lesion_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 42  # every lesion of the file
    by_lesion = {(r["subject"], r["lesion"]): float(r["p_demyelinating"]) for r in rows}
    with open(old_run / "predictions.csv", newline="") as f:
        for recorded in csv.DictReader(f):
            assert by_lesion[(recorded["patient"], recorded["lesion"])] == pytest.approx(
                float(recorded["p_demyelinating"]), abs=1e-5)
    invoke("report", old_run, "--out", tmp_path / "report.html")
    assert (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_resume_of_a_finished_old_run_rebuilds_the_same_model(old_run: Path):
    recorded = torch.load(FIXTURE / "v1_run" / "model.pt", weights_only=True)
    (old_run / "model.pt").unlink()
    invoke("train", RECORDED_DATA, "--out", old_run, "--channels", "qsm", "--augment", "random", "--epochs", "2",
           "--batch-size", "8", "--lr-milestones", "2", "--val-fraction", "0.2", "--precision", "fp32", "--resume",
           "--quiet")
    rebuilt = torch.load(old_run / "model.pt", weights_only=True)
    assert rebuilt["channels"] == recorded["channels"] and rebuilt["classes"] == recorded["classes"]
    for key, value in recorded["state_dict"].items():
        assert torch.allclose(rebuilt["state_dict"][key].float(), value.float(), rtol=1e-4, atol=1e-5), key
