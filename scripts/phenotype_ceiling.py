"""How well can the six-class phenotype task, and the 'unclassified vs the rest' gate, be done at all on the
synthetic cohort? Two estimates, both with patient-grouped 5-fold cross-validation of a gradient-boosted
classifier (classes weighted to balance):

- image features: hand features of each patch (`mslesion.data.synth.features`: QSM and FLAIR inside the mask,
  its core, inner rim band and an outer shell, radial profiles, volume, compactness) — what a simple
  classifier reaches from the images; a CNN may do better or worse;
- latent parameters: the generator's own per-lesion draws (susceptibility of core and rim, rim width, size,
  FLAIR excess, vein, streaking source, texture, number of merged parts), replayed from the seed without
  rendering — a perfect measurement of every lesion, so near the ceiling of the task. Class 1's kinds
  (`lesions.CLASS1_KINDS`) are made ambiguous on purpose (contrasts between the criteria; labelled-looking
  lesions left unrated), so neither reaches a perfect score.

    mslesion synth --out /tmp/six.h5                       # the full six-class cohort (5,250 lesions)
    python scripts/phenotype_ceiling.py /tmp/six.h5

Prints six-class balanced accuracy and per-class recall, the gate's ROC AUC and PR AUC, also with class-1
lesions weighted to the volume distribution of classes 2-6 (so that size alone cannot carry the gate), and
the gate's recall of each class-1 kind.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, balanced_accuracy_score, confusion_matrix, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from mslesion.config import SynthConfig
from mslesion.data.patches import read_patches
from mslesion.data.synth import shapes
from mslesion.data.synth.features import all_blocks, feature_matrix
from mslesion.data.synth.lesions import Lesion, draw_component

CODES = (1, 2, 3, 4, 5, 6)


def latent_lesions(config: SynthConfig, patients: np.ndarray, lesions: np.ndarray, labels: np.ndarray
                   ) -> list[list[Lesion]]:
    """The generator's draws for every lesion, replayed: the same random stream as `cohort.synth_patch`
    (a centre jitter, then the component), without rendering."""
    components = []
    for patient, lesion, code in zip(patients, lesions, labels, strict=True):
        rng = np.random.default_rng([config.seed, 2, int(str(patient).split("-")[1]) - 1, int(lesion)])
        rng.uniform(-0.5, 0.5, 3)  # the centre jitter, drawn first in synth_patch
        components.append(draw_component(rng, int(code)))
    return components


def latent_features(parts: list[Lesion]) -> np.ndarray:
    """What a perfect measurement of a lesion would give (its kind, the label's cause, is left out)."""
    volumes = np.array([shapes.shape_field(p.shape).volume_mm3 * p.scale**3 for p in parts])
    core = np.array([p.core_ppm for p in parts]) * 1000
    rim = np.array([p.rim_ppm if p.rim_mm > 0 else p.core_ppm for p in parts]) * 1000
    main = parts[int(volumes.argmax())]
    return np.array([
        len(parts), np.log(volumes.sum()), (core * volumes).sum() / volumes.sum(), core.min(), core.max(),
        rim.max(), rim.min(), main.rim_mm, main.flair_excess, max(p.vein_radius_mm for p in parts),
        max(abs(p.source_ppm) for p in parts), max(p.texture_ppm for p in parts) * 1000,
    ], dtype=np.float32)


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities (columns: sorted classes of y), patient-grouped."""
    classes = np.unique(y)
    probabilities = np.zeros((len(y), len(classes)))
    for train, test in StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(x, y, groups):
        model = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.08, max_leaf_nodes=15,
                                               class_weight="balanced", random_state=seed)
        model.fit(x[train], y[train])
        probabilities[np.ix_(test, np.searchsorted(classes, model.classes_))] = model.predict_proba(x[test])
    return probabilities


def volume_matched_weights(log_volume: np.ndarray, unclassified: np.ndarray, bins: int = 10) -> np.ndarray:
    """Weights that give class-1 lesions the log-volume distribution of classes 2-6 (deciles of the latter)."""
    edges = np.quantile(log_volume[~unclassified], np.linspace(0, 1, bins + 1))[1:-1]
    which = np.digitize(log_volume, edges)
    rest = np.bincount(which[~unclassified], minlength=bins) / (~unclassified).sum()
    ones = np.bincount(which[unclassified], minlength=bins) / max(unclassified.sum(), 1)
    weights = np.ones(len(log_volume))
    weights[unclassified] = np.where(ones[which[unclassified]] > 0,
                                     rest[which[unclassified]] / np.maximum(ones[which[unclassified]], 1e-12), 0)
    return weights


def report(name: str, probabilities: np.ndarray, y: np.ndarray, log_volume: np.ndarray, kinds: list[str]) -> dict:
    predicted = np.array(CODES)[probabilities.argmax(axis=1)]
    unclassified = y == 1
    gate = probabilities[:, 0]
    weights = volume_matched_weights(log_volume, unclassified)
    # Recall of each class-1 kind at the gate's threshold that keeps 90% of classes 2-6 (a usable operating point)
    threshold = np.quantile(gate[~unclassified], 0.9)
    kind_recall = {k: float((gate[unclassified][np.array(kinds)[unclassified] == k] > threshold).mean())
                   for k in sorted(set(np.array(kinds)[unclassified]))}
    result = {
        "six_class_balanced_accuracy": balanced_accuracy_score(y, predicted),
        "recall": {int(c): float((predicted[y == c] == c).mean()) for c in CODES},
        "gate_roc_auc": roc_auc_score(unclassified, gate),
        "gate_pr_auc": average_precision_score(unclassified, gate),
        "gate_roc_auc_volume_matched": roc_auc_score(unclassified, gate, sample_weight=weights),
        "gate_pr_auc_volume_matched": average_precision_score(unclassified, gate, sample_weight=weights),
        "gate_recall_per_kind_at_90pct_specificity": kind_recall,
        "confusion": confusion_matrix(y, predicted, labels=list(CODES)).tolist(),
    }
    print(f"\n== {name}")
    print(f"six-class balanced accuracy {result['six_class_balanced_accuracy']:.3f}; recall per class "
          + ", ".join(f"{c}: {r:.2f}" for c, r in result["recall"].items()))
    print(f"gate (1 vs rest): ROC AUC {result['gate_roc_auc']:.3f}, PR AUC {result['gate_pr_auc']:.3f}; "
          f"volume-matched ROC AUC {result['gate_roc_auc_volume_matched']:.3f}, "
          f"PR AUC {result['gate_pr_auc_volume_matched']:.3f}")
    print("gate recall per class-1 kind at 90% specificity: "
          + ", ".join(f"{k} {r:.2f}" for k, r in kind_recall.items()))
    print("confusion (rows true 1-6, columns predicted 1-6):")
    for code, row in zip(CODES, result["confusion"], strict=True):
        print(f"  {code}: {row}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", help="patch file of a six-class synthetic cohort (`mslesion synth`)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    started = time.perf_counter()
    patches = read_patches(args.cohort)
    config = SynthConfig(**json.loads(patches.attrs["synth_config"]))
    y = patches.labels.astype(int)
    if set(np.unique(y)) != set(CODES):
        raise SystemExit(f"{args.cohort}: needs all six classes (got {sorted(set(np.unique(y)))}); "
                         "generate it without --labelled-only")
    print(f"{len(y)} lesions, {patches.source[:70]}; per class {dict(sorted(Counter(y.tolist()).items()))}")
    components = latent_lesions(config, patches.patients, patches.lesions, y)
    kinds = [parts[0].kind if code == 1 and len(parts) == 1 else ("merged" if code == 1 else "")
             for parts, code in zip(components, y, strict=True)]
    print("class-1 kinds:", dict(Counter(k for k in kinds if k)))
    log_volume = np.log1p((patches.images[:, patches.channels.index("mask")] > 0.5).sum(axis=(1, 2, 3)))
    results = {}
    image_x = feature_matrix(all_blocks(patches.images, patches.channels), patches.channels)
    results["image_features"] = report("image features (FLAIR, QSM, mask)",
                                       out_of_fold(image_x, y, patches.patients), y, log_volume, kinds)
    latent_x = np.stack([latent_features(parts) for parts in components])
    results["latent_parameters"] = report("latent parameters (the generator's own draws)",
                                          out_of_fold(latent_x, y, patches.patients), y, log_volume, kinds)
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cohort": patches.source, **results}, f, indent=1)


if __name__ == "__main__":
    main()
