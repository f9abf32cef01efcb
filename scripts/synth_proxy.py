"""A fast proxy of the demo's Table 3: how well each channel set separates remyelinating from demyelinating
lesions of a synthetic cohort, by a gradient-boosted classifier on hand features (seconds, not the CNN's
minutes). Used to calibrate the generator's class appearance (`mslesion.data.synth.lesions`) before
confirming with `mslesion demo`; its figures are a guide, not the CNN's.

    mslesion synth --labelled-only --out /tmp/cohort.h5
    python scripts/synth_proxy.py /tmp/cohort.h5

Patient-grouped 5-fold cross-validation (the CNN's paper split is a single 70/30 one; 5 folds give a steadier
figure); prints ROC AUC, accuracy (threshold 0.5 after class weighting, so the majority class is not
favoured) and balanced accuracy per channel set.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from mslesion.data.patches import read_patches
from mslesion.data.synth.features import all_blocks, feature_matrix
from mslesion.paper import CHANNEL_SETS

DEMYELINATING = (3, 5)
REMYELINATING = (2, 6)


def cross_validated_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of class 1, patient-grouped, classes weighted to balance."""
    scores = np.zeros(len(y))
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for train, test in folds.split(x, y, groups):
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                               class_weight="balanced", random_state=seed)
        model.fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", help="patch file of a synthetic cohort (labelled classes are used)")
    parser.add_argument("--channel-sets", nargs="*", default=list(CHANNEL_SETS))
    args = parser.parse_args()
    patches = read_patches(args.cohort)
    keep = np.isin(patches.labels, DEMYELINATING + REMYELINATING)
    started = time.perf_counter()
    blocks = all_blocks(patches.images[keep], patches.channels)
    y = np.isin(patches.labels[keep], DEMYELINATING).astype(int)
    groups = patches.patients[keep]
    print(f"{keep.sum()} lesions ({y.mean():.1%} demyelinating), features in {time.perf_counter() - started:.0f} s; "
          f"source: {patches.source[:60]}")
    print("| channels | ROC AUC | accuracy | balanced accuracy |\n|---|---|---|---|")
    for channel_set in args.channel_sets:
        use = tuple(channel_set.split(","))
        scores = cross_validated_scores(feature_matrix(blocks, use), y, groups)
        predicted = (scores >= 0.5).astype(int)
        print(f"| {channel_set} | {roc_auc_score(y, scores):.3f} | {(predicted == y).mean():.1%} | "
              f"{balanced_accuracy_score(y, predicted):.1%} |", flush=True)


if __name__ == "__main__":
    main()
