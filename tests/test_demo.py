"""The demo's table helpers and its separation of quick and full runs (the demo itself runs in `make demo`)."""

from __future__ import annotations

import pytest
from rich.console import Console

from mslesion.demo import FULL, QUICK, demo_markdown


def test_quick_setting_keeps_the_paper_cohort_and_split():
    assert QUICK.patients == FULL.patients == 115 and QUICK.lesions_scale == FULL.lesions_scale == 1.0
    assert FULL.augment == "full" and FULL.epochs == 15 and FULL.batch_size == 128 and FULL.lr_milestones == (6, 10)


def test_demo_markdown_has_baseline_and_paper_columns():
    row = {"channels": "qsm", "accuracy": 0.8, "balanced_accuracy": 0.75, "roc_auc": 0.9,
           "tpr": {"remyelinating": 0.7, "demyelinating": 0.8}, "baseline": 0.6653, "paper_accuracy": 89.31}
    text = demo_markdown([row], QUICK)
    assert "| none (baseline) | 66.53% |" in text
    assert "| qsm | 80.00% | 75.00% | 0.900 | 70.00% | 80.00% | 89.31% |" in text


@pytest.mark.slow
def test_a_tiny_demo_writes_its_table_and_skips_finished_runs_when_rerun(tmp_path, monkeypatch):
    import mslesion.demo as demo
    from mslesion.config import DemoConfig

    monkeypatch.setattr(demo, "QUICK", demo.DemoSettings(patients=8, lesions_scale=0.5, epochs=1, augment="none",
                                                         lr_milestones=(5,), batch_size=16))
    cfg = DemoConfig(out=str(tmp_path), channel_sets=("qsm", "flair,mask"))
    rows = demo.run_demo(cfg, console=Console(quiet=True))
    assert [r["channels"] for r in rows] == ["qsm", "flair,mask"]
    assert all(0 <= r["accuracy"] <= 1 and r["n_test"] > 0 for r in rows)
    assert "| qsm |" in (tmp_path / "quick" / "results.md").read_text()
    model = tmp_path / "quick" / "qsm" / "model.pt"
    before = model.stat().st_mtime_ns
    again = demo.run_demo(cfg, console=Console(quiet=True))
    assert model.stat().st_mtime_ns == before  # finished runs are read, not retrained
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
