"""Metrics: rare-class PR/partial AUC, abstention, patient-level bootstrap CIs and paired tests."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mslesion.metrics import (
    SUMMARY_METRICS,
    Predictions,
    abstention_metrics,
    classification_metrics,
    coverage_accuracy_curve,
    paired_comparison,
    partial_roc_auc,
    patient_bootstrap,
    pr_auc,
    summary_vector,
)

NAMES = ("remyelinating", "demyelinating")


def binary(p_second: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_second, p_second], 1)


def noisy_scores(targets: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return binary(np.clip(strength * targets + rng.random(len(targets)) * (1 - strength), 0, 1))


def test_pr_auc_takes_the_rare_class_as_positive() -> None:
    targets = np.array([0] * 10 + [1] * 30)  # class 0 is rare
    probabilities = noisy_scores(targets, 0.3)
    expected = average_precision_score(targets == 0, probabilities[:, 0])
    assert pr_auc(targets, probabilities) == pytest.approx(expected)
    assert pr_auc(targets, probabilities) != pytest.approx(average_precision_score(targets == 1, probabilities[:, 1]))


def test_partial_auc_is_mcclish_standardised() -> None:
    targets = np.array([0] * 20 + [1] * 40)
    perfect = binary(targets.astype(float))
    assert partial_roc_auc(targets, perfect) == pytest.approx(1.0)  # the raw area would be 0.1
    probabilities = noisy_scores(targets, 0.2)
    assert partial_roc_auc(targets, probabilities) == pytest.approx(
        roc_auc_score(targets == 0, probabilities[:, 0], max_fpr=0.1))


def test_classification_metrics_report_the_new_metrics() -> None:
    targets = np.array([0, 0, 1, 1, 1, 1])
    metrics = classification_metrics(targets, binary(np.array([0.1, 0.6, 0.7, 0.8, 0.9, 0.4])), NAMES)
    assert metrics["positive_class"] == "remyelinating"
    assert 0 <= metrics["pr_auc"] <= 1 and 0 <= metrics["partial_roc_auc"] <= 1
    assert metrics["accuracy"] == pytest.approx(4 / 6)


def test_abstention_counts_low_confidence_predictions_as_uncertain() -> None:
    targets = np.array([0, 1, 1, 0])
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    result = abstention_metrics(targets, probabilities, 0.7)
    assert result["coverage"] == 0.5 and result["n_uncertain"] == 2
    assert result["covered_accuracy"] == 1.0  # the two wrong/unsure ones were below 0.7
    assert np.isnan(abstention_metrics(targets, probabilities, 0.95)["covered_accuracy"])


def test_coverage_accuracy_curve_ends_at_full_coverage_and_groups_ties() -> None:
    targets = np.array([0, 1, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    curve = coverage_accuracy_curve(targets, probabilities)
    assert curve["coverage"][-1] == 1.0
    assert curve["accuracy"][-1] == pytest.approx(classification_metrics(targets, probabilities, NAMES)["accuracy"])
    assert np.all(np.diff(curve["coverage"]) > 0)
    assert curve["threshold"].tolist() == [0.9, 0.7, 0.6]  # 0.7 and 0.6 occur twice: one threshold each
    assert curve["accuracy"][0] == 1.0  # the most confident prediction is right


def clustered_cohort(n_patients: int = 10, per_patient: int = 10) -> Predictions:
    """Half the patients predicted entirely right, half entirely wrong: lesions are far from independent."""
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    targets = np.tile([0, 1], n_patients * per_patient // 2)
    right = np.repeat(np.arange(n_patients) % 2 == 0, per_patient)
    p_second = np.where(right, targets, 1 - targets) * 0.8 + 0.1
    return Predictions(targets, binary(p_second), patients)


@pytest.mark.slow
def test_bootstrap_resamples_patients_not_lesions() -> None:
    cohort = clustered_cohort()
    ci = patient_bootstrap([cohort], n_resamples=400)
    accuracy = SUMMARY_METRICS.index("accuracy")
    assert ci["estimate"][accuracy] == pytest.approx(0.5)
    assert ci["low"][accuracy] <= 0.5 <= ci["high"][accuracy]
    # 10 independent units: ~±0.3; resampling the 100 lesions would give ~±0.1
    assert ci["high"][accuracy] - ci["low"][accuracy] > 0.4


def test_summary_vector_averages_over_seeds() -> None:
    targets = np.array([0, 1, 0, 1])
    patients = np.array(["a", "a", "b", "b"])
    right = Predictions(targets, binary(targets * 0.8 + 0.1), patients)
    wrong = Predictions(targets, binary((1 - targets) * 0.8 + 0.1), patients)
    assert summary_vector([right, wrong])[SUMMARY_METRICS.index("accuracy")] == pytest.approx(0.5)


@pytest.mark.slow
def test_paired_comparison_detects_a_better_model_and_not_an_identical_one() -> None:
    targets = np.tile([0, 1, 1], 40)
    patients = np.repeat([f"p{i}" for i in range(20)], 6)
    good = Predictions(targets, noisy_scores(targets, 0.6, seed=1), patients)
    poor = Predictions(targets, noisy_scores(targets, 0.0, seed=2), patients)
    better = paired_comparison([good], [poor], "roc_auc", n_resamples=99)
    assert better["difference"] > 0.3 and better["low"] > 0 and better["p_value"] < 0.05
    same = paired_comparison([good], [good], "balanced_accuracy", n_resamples=20)
    assert same["difference"] == 0 and same["p_value"] == pytest.approx(1.0)


def test_paired_comparison_refuses_different_lesions() -> None:
    a = Predictions(np.array([0, 1]), binary(np.array([0.2, 0.8])), np.array(["a", "b"]))
    b = Predictions(np.array([1, 0]), binary(np.array([0.2, 0.8])), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="same lesions"):
        paired_comparison([a], [b])


def test_macro_auc_averages_over_the_classes_present() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 60)  # four classes, the last absent (a rare class's test fold)
    probabilities = rng.dirichlet(np.ones(4), size=60)
    expected = np.mean([roc_auc_score(targets == c, probabilities[:, c]) for c in range(3)])
    assert classification_metrics(targets, probabilities, ("a", "b", "c", "d"))["roc_auc"] == pytest.approx(expected)
    full = np.r_[targets, [3, 3]]
    both = np.r_[probabilities, rng.dirichlet(np.ones(4), size=2)]
    assert classification_metrics(full, both, ("a", "b", "c", "d"))["roc_auc"] == pytest.approx(
        roc_auc_score(full, both, multi_class="ovr"))  # every class present: sklearn's macro AUC


def test_bootstrap_intervals_of_a_rare_class_skip_the_resamples_without_it() -> None:
    # class 2 lives in one patient of 12: most resamples hold it, some do not (its TPR undefined there)
    rng = np.random.default_rng(1)
    patients = np.repeat([f"p{i}" for i in range(12)], 5)
    targets = np.tile([0, 1, 0, 1, 0], 12)
    targets[:2] = 2
    probabilities = rng.dirichlet(np.ones(3), size=60)
    ci = patient_bootstrap([Predictions(targets, probabilities, patients)], n_resamples=200)
    assert not np.isnan(ci["low"]).any() and not np.isnan(ci["high"]).any()
    assert (ci["low"] <= ci["high"]).all()
    tpr_rare = len(SUMMARY_METRICS) + 2
    assert 0 <= ci["low"][tpr_rare] <= ci["high"][tpr_rare] <= 1
