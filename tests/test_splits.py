"""Splits: the paper's per-class floor(70%) split and patient-grouped splits."""

from __future__ import annotations

import numpy as np

from mslesion.data.splits import paper_split, patient_folds, patient_split
from mslesion.data.task import ClassMap
from mslesion.paper import PAPER_CLASSES, TABLE1_COUNTS


def table1_labels() -> np.ndarray:
    return np.concatenate([np.full(n, code) for code, n in TABLE1_COUNTS.items()])


def test_paper_split_gives_160_and_318_test_lesions_on_table1_counts():
    labels = table1_labels()
    targets = ClassMap.parse(PAPER_CLASSES).targets(labels)
    keep = targets >= 0
    split = paper_split(labels[keep], 0.7, seed=0)
    test_targets = targets[keep][split["test"]]
    assert (test_targets == 0).sum() == 160  # remyelinating
    assert (test_targets == 1).sum() == 318  # demyelinating
    # the paper's 1,479 oversampled training patches: 2 × 371 remyelinating + 737 demyelinating
    train_targets = targets[keep][split["train"]]
    assert 2 * (train_targets == 0).sum() + (train_targets == 1).sum() == 1479


def test_paper_split_is_a_partition_and_seeded():
    labels = np.repeat([2, 3, 5, 6], [20, 11, 30, 7])
    a, b, c = paper_split(labels, 0.7, 1), paper_split(labels, 0.7, 1), paper_split(labels, 0.7, 2)
    assert np.array_equal(a["test"], b["test"])
    assert not np.array_equal(a["test"], c["test"])
    assert sorted(np.concatenate([a["train"], a["test"]]).tolist()) == list(range(len(labels)))


def test_patient_split_has_no_patient_on_both_sides():
    rng = np.random.default_rng(0)
    patients = np.asarray([f"p{i}" for i in rng.integers(0, 30, 400)])
    targets = rng.integers(0, 2, 400)
    split = patient_split(targets, patients, 0.7, seed=3)
    assert not set(patients[split["train"]]) & set(patients[split["test"]])
    assert 0.2 < len(split["test"]) / 400 < 0.4
    assert set(targets[split["test"]]) == {0, 1}


def test_patient_folds_partition_patients():
    rng = np.random.default_rng(1)
    patients = np.asarray([f"p{i}" for i in rng.integers(0, 25, 300)])
    targets = rng.integers(0, 2, 300)
    folds = patient_folds(targets, patients, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(300))
    seen: set[str] = set()
    for fold in folds:
        fold_patients = set(patients[fold])
        assert not fold_patients & seen
        seen |= fold_patients


def six_class_cohort(n_patients: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patients with Table 1's class mix and varied lesion counts (whose class-count spreads rarely tie)."""
    rng = np.random.default_rng(seed)
    shares = np.array(list(TABLE1_COUNTS.values()), dtype=float)
    patients, targets = [], []
    for p in range(n_patients):
        n = int(rng.integers(10, 80))
        targets.append(rng.choice(6, size=n, p=shares / shares.sum()))
        patients += [f"p{p:02d}"] * n
    return np.concatenate(targets), np.asarray(patients)


def test_six_class_folds_change_with_the_seed_and_stay_patient_grouped_and_stratified():
    targets, patients = six_class_cohort()
    fold_sets = []
    for seed in range(5):
        folds = patient_folds(targets, patients, 5, seed)
        assert sorted(np.concatenate(folds).tolist()) == list(range(len(targets)))
        assert all(len(f) for f in folds)
        owners = [set(patients[f]) for f in folds]
        assert sum(len(o) for o in owners) == len(set(patients))  # no patient in two folds
        for c in (0, 2, 4):  # the common classes: each fold holds about a fifth of them
            shares = np.array([(targets[f] == c).sum() for f in folds]) / (targets == c).sum()
            assert np.abs(shares - 0.2).max() < 0.1
        assert patient_folds(targets, patients, 5, seed)[0].tolist() == folds[0].tolist()  # seeded
        fold_sets.append(frozenset(frozenset(owner) for owner in owners))
    assert len(set(fold_sets)) == 5


def test_binary_folds_are_sklearns_stratified_group_folds():
    # two classes keep sklearn's algorithm (its shuffle varies binary folds), so earlier binary results reproduce
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(2)
    patients = np.asarray([f"p{i}" for i in rng.integers(0, 30, 400)])
    targets = rng.integers(0, 2, 400)
    expected = [test for _, test in StratifiedGroupKFold(5, shuffle=True, random_state=4).split(
        np.zeros(400), targets, groups=patients)]
    assert [f.tolist() for f in patient_folds(targets, patients, 5, 4)] == [f.tolist() for f in expected]
