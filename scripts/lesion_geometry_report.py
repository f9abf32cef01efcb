"""Real vs synthetic lesion geometry: KS statistics, volume percentiles and an overlaid histogram.

The real lesions are those of the 10 held-out consensus masks (never used to build the shape bank); the synthetic
ones those of `synth --volumes` subjects at 1 mm; both measured alike (6-connected components ≥ 10 mm³, a confluent
union counted once), as in tests/test_lesion_geometry.py.

    .venv/bin/python scripts/lesion_geometry_report.py [--subjects 16] [--seed 1] [--png docs/lesion_volumes.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from mslesion.config import SynthConfig  # noqa: E402
from mslesion.data.lesions import component_geometry  # noqa: E402
from mslesion.data.synth.shapes import HELD_OUT_MASKS  # noqa: E402
from mslesion.data.synth.volumes import generate_subject_volumes  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "open_ms_data"


def real_geometry() -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for name in HELD_OUT_MASKS:
        full = SHARED / name / "lesion_mask.nii.gz"
        path = full if full.exists() else SHARED / "masks_only" / f"{name}_lesion_mask.nii.gz"
        parts.append(component_geometry(np.asarray(nib.load(path).dataobj) > 0))
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))  # type: ignore[return-value]


def synthetic_geometry(subjects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as folder:
        folders = generate_subject_volumes(SynthConfig(seed=seed), folder, subjects)
        parts = [component_geometry(np.asarray(nib.load(f / "anat" / f"{f.name}_label-lesion_mask.nii.gz").dataobj)
                                    > 0) for f in folders]
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--png", type=Path, default=Path("docs/lesion_volumes.png"))
    args = parser.parse_args()
    real_volume, real_shape = real_geometry()
    volume, shape = synthetic_geometry(args.subjects, args.seed)
    print(f"real (10 held-out masks): {len(real_volume)} lesions; synthetic ({args.subjects} subjects, seed "
          f"{args.seed}): {len(volume)} lesions")
    print(f"KS log-volume {stats.ks_2samp(np.log(real_volume), np.log(volume)).statistic:.3f}; "
          f"KS sphericity {stats.ks_2samp(real_shape, shape).statistic:.3f}")
    for name, values in (("real", real_volume), ("synthetic", volume)):
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        print(f"{name:9s} volume mm³: median {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, max {values.max():.0f}")
    bins = np.logspace(1, np.log10(max(real_volume.max(), volume.max())) + 0.1, 40)
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    # fractions of lesions per logarithmic bin, on a log scale: the heavy tail is what matters
    axis.hist(real_volume, bins=bins, weights=np.full(len(real_volume), 1 / len(real_volume)), alpha=0.55,
              label=f"real, held-out ({len(real_volume)})")
    axis.hist(volume, bins=bins, weights=np.full(len(volume), 1 / len(volume)), alpha=0.55,
              label=f"synthetic ({len(volume)})")
    axis.set(xscale="log", yscale="log", xlabel="lesion volume (mm³, 6-connected components ≥ 10 mm³)",
             ylabel="fraction of lesions",
             title="Lesion volumes: open_ms_data held-out masks vs synth --volumes")
    axis.legend()
    figure.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
