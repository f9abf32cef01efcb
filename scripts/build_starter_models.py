"""Train the built-in starter models (`mslesion models`) and write their model cards.

One synthetic six-class cohort (generator of this version, real lesion geometry; `--patients` patients, Table 1's
class proportions), split by patient (70/30, 10% of training patients for validation: temperature, OOD threshold).
Every model trains with the same short protocol (one random cube symmetry per patch and step, `--epochs` epochs,
Adam 0.01 decayed ×0.316 at 60% and 80% of the epochs, batch `--batch-size`: 32 gives ~4× the paper's
optimiser steps on these few patches) on the same patients and is evaluated on the
same test patients. Phenotype models learn all six Table 1 codes; binary models the paper's
remyelinating/demyelinating classes on codes 2, 3, 5, 6.

    PYTHONPATH=src python scripts/build_starter_models.py --work /tmp/starter --patients 60 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mslesion import __version__
from mslesion.config import EvaluateConfig, SynthConfig, TrainConfig
from mslesion.data.synth.cohort import SYNTH_VERSION, write_cohort
from mslesion.evaluate import evaluate
from mslesion.runs import BUILTIN_INDEX, CHECKPOINT, MODEL, builtin_root

MODELS = (  # name, channels, task
    ("flair-qsm-mask-binary", ("flair", "qsm", "mask"), "binary"),
    ("qsm-mask-binary", ("qsm", "mask"), "binary"),
    ("flair-mask-binary", ("flair", "mask"), "binary"),
    ("flair-qsm-mask-phenotype", ("flair", "qsm", "mask"), "phenotype"),
    ("qsm-mask-phenotype", ("qsm", "mask"), "phenotype"),
)


def test_figures(metrics: dict) -> str:
    text = f"test AUC {metrics['roc_auc']:.3f}, accuracy {metrics['accuracy']:.1%} (n = {metrics['n']})"
    if "phenotype" in metrics:
        p = metrics["phenotype"]
        text += (f"; gate AUC {p['gate_roc_auc']['estimate']:.3f}, derived binary AUC "
                 f"{p['derived_binary_roc_auc']['estimate']:.3f}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", default="", help="comma-separated model names (default: all)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    synth = SynthConfig(patients=args.patients, seed=2026)
    data = args.work / "cohort.h5"
    if not data.exists():
        write_cohort(synth, data)
    milestones = (max(1, round(0.6 * args.epochs)), max(2, round(0.8 * args.epochs)))
    cards = []
    wanted = set(filter(None, args.only.split(",")))
    for name, channels, task in MODELS:
        if wanted and name not in wanted:
            continue
        run = args.work / name
        if not (run / MODEL).exists():
            from mslesion.train import train

            train(TrainConfig(data=str(data), out=str(run), channels=channels, task=task, split="patient",
                              val_fraction=0.1, augment="random", epochs=args.epochs, lr_milestones=milestones,
                              batch_size=args.batch_size, seed=0),
                  resume=(run / CHECKPOINT).exists(), show_progress=False)  # an interrupted model continues
        metrics = evaluate(EvaluateConfig(run=str(run)))
        target = builtin_root() / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / MODEL, target / MODEL)
        cards.append({
            "name": name, "version": 1, "mslesion_version": __version__, "channels": ",".join(channels),
            "task": task, "classes": metrics.get("classes") or TrainConfig(task=task).classes,
            "training_data": f"synthetic cohort v{SYNTH_VERSION}, {args.patients} patients (seed {synth.seed}), "
                             f"{args.epochs} epochs, batch {args.batch_size}",
            "test": test_figures(metrics),
            "command": f"scripts/build_starter_models.py --patients {args.patients} --epochs {args.epochs} "
                       f"--batch-size {args.batch_size}",
        })
        print(json.dumps(cards[-1]), flush=True)
        write_index(cards)  # after every model: a finished model is usable while the next one trains


def write_index(cards: list[dict]) -> None:
    index = builtin_root() / BUILTIN_INDEX
    existing = json.loads(index.read_text())["models"] if index.exists() else []
    merged = {c["name"]: c for c in existing} | {c["name"]: c for c in cards}
    order = [name for name, _, _ in MODELS]
    index.write_text(json.dumps({"models": [merged[n] for n in order if n in merged]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
