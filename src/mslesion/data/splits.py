"""Train/test splits: the paper's lesion-level split, patient-grouped splits and CV folds.

Every split is a pure function of (labels, patients, seed): same seed and data ⇒ same split.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from mslesion.errors import InputError

SPLITS = ("paper", "patient", "predefined")


def paper_split(labels: np.ndarray, train_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Per label code, floor(train_fraction × n) shuffled lesions to train and the rest to test.

    MATLAB's splitEachLabel semantics, stratified on the original Table 1 codes: on the Table 1 counts with
    0.7 this gives 160 remyelinating and 318 demyelinating test lesions, as in the paper.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for code in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == code))
        n_train = int(np.floor(train_fraction * len(members) + 1e-9))
        train.append(members[:n_train])
        test.append(members[n_train:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def patient_folds(targets: np.ndarray, patients: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Stratified folds grouped by patient: a patient's lesions all fall in one fold; another seed, other folds.

    Two classes: sklearn's StratifiedGroupKFold. It visits patients in the order of the spread of their class
    counts, and its shuffle only reorders patients whose spreads tie; with two classes ties are common and each
    seed gives other folds. With more classes (the phenotype task) spreads rarely tie and every seed gave the same
    folds (measured: 1 distinct fold set for 5 seeds on a six-class cohort), so there the patients are visited in
    a seeded random order instead (seeded_group_folds)."""
    n_patients = len(np.unique(patients))
    if n_patients < n_folds:
        raise InputError(f"{n_patients} patients cannot be split into {n_folds} patient-grouped folds")
    if len(np.unique(targets)) > 2:
        return seeded_group_folds(targets, patients, n_folds, seed)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(targets)), targets, groups=patients)]


def seeded_group_folds(targets: np.ndarray, patients: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Patients in a seeded random order, each put in the fold where the class proportions across folds stay most
    even (least mean standard deviation over classes of each fold's share of the class; ties: the fold with the
    fewest lesions). The first n_folds patients open one fold each, so no fold is empty."""
    names, group = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    _, y = np.unique(targets, return_inverse=True)
    counts = np.zeros((len(names), y.max() + 1))
    np.add.at(counts, (group, y), 1)
    totals = counts.sum(0)
    fold_counts = np.zeros((n_folds, counts.shape[1]))
    folds = np.empty(len(names), dtype=np.int64)
    for visited, g in enumerate(np.random.default_rng(seed).permutation(len(names))):
        if visited < n_folds:
            best = visited
        else:
            trial = np.repeat(fold_counts[None], n_folds, 0)  # trial[f]: the folds with patient g added to fold f
            trial[np.arange(n_folds), np.arange(n_folds)] += counts[g]
            spread = (trial / totals).std(axis=1).mean(axis=1)
            best = int(np.lexsort((fold_counts.sum(1), np.round(spread, 12)))[0])
        fold_counts[best] += counts[g]
        folds[g] = best
    return [np.flatnonzero(folds[group] == f) for f in range(n_folds)]


def patient_split(
    targets: np.ndarray, patients: np.ndarray, train_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Stratified, patient-grouped split: about (1 − train_fraction) of lesions to test, no patient on both sides.

    Built from 10 stratified group folds, of which round(10 × test fraction) form the test set.
    """
    n_folds = 10 if len(np.unique(patients)) >= 10 else len(np.unique(patients))
    n_test_folds = max(1, round(n_folds * (1 - train_fraction)))
    folds = patient_folds(targets, patients, n_folds, seed)
    test = np.sort(np.concatenate(folds[:n_test_folds]))
    train = np.setdiff1d(np.arange(len(targets)), test)
    return {"train": train, "test": test}


def predefined_split(split: np.ndarray | None, path: str) -> dict[str, np.ndarray]:
    if split is None:
        raise InputError("--split predefined needs a 'split' dataset in the file", path)
    out = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    for name in ("train", "test"):
        if len(out[name]) == 0:
            raise InputError(f"predefined split has no '{name}' samples", path)
    return {k: v for k, v in out.items() if len(v)}


def carve_validation(
    train: np.ndarray, targets: np.ndarray, patients: np.ndarray, fraction: float, seed: int, by_patient: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Split a validation part off the training indices (for temperature scaling / model selection)."""
    if fraction <= 0:
        return train, np.empty(0, dtype=np.int64)
    sub = (
        patient_split(targets[train], patients[train], 1 - fraction, seed + 1)
        if by_patient
        else paper_split(targets[train], 1 - fraction, seed + 1)
    )
    return train[sub["train"]], train[sub["test"]]


def check_split(split: dict[str, np.ndarray], targets: np.ndarray, n_classes: int, path: str) -> None:
    for part in ("train", "test"):
        counts = np.bincount(targets[split[part]], minlength=n_classes)
        if (counts == 0).any():
            raise InputError(f"the {part} split has an empty class (counts per class: {counts.tolist()})", path)
