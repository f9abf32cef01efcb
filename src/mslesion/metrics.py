"""Classification metrics of predicted probabilities: pure functions of arrays (no files, no models)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score


def classification_metrics(targets: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Metrics of predicted class probabilities [N, K] against true class indices [N]."""
    n_classes = len(class_names)
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(targets, predicted, labels=list(range(n_classes)))
    counts = np.bincount(targets, minlength=n_classes)
    tpr = {name: float(matrix[i, i] / counts[i]) if counts[i] else float("nan")
           for i, name in enumerate(class_names)}
    return {
        "n": int(len(targets)),
        "n_per_class": {name: int(counts[i]) for i, name in enumerate(class_names)},
        "accuracy": float((predicted == targets).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(targets, predicted)),
        "true_positive_rate": tpr,
        "roc_auc": roc_auc(targets, probabilities),
        "confusion_matrix": matrix.tolist(),
        "majority_baseline_accuracy": float(counts.max() / counts.sum()),
    }


def roc_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary: AUC of the second class's probability; more classes: one-vs-rest macro average."""
    if len(np.unique(targets)) < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(targets, probabilities[:, 1]))
    return float(roc_auc_score(targets, probabilities, multi_class="ovr",
                               labels=list(range(probabilities.shape[1]))))
