"""Does a new demo protocol keep every row of the demo's table inside the old row's patient-bootstrap CI?

The speed issue allows the demo's protocol to change only on that condition. Run the demo once per protocol
(each in its own `--out`), then:

    python scripts/compare_demo_protocols.py OLD_OUT NEW_OUT [--bootstrap 1000]

For every channel set finished in both (`OLD_OUT/quick/<set>/predictions.csv`; pass a `full/` or `quick/` folder
itself to compare those), the old run's 95% CI over patient resamples (mslesion.metrics.patient_bootstrap) of each
column of the table — test accuracy, balanced accuracy, ROC AUC and each class's true-positive rate — against
the new run's value on the same test lesions. Prints one line per set and the two demos' times from their
`results.json`; exits 1 when any value lies outside its interval, so it can gate a protocol change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mslesion.metrics import patient_bootstrap, summary_vector
from mslesion.runs import PREDICTIONS, RESULTS_JSON, read_predictions

TABLE_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")  # summary_vector's first three columns


def demo_folder(out: Path) -> Path:
    """The folder holding the channel-set runs: OUT/quick when given the demo's --out, else OUT itself."""
    return out / "quick" if (out / "quick").is_dir() and not (out / RESULTS_JSON).exists() else out


def compare_set(old_run: Path, new_run: Path, n_bootstrap: int) -> tuple[list[dict], bool]:
    """Each table column of one channel set: the old value, its CI, the new value, and whether it lies inside."""
    old, new = read_predictions(old_run / PREDICTIONS), read_predictions(new_run / PREDICTIONS)
    if old.lesion_keys() != new.lesion_keys() or not np.array_equal(old.targets, new.targets):
        raise SystemExit(f"{new_run}: the two demos did not test the same lesions in the same order")
    old_sets, new_sets = [old.predictions()], [new.predictions()]
    interval = patient_bootstrap(old_sets, n_resamples=n_bootstrap)
    new_values = summary_vector(new_sets)
    n_summary = len(interval["estimate"]) - len(old.names)
    columns = [(name, i) for i, name in enumerate(TABLE_METRICS)]
    columns += [(f"tpr_{name}", n_summary + c) for c, name in enumerate(old.names)]
    rows, all_inside = [], True
    for name, i in columns:
        low, high, value = float(interval["low"][i]), float(interval["high"][i]), float(new_values[i])
        inside = low <= value <= high
        all_inside &= inside
        rows.append({"metric": name, "old": float(interval["estimate"][i]), "low": low, "high": high,
                     "new": value, "inside": inside})
    return rows, all_inside


def demo_seconds(folder: Path) -> float | None:
    path = folder / RESULTS_JSON
    if not path.exists():
        return None
    return sum(row["seconds"] for row in json.loads(path.read_text())["rows"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the old protocol's demo --out (or its quick/ or full/ folder)")
    parser.add_argument("new", type=Path, help="the new protocol's demo --out (or its quick/ or full/ folder)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient resamples of each old CI")
    args = parser.parse_args(argv)
    old_dir, new_dir = demo_folder(args.old), demo_folder(args.new)
    sets = sorted(p.parent.name for p in old_dir.glob(f"*/{PREDICTIONS}")
                  if (new_dir / p.parent.name / PREDICTIONS).exists())
    if not sets:
        raise SystemExit(f"no channel set has predictions in both {old_dir} and {new_dir}")
    every_row_inside = True
    for name in sets:
        rows, inside = compare_set(old_dir / name, new_dir / name, args.bootstrap)
        every_row_inside &= inside
        cells = "  ".join(f"{r['metric']} {r['old']:.4f} [{r['low']:.4f}, {r['high']:.4f}] → {r['new']:.4f}"
                          f"{'' if r['inside'] else ' OUTSIDE'}" for r in rows)
        print(f"{name}: {'inside' if inside else 'NOT inside'}   {cells}")
    old_s, new_s = demo_seconds(old_dir), demo_seconds(new_dir)
    if old_s is not None and new_s is not None:
        print(f"channel-set time (results.json, cohort excluded): old {old_s:.0f} s, new {new_s:.0f} s, "
              f"ratio {new_s / old_s:.2f}")
    print("every row inside the old row's CI" if every_row_inside else "some row left the old row's CI")
    return 0 if every_row_inside else 1


if __name__ == "__main__":
    sys.exit(main())
