"""Lesions of a binary mask: connected components, and splitting confluent components into lesions.

A confluent lesion is several lesions grown together into one connected component. Following the way APRL
and similar tools split them, each lesion is taken to have a centre: a maximum of the distance transform
(the point deepest inside the lesion). Components are split by a watershed of the negated distance transform
from those centres. The distance map is first smoothed a little (`smoothing_mm`): raw, it moves in steps of a
voxel, and a neck one voxel thick would read differently at different voxel sizes. Two guards keep ordinary
irregular lesions whole:

- centres must be `min_separation_mm` apart and at least `min_radius_mm` deep (a lesion thinner than that has
  no centre of its own);
- two neighbouring parts whose neck is not clearly narrower than both centres are merged again: the deepest
  point of their shared boundary must lie at least `min_neck_mm` below the shallower centre (a dumbbell
  splits, an elongated or bumpy lesion does not).

Every threshold is in mm, so the split is the same at any voxel size (anisotropic voxels included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SplitOptions:
    """How confluent components are split (millimetres, independent of the voxel size)."""

    min_separation_mm: float = 4.0
    """Lesion centres closer than this belong to one lesion."""
    min_radius_mm: float = 1.4
    """A lesion centre lies at least this deep inside the component (in the smoothed distance map, whose peaks
    the smoothing lowers by about 0.1 mm: 1.4 here is 1.5 in the raw map)."""
    min_neck_mm: float = 0.8
    """Two parts stay separate only if their shared boundary is this much shallower than the shallower centre."""
    smoothing_mm: float = 0.4
    """Gaussian sigma of the smoothing of the distance map before centres and necks are read from it (0 = none).
    The raw map holds distances between voxel centres, steps of one voxel along an axis: a one-voxel neck reads
    0.8 mm at 0.8 mm voxels and 1.0 mm at 1 mm, right at the `min_neck_mm` threshold, so the same lesion split
    differently at the two voxel sizes. Smoothing by less than a voxel removes that staircase. (Synthetic
    subjects, seeds 0-3, 6 each: at 0.8 mm parts recovered 88-92% without it, 91-97% with it, single lesions
    over-split 2.6-6.3% -> 0.6-3.2%; at 1 mm, the bank's own grid, 98% -> 95-96%, over-split 0.7-2.6% ->
    0.7-1.9%; scripts/measure_splitting.py.)"""


def connected_components(mask: np.ndarray, connectivity: int = 6) -> tuple[np.ndarray, int]:
    """Component id per voxel (int32, 0 = background) of a boolean mask, 6- or 26-connected."""
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    labelled, n = ndimage.label(mask, structure=structure)
    return labelled.astype(np.int32, copy=False), int(n)


def split_component(
    inside: np.ndarray, voxel_size_mm: tuple[float, float, float], options: SplitOptions = SplitOptions(),
    max_parts: int | None = None,
) -> np.ndarray:
    """Part id per voxel (int32, 1..n inside, 0 outside) of one component given as a boolean array.

    `max_parts` merges the parts with the shallowest necks until at most that many remain."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    padded = np.pad(inside, 1)  # the distance transform must see background all around
    depth = ndimage.distance_transform_edt(padded, sampling=voxel_size_mm)
    spacing = np.asarray(voxel_size_mm, dtype=np.float64)
    if options.smoothing_mm > 0:
        smoothed = ndimage.gaussian_filter(depth, options.smoothing_mm / spacing, mode="constant")
        depth = np.where(padded, smoothed, 0.0)
    radius = np.maximum(np.floor(options.min_separation_mm / spacing).astype(int), 1)
    ball = np.sum((np.indices(2 * radius + 1) - radius[:, None, None, None]) ** 2
                  * (spacing**2)[:, None, None, None], axis=0) <= options.min_separation_mm**2
    peaks = peak_local_max(depth, footprint=ball, threshold_abs=options.min_radius_mm, exclude_border=False,
                           labels=padded.astype(np.int32))
    if len(peaks) <= 1:
        return inside.astype(np.int32)
    markers = np.zeros(padded.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    parts = watershed(-depth, markers, mask=padded)
    parts = merge_shallow_necks(parts, depth, options.min_neck_mm, max_parts)
    return parts[1:-1, 1:-1, 1:-1]


def merge_shallow_necks(
    parts: np.ndarray, depth: np.ndarray, min_neck_mm: float, max_parts: int | None = None
) -> np.ndarray:
    """Merge neighbouring parts until every shared boundary is a real neck (and at most `max_parts` remain);
    relabel parts 1..n."""
    peak = np.zeros(int(parts.max()) + 1)
    np.maximum.at(peak, parts.ravel(), depth.ravel())
    while True:
        best = None
        boundaries = part_boundaries(parts, depth)
        too_many = max_parts is not None and len(np.unique(parts)) - 1 > max_parts
        for a, b, neck in boundaries:
            margin = min(peak[a], peak[b]) - neck
            if (margin < min_neck_mm or too_many) and (best is None or margin < best[2]):
                best = (a, b, margin)
        if best is None:
            break
        parts[parts == best[1]] = best[0]
        peak[best[0]] = max(peak[best[0]], peak[best[1]])
    _, relabelled = np.unique(parts, return_inverse=True)
    return relabelled.reshape(parts.shape).astype(np.int32)


def part_boundaries(parts: np.ndarray, depth: np.ndarray) -> list[tuple[int, int, float]]:
    """(a, b, deepest depth on the a-b boundary) for every pair of face-adjacent parts a < b."""
    pairs, levels = [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = parts[tuple(lo)], parts[tuple(hi)]
        touching = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.sort(np.stack([a[touching], b[touching]], axis=1), axis=1))
        levels.append(np.minimum(depth[tuple(lo)], depth[tuple(hi)])[touching])
    pair, level = np.concatenate(pairs), np.concatenate(levels)
    if not len(pair):
        return []
    keys, index = np.unique(pair, axis=0, return_inverse=True)
    necks = np.zeros(len(keys))
    np.maximum.at(necks, index.ravel(), level)
    return [(int(a), int(b), float(d)) for (a, b), d in zip(keys, necks, strict=True)]


def split_confluent(
    components: np.ndarray, ids: np.ndarray, voxel_size_mm: tuple[float, float, float],
    options: SplitOptions = SplitOptions(),
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Split the components `ids` of a component map into lesions.

    Returns a part map (int32: a new id per part, numbered in component order, 0 elsewhere) and, per new id
    (index id - 1), its (component id, part number): part 0 for a component that was not split, 1..n otherwise.
    """
    parts_map = np.zeros(components.shape, np.int32)
    owners: list[tuple[int, int]] = []
    objects = ndimage.find_objects(components)
    for component in ids:
        box = objects[int(component) - 1]
        inside = components[box] == component
        parts = split_component(inside, voxel_size_mm, options)
        n = int(parts.max())
        view = parts_map[box]
        view[inside] = parts[inside] + len(owners)
        owners.extend((int(component), part if n > 1 else 0) for part in range(1, n + 1))
    return parts_map, owners


def component_geometry(mask: np.ndarray, min_voxels: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Volume (voxels) and sphericity of each 6-connected component of at least `min_voxels` of a 1 mm mask.

    Sphericity is pi^(1/3) (6 V)^(2/3) / A with A the area of the exposed voxel faces: 1 for a ball in the
    continuum, lower for flat or branching shapes (and for small voxelised ones, alike in real and synthetic masks).
    """
    components, _ = connected_components(mask)
    volumes = np.bincount(components.ravel())
    faces = np.zeros(len(volumes))
    padded = np.pad(components, 1)
    for axis in range(3):
        for shift in (1, -1):
            exposed = (padded > 0) & (padded != np.roll(padded, shift, axis=axis))
            faces += np.bincount(padded[exposed], minlength=len(volumes))
    keep = np.flatnonzero(volumes >= min_voxels)
    keep = keep[keep > 0]
    sphericity = np.pi ** (1 / 3) * (6 * volumes[keep]) ** (2 / 3) / faces[keep]
    return volumes[keep].astype(np.float64), sphericity
