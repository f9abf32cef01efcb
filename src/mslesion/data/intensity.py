"""Intensities comparable across subjects and scanners: FLAIR relative to normal-appearing tissue, QSM in ppm.

Applied by `extract` (and so by `predict`) to every subject before its patches are cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mslesion.errors import InputError

# QSM is stored in ppm; tissue susceptibility differences stay well under 1 ppm in a skull-stripped brain,
# so a 99th percentile of |χ| above 5 can only be ppb (about 1000× larger).
PPB_THRESHOLD = 5.0
# Normal-appearing tissue for FLAIR scaling: outside lesions and above 10% of the 99th percentile, which
# drops the zero background of skull-stripped scans and most CSF.
TISSUE_FRACTION = 0.1
NORMALISATION = {
    "flair": "divided by the median FLAIR of normal-appearing tissue (outside lesions, above 10% of the 99th "
             "percentile), so that normal tissue is 1",
    "qsm": "ppm; inputs in ppb (99th percentile |value| > 5) divided by 1000",
    "non_finite": "NaN and infinite voxels set to 0",
}


def normalised(channel: str, data: np.ndarray, lesions: np.ndarray, notes: list[str], path: Path | None) -> np.ndarray:
    """Intensities comparable across subjects: FLAIR over normal tissue, QSM in ppm; NaN/inf → 0."""
    bad = ~np.isfinite(data)
    if bad.any():
        data = np.where(bad, np.float32(0), data)
        notes.append(f"{channel}: {int(bad.sum())} NaN/infinite voxels set to 0 ({path})")
    if channel == "qsm":
        return qsm_in_ppm(data, notes)
    return flair_normalised(data, lesions, path)


def qsm_in_ppm(data: np.ndarray, notes: list[str]) -> np.ndarray:
    values = np.abs(data[data != 0])
    if values.size and float(np.percentile(values[:: max(1, values.size // 200_000)], 99)) > PPB_THRESHOLD:
        notes.append("qsm: values look like ppb (99th percentile |χ| > 5); divided by 1000 to ppm")
        return data / np.float32(1000)
    return data


def flair_normalised(data: np.ndarray, lesions: np.ndarray, path: Path | None) -> np.ndarray:
    positive = data[data > 0]
    if positive.size == 0:
        raise InputError("FLAIR has no positive voxels", path)
    threshold = TISSUE_FRACTION * float(np.percentile(positive[:: max(1, positive.size // 200_000)], 99))
    tissue = data[(data > threshold) & ~lesions]
    if tissue.size == 0:
        raise InputError("FLAIR has no normal-appearing tissue outside the lesion mask", path)
    return data / np.float32(np.median(tissue))
