"""The demo's table helpers and its separation of quick and full runs (the demo itself runs in `make demo`)."""

from __future__ import annotations

from mslesion.demo import FULL, QUICK, results_markdown


def test_quick_setting_keeps_the_paper_cohort_and_split():
    assert QUICK.patients == FULL.patients == 115 and QUICK.lesions_scale == FULL.lesions_scale == 1.0
    assert FULL.augment == "full" and FULL.epochs == 15 and FULL.batch_size == 128 and FULL.lr_milestones == (6, 10)


def test_results_markdown_has_baseline_and_paper_columns():
    row = {"channels": "qsm", "accuracy": 0.8, "balanced_accuracy": 0.75, "roc_auc": 0.9,
           "tpr": {"remyelinating": 0.7, "demyelinating": 0.8}, "baseline": 0.6653, "paper_accuracy": 89.31}
    text = results_markdown([row], QUICK)
    assert "| none (baseline) | 66.53% |" in text
    assert "| qsm | 80.00% | 75.00% | 0.900 | 70.00% | 80.00% | 89.31% |" in text
