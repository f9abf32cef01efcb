"""Hand features of lesion patches: a fast, transparent proxy for what the patches let a classifier learn.

Used to calibrate the synthetic cohort's class appearance (a gradient-boosted classifier on these features
trains in seconds, a CNN in minutes) and to estimate the ceiling of the phenotype task
(scripts/phenotype_ceiling.py). Not used by training or prediction.

Two families, so that a channel set without the mask is not handed the lesion's outline for free:
- radial profiles around the patch centre (where every patch's lesion sits), per channel, needing no mask;
- with the mask: statistics of FLAIR and QSM inside the lesion, in its inner rim band and core, and in a
  shell just outside it, and the lesion's volume and compactness.
FLAIR is divided by the patch's background median (scanner gain differs per patient) and QSM has its
background median subtracted (QSM is relative to a reference region), as a rater reading the images would.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Shell edges (voxels from the centre) of the radial profiles: fine near the centre, where most lesions lie
# (median real lesion: 33 mm³, ~6 voxels across at 0.65 mm).
SHELL_EDGES = (0.0, 1.5, 3.0, 4.5, 6.0, 8.0, 11.0, 15.0)
BACKGROUND_RADIUS = 13.0  # beyond it: the patch's background (most lesions end well inside)
BALL = ndimage.generate_binary_structure(3, 1)


def _radius(size: int) -> np.ndarray:
    centre = (size - 1) / 2
    axis = np.arange(size) - centre
    return np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)


def _normalised(image: np.ndarray, channel: str, background: np.ndarray) -> np.ndarray:
    reference = float(np.median(image[background]))
    if channel == "flair":
        return image / max(reference, 1e-6)
    if channel == "qsm":
        return (image - reference) * 1000.0  # ppb
    return image


def _stats(values: np.ndarray) -> list[float]:
    if values.size == 0:
        return [0.0] * 5
    return [float(values.mean()), *np.percentile(values, (10, 50, 90)).tolist(), float(values.std())]


def feature_blocks(patch: np.ndarray, channels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Feature blocks of one patch [c, p, p, p]: `radial:<channel>` per channel, and with a mask `mask` (volume,
    compactness) and `lesion:<channel>` (statistics inside, in the core, the inner band and a shell outside)."""
    radius = _radius(patch.shape[-1])
    background = radius >= BACKGROUND_RADIUS
    images = {name: _normalised(patch[i], name, background) for i, name in enumerate(channels)}
    blocks: dict[str, list[float]] = {}
    for name, image in images.items():
        block = [float(image[(radius >= lo) & (radius < hi)].mean())
                 for lo, hi in zip(SHELL_EDGES[:-1], SHELL_EDGES[1:], strict=True)]
        if name != "mask":
            block += _stats(image[radius < 6.0])
        blocks[f"radial:{name}"] = block
    if "mask" in images:
        mask = images["mask"] > 0.5
        volume = int(mask.sum())
        core = ndimage.binary_erosion(mask, BALL, iterations=1)
        band = mask & ~core
        shell = ndimage.binary_dilation(mask, BALL, iterations=2) & ~mask
        blocks["mask"] = [float(np.log1p(volume)), float(band.sum() / max(volume, 1))]  # size; surface/volume
        for name, image in images.items():
            if name == "mask":
                continue
            block = []
            for region in (mask, core, band, shell):
                block += _stats(image[region])
            block.append(float(image[band].mean() - image[core].mean()) if core.any() and band.any() else 0.0)
            blocks[f"lesion:{name}"] = block
    return {key: np.asarray(value, dtype=np.float32) for key, value in blocks.items()}


def select(blocks: dict[str, np.ndarray], use: tuple[str, ...]) -> np.ndarray:
    """The features a channel set `use` can see: radial profiles of its channels, and the lesion statistics
    only when the mask is among them (without it, a classifier must find the lesion itself)."""
    keys = [f"radial:{c}" for c in use]
    if "mask" in use:
        keys += ["mask", *(f"lesion:{c}" for c in use if c != "mask")]
    return np.concatenate([blocks[k] for k in keys])


def all_blocks(images: np.ndarray, channels: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """`feature_blocks` of every patch of `images` [n, c, p, p, p]."""
    return [feature_blocks(patch, channels) for patch in images]


def feature_matrix(blocks: list[dict[str, np.ndarray]], use: tuple[str, ...]) -> np.ndarray:
    return np.stack([select(b, use) for b in blocks])
