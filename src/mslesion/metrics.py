"""Classification metrics of predicted probabilities: pure functions of arrays (no files, no models).

Point metrics (accuracy, balanced accuracy, ROC AUC, PR AUC, partial ROC AUC, per-class TPR), abstention
(coverage and accuracy when low-confidence predictions are reported as "uncertain"), and the statistics of
an ablation: 95% bootstrap confidence intervals that resample *patients* (lesions of one patient are not
independent) and a paired, patient-level permutation test between two models on the same lesions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

PARTIAL_AUC_MAX_FPR = 0.1
# The metrics summarised with confidence intervals in an ablation (all in [0, 1]).
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "partial_roc_auc")


def classification_metrics(targets: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Metrics of predicted class probabilities [N, K] against true class indices [N]."""
    n_classes = len(class_names)
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(targets, predicted, labels=list(range(n_classes)))
    counts = np.bincount(targets, minlength=n_classes)
    tpr = {name: float(matrix[i, i] / counts[i]) if counts[i] else float("nan")
           for i, name in enumerate(class_names)}
    rare = rare_class(targets, n_classes)
    return {
        "n": int(len(targets)),
        "n_per_class": {name: int(counts[i]) for i, name in enumerate(class_names)},
        "accuracy": float((predicted == targets).mean()),
        # mean recall over the classes present: sklearn's balanced accuracy, without its warning for a class the
        # test set lacks
        "balanced_accuracy": float(np.nanmean(list(tpr.values()))) if len(targets) else float("nan"),
        "true_positive_rate": tpr,
        "roc_auc": roc_auc(targets, probabilities),
        "pr_auc": pr_auc(targets, probabilities),
        "partial_roc_auc": partial_roc_auc(targets, probabilities),
        "positive_class": class_names[rare] if n_classes == 2 else None,
        "confusion_matrix": matrix.tolist(),
        "majority_baseline_accuracy": float(counts.max() / counts.sum()),
    }


def roc_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary: AUC of the second class's probability; more classes: the one-vs-rest macro average over the classes
    present in `targets` (a class absent from a test set or a bootstrap resample has no AUC; averaging over the
    others keeps the macro AUC defined, where sklearn's would be NaN)."""
    if len(np.unique(targets)) < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(targets, probabilities[:, 1]))
    return float(np.mean([roc_auc_score(targets == c, probabilities[:, c]) for c in np.unique(targets)]))


def rare_class(targets: np.ndarray, n_classes: int) -> int:
    """The class with the fewest samples (ties: the lower index); the positive class of PR and partial AUC."""
    return int(np.argmin(np.bincount(targets, minlength=n_classes)))


def pr_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) with the rare class as positive.

    Binary only in that sense; with more classes, the macro average of every class against the rest.
    """
    return _per_positive_class(targets, probabilities, average_precision_score)


def partial_roc_auc(targets: np.ndarray, probabilities: np.ndarray, max_fpr: float = PARTIAL_AUC_MAX_FPR) -> float:
    """ROC AUC over false-positive rates below max_fpr, rare class as positive (sklearn's max_fpr).

    Note: sklearn returns the McClish (1989) standardised value, 0.5 for chance and 1 for perfect, not the
    raw area (which would be at most max_fpr).
    """
    return _per_positive_class(targets, probabilities, lambda y, s: roc_auc_score(y, s, max_fpr=max_fpr))


def _per_positive_class(targets: np.ndarray, probabilities: np.ndarray,
                        score: Callable[[np.ndarray, np.ndarray], float]) -> float:
    n_classes = probabilities.shape[1]
    if len(np.unique(targets)) < 2:
        return float("nan")
    positives = [rare_class(targets, n_classes)] if n_classes == 2 else range(n_classes)
    values = [float(score(targets == c, probabilities[:, c])) for c in positives if np.any(targets == c)]
    return float(np.mean(values))


# --- abstention ----------------------------------------------------------------------------------------------


def abstention_metrics(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Predictions whose top probability is below `threshold` are "uncertain": coverage and covered accuracy."""
    confidence = probabilities.max(1)
    covered = confidence >= threshold
    correct = probabilities.argmax(1) == targets
    return {
        "threshold": float(threshold),
        "coverage": float(covered.mean()) if len(targets) else float("nan"),
        "n_uncertain": int((~covered).sum()),
        "covered_accuracy": float(correct[covered].mean()) if covered.any() else float("nan"),
    }


def coverage_accuracy_curve(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Coverage and accuracy on the covered lesions for every confidence threshold that changes them."""
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == targets).astype(float)
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    kept = np.arange(1, len(order) + 1)
    last_of_tie = np.r_[confidence[1:] != confidence[:-1], True]  # a threshold keeps all equal confidences
    return {
        "threshold": confidence[last_of_tie],
        "coverage": (kept / len(order))[last_of_tie],
        "accuracy": (np.cumsum(correct) / kept)[last_of_tie],
    }


# --- confidence intervals and paired tests over patients ---------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """Predicted probabilities [N, K] of N lesions with their true classes and patients (one run or seed)."""

    targets: np.ndarray
    probabilities: np.ndarray
    patients: np.ndarray


class PatientSampler:
    """Maps a sample of patients (indices into `patients`, repeats allowed) to the lesions of each prediction set.

    A patient drawn twice contributes its lesions twice; a patient absent from a set (another seed's test
    split) contributes nothing to it.
    """

    def __init__(self, sets: Sequence[Predictions]) -> None:
        self.patients = np.unique(np.concatenate([np.asarray(s.patients, dtype=str) for s in sets]))
        self.by_patient = []
        for prediction_set in sets:
            codes = np.searchsorted(self.patients, np.asarray(prediction_set.patients, dtype=str))
            self.by_patient.append([np.flatnonzero(codes == p) for p in range(len(self.patients))])

    def lesions(self, set_index: int, patient_sample: np.ndarray) -> np.ndarray:
        parts = [self.by_patient[set_index][int(p)] for p in patient_sample]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def summary_vector(sets: Sequence[Predictions], sampler: PatientSampler | None = None,
                   patient_sample: np.ndarray | None = None) -> np.ndarray:
    """SUMMARY_METRICS then each class's TPR: computed per prediction set (seed) and averaged over the sets."""
    rows = []
    for i, s in enumerate(sets):
        idx = np.arange(len(s.targets)) if sampler is None else sampler.lesions(i, patient_sample)
        if len(idx):
            rows.append(_fast_metrics(s.targets[idx], s.probabilities[idx], s.probabilities.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a metric undefined on every set
        return np.nanmean(np.asarray(rows, dtype=float), axis=0)


def _fast_metrics(targets: np.ndarray, probabilities: np.ndarray, n_classes: int) -> list[float]:
    predicted = probabilities.argmax(1)
    counts = np.bincount(targets, minlength=n_classes)
    hits = np.bincount(targets[predicted == targets], minlength=n_classes)
    tpr = [hits[c] / counts[c] if counts[c] else np.nan for c in range(n_classes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample may lack a class: its AUC is NaN, not an error
        # balanced accuracy = mean per-class recall (sklearn's definition), from the TPRs already at hand
        return [float((predicted == targets).mean()), float(np.nanmean(tpr)), roc_auc(targets, probabilities),
                pr_auc(targets, probabilities), partial_roc_auc(targets, probabilities), *tpr]


def patient_bootstrap(sets: Sequence[Predictions], n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Point estimates and percentile bootstrap CIs (scipy.stats.bootstrap) of summary_vector.

    The resampled unit is the patient: each bootstrap sample draws patients with replacement and takes all
    their lesions. With several prediction sets (seeds), the statistic is their mean, so the interval reflects
    patient sampling of the seed-averaged result.
    """
    sampler = PatientSampler(sets)

    def statistic(patient_sample: np.ndarray) -> np.ndarray:
        return summary_vector(sets, sampler, patient_sample)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a NaN component: handled below
        result = stats.bootstrap((np.arange(len(sampler.patients)),), statistic, n_resamples=n_resamples,
                                 confidence_level=confidence, method="percentile", vectorized=False,
                                 rng=np.random.default_rng(seed))
    low, high = np.array(result.confidence_interval.low), np.array(result.confidence_interval.high)
    # scipy's percentiles are NaN for a component undefined in some resample (a rare class's TPR when no patient
    # with that class was drawn); those components take the percentiles of the resamples where they are defined
    undefined = np.isnan(low) | np.isnan(high)
    if undefined.any():
        tail = 100 * (1 - confidence) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a component NaN in every resample stays NaN
            samples = np.asarray(result.bootstrap_distribution)[undefined]
            low[undefined] = np.nanpercentile(samples, tail, axis=-1)
            high[undefined] = np.nanpercentile(samples, 100 - tail, axis=-1)
    return {"estimate": summary_vector(sets), "low": low, "high": high}


def paired_comparison(sets_a: Sequence[Predictions], sets_b: Sequence[Predictions], metric: str = "roc_auc",
                      n_resamples: int = 1000, seed: int = 0) -> dict[str, float | str]:
    """Difference A − B of one summary metric on the same lesions, its patient-bootstrap 95% CI, and the p-value
    of a paired permutation test (scipy.stats.permutation_test) that swaps whole patients between A and B.

    sets_a[i] and sets_b[i] must hold the same lesions in the same order (same folds and seed). Under H0
    (A and B equally good), exchanging a patient's predictions by A with those by B leaves the distribution
    of the difference unchanged; permuting patients rather than lesions respects their clustering.
    """
    for a, b in zip(sets_a, sets_b, strict=True):
        if len(a.targets) != len(b.targets) or not np.array_equal(a.targets, b.targets):
            raise ValueError("paired comparison needs predictions of the same lesions by both models")
    column = SUMMARY_METRICS.index(metric)
    sampler = PatientSampler(sets_a)
    n_patients = len(sampler.patients)

    def metric_of(sample: np.ndarray) -> float:
        # a sample holds "patient p as predicted by A" as p and "as predicted by B" as p + n_patients
        from_a, from_b = sample[sample < n_patients], sample[sample >= n_patients] - n_patients
        mixed = []
        for i, (a, b) in enumerate(zip(sets_a, sets_b, strict=True)):
            idx_a, idx_b = sampler.lesions(i, from_a), sampler.lesions(i, from_b)
            mixed.append(Predictions(np.concatenate([a.targets[idx_a], b.targets[idx_b]]),
                                     np.concatenate([a.probabilities[idx_a], b.probabilities[idx_b]]),
                                     np.concatenate([a.patients[idx_a], b.patients[idx_b]])))
        return float(summary_vector(mixed)[column])

    everyone = np.arange(n_patients)
    test = stats.permutation_test((everyone, everyone + n_patients), lambda x, y: metric_of(x) - metric_of(y),
                                  permutation_type="samples", vectorized=False, n_resamples=n_resamples,
                                  alternative="two-sided", rng=np.random.default_rng(seed))

    def difference(patient_sample: np.ndarray) -> float:
        return float(summary_vector(sets_a, sampler, patient_sample)[column]
                     - summary_vector(sets_b, sampler, patient_sample)[column])

    interval = stats.bootstrap((everyone,), difference, n_resamples=n_resamples, method="percentile",
                               vectorized=False, rng=np.random.default_rng(seed)).confidence_interval
    return {"metric": metric, "difference": float(test.statistic), "low": float(interval.low),
            "high": float(interval.high), "p_value": float(test.pvalue)}


# --- the phenotype task: every Table 1 code a class ------------------------------------------------------------


def patient_resamples(patients: np.ndarray, n_resamples: int, seed: int):
    """Lesion indices of `n_resamples` bootstrap samples that draw patients with replacement."""
    names, codes = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    by_patient = [np.flatnonzero(codes == p) for p in range(len(names))]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield np.concatenate([by_patient[p] for p in rng.integers(0, len(names), len(names))])


def bootstrap_interval(patients: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int = 1000,
                       seed: int = 0, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of a vector statistic of lesion indices over patient resamples; NaN resamples (a class
    absent from the sample) are left out of each component's percentiles."""
    values = np.asarray([statistic(idx) for idx in patient_resamples(patients, n_resamples, seed)], dtype=float)
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a component NaN in every resample
        return np.nanpercentile(values, tail, axis=0), np.nanpercentile(values, 100 - tail, axis=0)


def volume_matched(positive: np.ndarray, volumes: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of a subset in which every negative has one positive of the nearest log volume (drawn without
    replacement, negatives in a seeded random order), so that size alone cannot separate the two groups."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    rng = np.random.default_rng(seed)
    free = np.ones(len(pos), bool)
    log_pos = np.log(np.maximum(volumes[pos], 1e-3))
    chosen = []
    for n in rng.permutation(neg):
        if not free.any():
            break
        distance = np.where(free, np.abs(log_pos - np.log(max(volumes[n], 1e-3))), np.inf)
        best = int(np.argmin(distance))
        free[best] = False
        chosen.extend((n, pos[best]))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _ap(y: np.ndarray, score: np.ndarray) -> float:
    return float(average_precision_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _with_interval(estimate: float, low: float, high: float) -> dict[str, float]:
    return {"estimate": estimate, "low": float(low), "high": float(high)}


def derived_binary_score(probabilities: np.ndarray, remyelinating: list[int], demyelinating: list[int]) -> np.ndarray:
    """A phenotype model's demyelinating score on the binary task: p_dem / (p_rem + p_dem)."""
    p_dem = probabilities[:, demyelinating].sum(1)
    return p_dem / np.maximum(p_dem + probabilities[:, remyelinating].sum(1), 1e-12)


def phenotype_metrics(targets: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...],
                      patients: np.ndarray, gate_class: int, remyelinating: list[int], demyelinating: list[int],
                      volumes: np.ndarray | None = None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """The phenotype task's honest report (patient-bootstrap 95% CIs throughout):

    - per-class true-positive rate; a class absent from the test set is reported as "absent", not 0 or 1;
    - the unclassifiable gate: class `gate_class` vs the rest by its probability, ROC AUC and PR AUC, also on
      gate lesions volume-matched to the others (when volumes are known);
    - the derived binary task on the lesions of the remyelinating/demyelinating classes: demyelinating scored by
      p_dem / (p_rem + p_dem), as the dedicated binary model would be.
    """
    targets, patients = np.asarray(targets), np.asarray(patients)
    counts = np.bincount(targets, minlength=len(class_names))
    predicted = probabilities.argmax(1)

    def tpr(idx: np.ndarray) -> np.ndarray:
        n = np.bincount(targets[idx], minlength=len(class_names)).astype(float)
        hits = np.bincount(targets[idx][predicted[idx] == targets[idx]], minlength=len(class_names))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, hits / n, np.nan)

    low, high = bootstrap_interval(patients, tpr, n_resamples, seed)
    point = tpr(np.arange(len(targets)))
    per_class = {name: "absent" if counts[c] == 0 else _with_interval(float(point[c]), low[c], high[c])
                 for c, name in enumerate(class_names)}

    gate_y, gate_score = targets == gate_class, probabilities[:, gate_class]
    derived = np.isin(targets, remyelinating + demyelinating)
    binary_score = derived_binary_score(probabilities, remyelinating, demyelinating)
    binary_y = np.isin(targets, demyelinating)
    matched = volume_matched(gate_y, volumes, seed) if volumes is not None else None

    def summary(idx: np.ndarray) -> np.ndarray:
        d = idx[derived[idx]]
        values = [_auc(gate_y[idx], gate_score[idx]), _ap(gate_y[idx], gate_score[idx]),
                  _auc(binary_y[d], binary_score[d]),
                  float(((binary_score[d] >= 0.5) == binary_y[d]).mean()) if len(d) else np.nan]
        if matched is not None:
            m = np.intersect1d(idx, matched)  # resampled patients' lesions that are in the matched set
            values += [_auc(gate_y[m], gate_score[m]), _ap(gate_y[m], gate_score[m])]
        return np.asarray(values)

    everyone = np.arange(len(targets))
    point_summary = summary(everyone)
    low, high = bootstrap_interval(patients, summary, n_resamples, seed)
    named = ["gate_roc_auc", "gate_pr_auc", "derived_binary_roc_auc", "derived_binary_accuracy",
             "gate_roc_auc_volume_matched", "gate_pr_auc_volume_matched"]
    result = {
        "confusion_matrix": confusion_matrix(targets, predicted, labels=list(range(len(class_names)))).tolist(),
        "class_names": list(class_names),
        "true_positive_rate": per_class,
        "macro_roc_auc": float(np.nanmean([_auc(targets == c, probabilities[:, c]) for c in np.unique(targets)])
                               if len(np.unique(targets)) > 1 else np.nan),  # over the classes present
        "gate_class": class_names[gate_class],
        "gate_prevalence": float(gate_y.mean()) if len(targets) else float("nan"),
        "n_derived_binary": int(derived.sum()),
        "n_volume_matched": int(len(matched)) if matched is not None else 0,
    }
    for n, name in enumerate(named[: len(point_summary)]):
        result[name] = _with_interval(float(point_summary[n]), low[n], high[n])
    return result
