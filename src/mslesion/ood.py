"""Out-of-distribution statistics of a trained model, and the flags they raise on new lesions.

A model trained on one cohort says nothing useful about a lesion unlike any it saw: another voxel size, field
strength or noise level, a lesion far larger or smaller, a structure that is not a lesion. At the end of
training (`fit_ood`) the model stores what its training data looked like, and `predict` flags (`ood_flags`):

- volume_outside_training: the lesion's volume outside the 1st-99th percentiles of the training lesions';
- intensity_outside_training_<channel>: more than 5% of the patch's voxels outside the central 99.8% of the
  training voxels of that channel (robust to the odd bright voxel, not to a rescaled or shifted image);
- feature_outlier: the class-conditional Mahalanobis distance (Lee et al., NeurIPS 2018) of the lesion's
  features (per conv block, the mean and spread of every feature map) from the training lesions, above the
  split-conformal 95% threshold of the validation lesions' distances (the training lesions' when there is no
  validation split): the ⌈(n + 1)·0.95⌉-th smallest of n. A plain 95% quantile of ~90 validation lesions lets
  a new in-distribution lesion pass with probability below 95% (measured: 89-91% on test splits); the conformal
  rank guarantees at least 95% for lesions exchangeable with the validation ones (Vovk et al. 2005; Angelopoulos
  & Bates 2021). The features are standardised and projected on their leading principal components, and the
  covariance is shrunk (Ledoit-Wolf): ~1,000 training lesions cannot estimate a full 512-dimensional
  covariance, and the stored statistics stay small (~140 KB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mslesion.config import INFERENCE_BATCH_SIZE

if TYPE_CHECKING:
    from mslesion.quantized import ActivationRanges

OOD_VERSION = 2  # 2: block-wise feature statistics (0.4.0 development builds stored penultimate features)
FEATURE_COMPONENTS = 64
FEATURE_PASS = 0.95
INTENSITY_QUANTILES = (0.001, 0.999)
INTENSITY_PATCHES = 1024
OUTSIDE_FRACTION = 0.05
VOLUME_PERCENTILES = (1.0, 99.0)
BINARY_CHANNELS = ("mask",)  # 0/1 by construction: no intensity range to leave
VOLUME_FLAG, FEATURE_FLAG = "volume_outside_training", "feature_outlier"


def intensity_flag(channel: str) -> str:
    return f"intensity_outside_training_{channel}"


@torch.no_grad()
def embeddings(model: torch.nn.Module, images, batch_size: int = INFERENCE_BATCH_SIZE,
               device: torch.device | str = "cpu", ranges: ActivationRanges | None = None) -> np.ndarray:
    """The features the flags measure [N, F], in fp32 (the flags must not depend on the machine's precision):
    per conv block, each feature map's mean and standard deviation over space. Low blocks see texture, noise
    and resolution; the last sees what the classifier reads (Lee et al. use several layers for the same reason:
    the penultimate layer alone barely moves under a change of noise or voxel size).
    `images`: a tensor, an array or a PatchReader (read batch by batch). `ranges`, if given, also collects the
    extremes of the same pass's activations (int8 inference's calibration, at no extra forward pass)."""
    model.eval().to(device)
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.as_tensor(images[s:s + batch_size]).to(device).float()
        blocks = model.block_outputs(x)
        if ranges is not None:
            ranges.add(model, x, blocks)
        spatial = (2, 3, 4)
        out.append(torch.cat([torch.cat([b.mean(dim=spatial), b.std(dim=spatial, correction=0)], 1) for b in blocks],
                             1).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 1))


def sample_patches(images, n: int, seed: int) -> np.ndarray:
    """Up to n patches drawn without replacement (seeded), as an array: enough for robust intensity ranges
    without reading a streamed file whole."""
    rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(rows)].cpu().numpy()
    return np.asarray(images[rows])


def fit_ood(model: torch.nn.Module, train_images, train_targets: np.ndarray,
            val_images, train_volumes: np.ndarray | None, channels: tuple[str, ...],
            device: torch.device | str = "cpu", seed: int = 0, ranges: ActivationRanges | None = None) -> dict:
    """The statistics `ood_flags` needs, as plain tensors and numbers (stored in model.pt). `ranges` collects the
    training patches' activation extremes on the way (see embeddings)."""
    from sklearn.covariance import LedoitWolf

    features = embeddings(model, train_images, device=device, ranges=ranges)
    mean, scale = features.mean(0), features.std(0) + 1e-6  # means and spreads of maps differ in scale by 100×
    _, _, vt = np.linalg.svd((features - mean) / scale, full_matrices=False)
    components = vt[: min(FEATURE_COMPONENTS, len(features) - 1)].T / scale[:, None]  # standardise, then project
    projected = (features - mean) @ components
    classes = np.unique(train_targets)
    class_means = np.stack([projected[train_targets == c].mean(0) for c in classes])
    residual = projected - class_means[np.searchsorted(classes, train_targets)]
    precision = LedoitWolf().fit(residual).precision_
    stats = {"feature_mean": mean, "components": components, "class_means": class_means, "precision": precision}
    reference = projected if val_images is None else (embeddings(model, val_images, device=device) - mean) @ components
    scores = mahalanobis(reference, class_means, precision)
    images = sample_patches(train_images, INTENSITY_PATCHES, seed)
    rng = np.random.default_rng(seed)
    intensity = {}
    for c, channel in enumerate(channels):
        if channel not in BINARY_CHANNELS:
            values = images[:, c].ravel()
            sample = values[rng.integers(0, len(values), min(len(values), 2_000_000))]
            intensity[channel] = [float(q) for q in np.quantile(sample, INTENSITY_QUANTILES)]
    return {
        **{k: torch.as_tensor(v, dtype=torch.float32) for k, v in stats.items()},
        "version": OOD_VERSION,
        "feature_threshold": conformal_threshold(scores, FEATURE_PASS),
        "threshold_from": "training" if val_images is None else "validation",
        "intensity_range": intensity,
        "volume_range_mm3": None if train_volumes is None else
        [float(v) for v in np.percentile(train_volumes, VOLUME_PERCENTILES)],
    }


def conformal_threshold(scores: np.ndarray, pass_rate: float) -> float:
    """The ⌈(n + 1)·pass_rate⌉-th smallest of n calibration scores: a new score exchangeable with them is at
    most this with probability ≥ pass_rate (split conformal). With too few scores for that rank (n < 19 at 95%)
    no finite threshold guarantees it, and the largest score is used."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(ordered):
        raise ValueError("no calibration scores")
    rank = int(np.ceil((len(ordered) + 1) * pass_rate))
    return float(ordered[min(rank, len(ordered)) - 1])


def mahalanobis(projected: np.ndarray, class_means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared distance to the nearest class mean under the shared (shrunk) covariance."""
    distances = [np.einsum("ni,ij,nj->n", projected - m, precision, projected - m) for m in class_means]
    return np.min(np.stack(distances, 1), axis=1)


def feature_scores(stats: dict, model: torch.nn.Module, images: torch.Tensor | np.ndarray,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """The Mahalanobis score of each lesion (higher = less like the training lesions)."""
    def array(key: str) -> np.ndarray:
        return stats[key].double().numpy()

    projected = (embeddings(model, images, device=device) - array("feature_mean")) @ array("components")
    return mahalanobis(projected, array("class_means"), array("precision"))


def ood_flags(stats: dict, model: torch.nn.Module, images: np.ndarray, volumes: np.ndarray | None,
              channels: tuple[str, ...], device: torch.device | str = "cpu") -> tuple[list[list[str]], np.ndarray]:
    """Per lesion, the names of the flags it raises, and its feature score."""
    flags: list[list[str]] = [[] for _ in range(len(images))]
    if not len(images):
        return flags, np.zeros(0)
    volume_range = stats.get("volume_range_mm3")
    if volume_range is not None and volumes is not None:
        for n in np.flatnonzero((volumes < volume_range[0]) | (volumes > volume_range[1])):
            flags[n].append(VOLUME_FLAG)
    for channel, (low, high) in stats.get("intensity_range", {}).items():
        if channel in channels:
            values = images[:, channels.index(channel)]
            outside = ((values < low) | (values > high)).mean(axis=(1, 2, 3))
            for n in np.flatnonzero(outside > OUTSIDE_FRACTION):
                flags[n].append(intensity_flag(channel))
    if stats.get("version") != OOD_VERSION:  # statistics of other features: the feature flag cannot be judged
        return flags, np.full(len(images), np.nan)
    scores = feature_scores(stats, model, images, device)
    for n in np.flatnonzero(scores > stats["feature_threshold"]):
        flags[n].append(FEATURE_FLAG)
    return flags, scores
