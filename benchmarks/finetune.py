"""What a starter model is worth: fine-tuning it vs training from scratch on few labelled lesions of a cohort the
starter never saw.

Target cohort: the synthetic generator with another configuration (default: 1 mm voxels instead of 0.65 mm,
field noise ×1.5, lesion contrast ×0.7 (`SynthConfig.lesion_contrast`), another seed). Its patients are split
once into a labelled pool (60%) and a test set (40%, never trained on). For each size (25, 50, 100 labelled
lesions) and each of `--draws` random draws from the pool, the same protocol trains twice on the same lesions:
from scratch, and from the starter (`train --init`). Both are evaluated on the same test lesions; the table gives
the mean test ROC AUC over the draws and the fine-tuned − scratch difference with its patient-bootstrap 95% CI
and paired permutation p-value
(mslesion.metrics.paired_comparison, the draws as repetitions).

    PYTHONPATH=src python benchmarks/finetune.py --starter builtin:flair-qsm-mask-binary --out /tmp/finetune
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from mslesion.config import EvaluateConfig, SynthConfig, TrainConfig
from mslesion.data.patches import read_patches, write_patches
from mslesion.data.synth.cohort import write_cohort
from mslesion.evaluate import evaluate
from mslesion.metrics import Predictions, paired_comparison
from mslesion.runs import PREDICTIONS, load_trained, read_predictions
from mslesion.train import train

LABELLED_CODES = (2, 3, 5, 6)


def target_cohort(out: Path, cfg: SynthConfig) -> Path:
    path = out / "target.h5"
    if not path.exists():
        write_cohort(cfg, path)
    return path


def draw_file(patches, pool: np.ndarray, test: np.ndarray, n: int, draw: int, out: Path) -> Path:
    """A patch file whose predefined split trains on n lesions drawn from the pool and tests on the test set."""
    path = out / f"n{n}_draw{draw}.h5"
    if path.exists():
        return path
    rng = np.random.default_rng(1000 * n + draw)
    chosen = np.sort(rng.choice(pool, n, replace=False))
    rows = np.r_[chosen, test]
    split = np.asarray(["train"] * len(chosen) + ["test"] * len(test), dtype=object)
    subset = dataclasses.replace(patches, images=patches.images[rows], labels=patches.labels[rows],
                                 patients=patches.patients[rows], lesions=patches.lesions[rows], split=split,
                                 volume_mm3=None if patches.volume_mm3 is None else patches.volume_mm3[rows],
                                 parts=None if patches.parts is None else patches.parts[rows])
    write_patches(path, subset)
    return path


def run(data: Path, out: Path, channels: tuple[str, ...], init: str, epochs: int) -> Predictions:
    if not (out / PREDICTIONS).exists():
        train(TrainConfig(data=str(data), out=str(out), channels=channels, split="predefined", augment="random",
                          epochs=epochs, batch_size=16, lr=0.001, lr_milestones=(max(1, epochs - 3),), init=init,
                          seed=0),
              show_progress=False)
        evaluate(EvaluateConfig(run=str(out)))
    return read_predictions(out / PREDICTIONS).predictions()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starter", required=True, help="run folder or builtin:<name>")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--sizes", default="25,50,100")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--qsm-noise", type=float, default=1.5)
    parser.add_argument("--contrast", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    starter = load_trained(args.starter)
    channels = starter.channels
    cfg = SynthConfig(patients=args.patients, labelled_only=True, voxel_size_mm=args.voxel_size,
                      qsm_noise=args.qsm_noise, lesion_contrast=args.contrast, seed=args.seed,
                      patch_size=starter.model.patch_size)
    patches = read_patches(target_cohort(args.out, cfg), channels)
    patients = np.unique(patches.patients)
    rng = np.random.default_rng(args.seed)
    test_patients = rng.choice(patients, int(round(0.4 * len(patients))), replace=False)
    labelled = np.isin(patches.labels, LABELLED_CODES)
    in_test = np.isin(patches.patients, test_patients)
    pool, test = np.flatnonzero(labelled & ~in_test), np.flatnonzero(labelled & in_test)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        scratch, tuned = [], []
        for draw in range(args.draws):
            data = draw_file(patches, pool, test, n, draw, args.out)
            scratch.append(run(data, args.out / f"n{n}_draw{draw}_scratch", channels, "", args.epochs))
            tuned.append(run(data, args.out / f"n{n}_draw{draw}_init", channels, args.starter, args.epochs))
        paired = paired_comparison(tuned, scratch, "roc_auc", n_resamples=1000)
        auc = {name: float(np.mean([_auc(p) for p in sets])) for name, sets in (("scratch", scratch),
                                                                               ("fine-tuned", tuned))}
        rows.append({"labelled": n, "draws": args.draws, **auc, **paired})
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "finetune.json").write_text(json.dumps({"target": dataclasses.asdict(cfg), "starter": args.starter,
                                                        "test_lesions": int(len(test)), "rows": rows}, indent=1))
    print(f"\ntarget: {json.dumps(dataclasses.asdict(cfg))}; {len(test)} test lesions of {len(test_patients)} "
          f"patients; starter {args.starter}\n")
    print("| labelled lesions | scratch AUC | fine-tuned AUC | fine-tuned − scratch [95% CI] | p |")
    print("|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['labelled']} | {r['scratch']:.3f} | {r['fine-tuned']:.3f} | {r['difference']:+.3f} "
              f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['p_value']:.3g} |")


def _auc(p: Predictions) -> float:
    from mslesion.metrics import roc_auc

    return roc_auc(p.targets, p.probabilities)


if __name__ == "__main__":
    main()
