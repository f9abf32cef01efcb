"""The phenotype model's derived binary call against a dedicated binary model, paired on the same test lesions.

`ablate --task phenotype --cv K` makes this comparison over patient-grouped folds. This script makes it for two
single runs that tested the same patients: `copy-split` writes a copy of the patch file whose `split` column is
the phenotype run's split (train, val, test rows of its split.json), and a binary run trained on that copy with
`--split predefined` trains, validates and tests on the same patients:

    python scripts/derived_vs_dedicated.py copy-split PHENOTYPE_RUN patches.h5 same_split.h5
    mslesion train same_split.h5 --task binary --split predefined --out BINARY_RUN ...
    python scripts/derived_vs_dedicated.py compare PHENOTYPE_RUN BINARY_RUN [--bootstrap 2000]

Lesions are matched by (patient, lesion id); only the binary task's lesions (codes 2, 3, 5, 6) take part. Prints
both ROC AUCs with patient-bootstrap 95% CIs, and the paired difference (derived − dedicated) with its CI and
the p-value of a patient-level permutation test (mslesion.metrics.paired_comparison).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mslesion.ablate import derived_binary
from mslesion.data.task import ClassMap
from mslesion.metrics import SUMMARY_METRICS, Predictions, paired_comparison, patient_bootstrap
from mslesion.runs import read_json, read_predictions


def paired_sets(phenotype_run: Path, binary_run: Path) -> tuple[Predictions, Predictions]:
    pheno = read_predictions(phenotype_run / "predictions.csv")
    class_map = ClassMap.parse(read_json(phenotype_run / "config.json")["classes"])
    derived = derived_binary(pheno, class_map)
    keep = np.isin(pheno.targets, class_map.class_of(2, 6) + class_map.class_of(3, 5))
    derived_keys = [k for k, kept in zip(pheno.lesion_keys(), keep, strict=True) if kept]

    binary = read_predictions(binary_run / "predictions.csv")
    row_of = {key: i for i, key in enumerate(binary.lesion_keys())}
    missing = [k for k in derived_keys if k not in row_of]
    if missing or len(row_of) != len(derived_keys):
        raise SystemExit(f"the two runs did not test the same lesions ({len(missing)} of the phenotype run's "
                         f"binary-task lesions are not in {binary_run}, which tested {len(row_of)})")
    rows = np.asarray([row_of[k] for k in derived_keys])
    dedicated = Predictions(binary.targets[rows], binary.probabilities[rows], binary.patients[rows])
    if not np.array_equal(dedicated.targets, derived.targets):
        raise SystemExit("the two runs disagree about the lesions' classes")
    return derived, dedicated


def copy_split(phenotype_run: Path, source: Path, out: Path) -> None:
    """A copy of the patch file with the run's split as its `split` column (every row must be in the run's split)."""
    import shutil

    import h5py

    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    split = read_json(phenotype_run / "split.json")
    shutil.copyfile(source, out)
    with h5py.File(out, "r+") as f:
        column = np.full(len(f["label"]), "", dtype=object)
        for part in ("train", "val", "test"):
            column[[row["index"] for row in split.get(part, [])]] = part
        if (column == "").any():
            out.unlink()
            raise SystemExit(f"{int((column == '').sum())} rows of {source} are not in {phenotype_run}'s split")
        if "split" in f:
            del f["split"]
        f.create_dataset("split", data=column, dtype=h5py.string_dtype())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    copy = sub.add_parser("copy-split", help="Copy a patch file with a phenotype run's split as its split column.")
    copy.add_argument("phenotype_run", type=Path)
    copy.add_argument("source", type=Path)
    copy.add_argument("out", type=Path)
    compare = sub.add_parser("compare", help="Derived vs dedicated binary AUC on the same test lesions.")
    compare.add_argument("phenotype_run", type=Path)
    compare.add_argument("binary_run", type=Path)
    compare.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    if args.command == "copy-split":
        copy_split(args.phenotype_run, args.source, args.out)
        return
    derived, dedicated = paired_sets(args.phenotype_run, args.binary_run)
    column = SUMMARY_METRICS.index("roc_auc")
    result = {"n": int(len(derived.targets)), "patients": int(len(set(derived.patients)))}
    for name, predictions in (("derived", derived), ("dedicated", dedicated)):
        ci = patient_bootstrap([predictions], n_resamples=args.bootstrap)
        result[f"{name}_roc_auc"] = [float(ci[k][column]) for k in ("estimate", "low", "high")]
    result["derived_minus_dedicated"] = paired_comparison([derived], [dedicated], "roc_auc",
                                                          n_resamples=args.bootstrap)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
