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
    """Stratified folds grouped by patient: a patient's lesions all fall in one fold."""
    n_patients = len(np.unique(patients))
    if n_patients < n_folds:
        raise InputError(f"{n_patients} patients cannot be split into {n_folds} patient-grouped folds")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(targets)), targets, groups=patients)]


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
