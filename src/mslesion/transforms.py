"""The 48 symmetries of the cube (24 rotations × a reflection) as pure tensor functions.

The paper augments each training patch by the 24 rotations by multiples of 90° and a "vertical" flip:
48 distinct images. The same set is the group of signed permutation matrices of the three spatial axes
(6 axis orders × 8 sign patterns), which is how we index it: symmetry k permutes the spatial axes by
`AXIS_ORDERS[k // 8]` and then flips the axes set in the bits of `k % 8`. Index 0 is the identity.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
import torch

AXIS_ORDERS: tuple[tuple[int, int, int], ...] = tuple(permutations(range(3)))  # type: ignore[assignment]
N_SYMMETRIES = 48


N_FLIPS = 8  # symmetries 0-7: the axes keep their order, any of them flipped (the subgroup that keeps anatomy's axes)
AUGMENTATION_GROUPS = {"full": N_SYMMETRIES, "random": N_SYMMETRIES, "flips": N_FLIPS, "none": 1}


def augmentation_symmetries(augment: str) -> int:
    """How many symmetries (indices 0..n-1) an augmentation mode draws from: the 48 of the cube for full and
    random, the 8 axis flips for flips (for data in an anatomical frame, whose axes must not be exchanged: a CT
    crop's head-foot axis is not its left-right one), only the identity for none."""
    if augment not in AUGMENTATION_GROUPS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTATION_GROUPS)}, got {augment!r}")
    return AUGMENTATION_GROUPS[augment]


def symmetry_axes(k: int) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """(axis order, flipped axes) of symmetry k, for the last three (spatial) dimensions."""
    if not 0 <= k < N_SYMMETRIES:
        raise ValueError(f"symmetry index must be in [0, 48), got {k}")
    order = AXIS_ORDERS[k // 8]
    flips = tuple(axis for axis in range(3) if (k % 8) >> axis & 1)
    return order, flips


def symmetry_matrix(k: int) -> np.ndarray:
    """The 3×3 signed permutation matrix M of symmetry k: output voxel index = M · input index (centred)."""
    order, flips = symmetry_axes(k)
    matrix = np.zeros((3, 3), dtype=np.int64)
    for out_axis, in_axis in enumerate(order):
        matrix[out_axis, in_axis] = -1 if out_axis in flips else 1
    return matrix


def symmetry_from_matrix(matrix: np.ndarray) -> int:
    for k in range(N_SYMMETRIES):
        if np.array_equal(symmetry_matrix(k), matrix):
            return k
    raise ValueError("not a signed permutation matrix")


def is_rotation(k: int) -> bool:
    return round(float(np.linalg.det(symmetry_matrix(k)))) == 1


def apply_symmetry(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply symmetry k to the last three dimensions of x (any leading batch/channel dimensions)."""
    order, flips = symmetry_axes(k)
    lead = x.ndim - 3
    x = x.permute(*range(lead), *(lead + a for a in order))
    return x.flip([lead + a for a in flips]) if flips else x


def invert_symmetry(k: int) -> int:
    """The index of the inverse symmetry (for mapping saliency maps back, for instance)."""
    return symmetry_from_matrix(symmetry_matrix(k).T)


def apply_symmetries(batch: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ks[i] to batch[i] ([B, C, D, H, W] with D == H == W), grouped by symmetry.

    Each distinct symmetry in the batch costs one gather; no augmented copies of the dataset exist.
    """
    if batch.shape[-1] != batch.shape[-2] or batch.shape[-2] != batch.shape[-3]:
        raise ValueError(f"cube symmetries need a cubic patch, got {tuple(batch.shape[-3:])}")
    out = torch.empty_like(batch, memory_format=torch.contiguous_format)
    for k in torch.unique(ks).tolist():
        rows = (ks == k).nonzero().squeeze(1)
        out[rows] = apply_symmetry(batch[rows], int(k))
    return out


_INDEX_MAPS: dict[tuple[int, str], torch.Tensor] = {}


def symmetry_index_maps(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[48, size³] source voxel of each output voxel under each symmetry (flat indices), cached per device."""
    key = (size, str(device))
    if key not in _INDEX_MAPS:
        grid = torch.arange(size**3).view(size, size, size)
        maps = torch.stack([apply_symmetry(grid, k).flatten() for k in range(N_SYMMETRIES)])
        _INDEX_MAPS[key] = maps.to(device)
    return _INDEX_MAPS[key]


def gather_augmented(images: torch.Tensor, idx: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """images[idx[i]] in symmetry ks[i] ([B, C, D, H, W]); equal to apply_symmetries(images[idx], ks).

    Each symmetry is a fixed permutation of the voxels (symmetry_index_maps), so augmentation is a gather.
    On the CPU one contiguous index_select per sample is ~15× faster than permute+flip copies grouped by
    symmetry (strided flips thrash the cache); on a GPU one batched gather runs with no host round trip.
    """
    n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    if images.shape[-3:] != (size, size, size):
        raise ValueError(f"cube symmetries need a cubic patch, got {tuple(images.shape[-3:])}")
    flat = images.reshape(n, channels, size**3)
    maps = symmetry_index_maps(size, images.device)
    out = batched_gather(flat, maps, idx, ks) if images.device.type != "cpu" else per_sample_gather(flat, maps, idx, ks)
    return out.view(len(idx), channels, size, size, size)


def batched_gather(flat: torch.Tensor, maps: torch.Tensor, idx: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """[B, C, V] = flat[idx] with voxels permuted by maps[ks]: one kernel, no host synchronisation (GPU)."""
    return flat[idx].gather(2, maps[ks].unsqueeze(1).expand(-1, flat.shape[1], -1))


def per_sample_gather(flat: torch.Tensor, maps: torch.Tensor, idx: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Same result as batched_gather, one contiguous index_select per sample (fastest on the CPU). maps may list
    fewer voxels than flat has (a region of the patch): the output has one per map entry."""
    out = torch.empty((len(idx), flat.shape[1], maps.shape[1]), dtype=flat.dtype)
    for row, (i, k) in enumerate(zip(idx.tolist(), ks.tolist(), strict=True)):
        torch.index_select(flat[i], 1, maps[k], out=out[row])
    return out
