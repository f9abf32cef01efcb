"""Real lesion shapes for the synthetic cohort: a bank of lesions cut from open consensus masks.

Why a bank and not a parametric model: real MS lesion volumes span four orders of magnitude (10 to 46,000 mm³)
with a heavy tail, and their shapes range from near-spheres to flat, branching periventricular caps. A few
parameters (log-normal size, ellipsoid, wobble) matched neither the tail nor the irregularity; a bank
reproduces both by construction, at a cost of ~0.2 MB, and the synthetic cohort stays honest about where its
shapes come from. What the bank cannot give (new sizes, class-dependent sizes) comes from scaling and
rotating its shapes.

The bank (`lesion_bank.npz`, built by scripts/build_lesion_bank.py) holds every lesion of at least 10 mm³ of
20 of the 30 consensus masks of open_ms_data (BUILD_MASKS; the other 10, HELD_OUT_MASKS, are kept to test
the synthetic cohort against). Each connected component (6-connected, 1 mm MNI space) was split into lesions
with `mslesion.data.lesions.split_component` (at most MAX_PARTS parts: the shallowest necks of larger unions
are merged): a component of one lesion is a *single* shape; a confluent component is kept whole, as its parts
in place, so that the generator can give each part its own class and the truth table can list them.

Data: open_ms_data, CC-BY 4.0 — Lesjak Ž, Galimzianova A, Koren A, et al. "A Novel Public MR Image Dataset of
Multiple Sclerosis Patients With Lesion Segmentations Based on Multi-rater Consensus." Neuroinformatics 16
(2018) 51–63, doi:10.1007/s12021-017-9348-7; https://github.com/muschellij2/open_ms_data (commit 65704901).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy import ndimage

ATTRIBUTION = (
    "Lesion shapes from open_ms_data (CC-BY 4.0): Lesjak et al., Neuroinformatics 16 (2018) 51-63, "
    "doi:10.1007/s12021-017-9348-7"
)
ALL_MASKS = tuple(f"patient{n:02d}" for n in range(1, 31))
# Held out, stratified by lesion load: the 30 masks sorted by their number of lesions >= 10 mm³ (ties by name),
# every third from the first. (Every third by patient number gave a build set whose volumes differ from the
# held-out ones by KS 0.068 on their own; stratified: 0.028.)
HELD_OUT_MASKS = ("patient01", "patient03", "patient05", "patient12", "patient13", "patient16", "patient17",
                  "patient21", "patient26", "patient27")
BUILD_MASKS = tuple(m for m in ALL_MASKS if m not in HELD_OUT_MASKS)
BANK_FILE = "lesion_bank.npz"
MAX_PARTS = 5  # confluent lesions are unions of 2-5 lesions
PAD_VOXELS = 4  # background kept around each shape, so its signed distance reaches past rims and partial volume
OUTSIDE_MM = 1e3  # signed distance reported outside a shape's padded box


@dataclass(frozen=True)
class LesionBank:
    """Lesion shapes at 1 mm: single lesions, and the lesions (parts) of real confluent components."""

    masks: tuple[np.ndarray, ...]  # bool, tight box of each shape
    group: np.ndarray  # int per shape: its confluent component (0, 1, ...), -1 for a single lesion
    offset: np.ndarray  # int (n, 3): a part's box corner relative to its component's box corner (voxels)
    n_components: int  # components (singles + confluent) the bank was cut from

    @property
    def singles(self) -> np.ndarray:
        return np.flatnonzero(self.group < 0)

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1

    def group_parts(self, group: int) -> np.ndarray:
        return np.flatnonzero(self.group == group)

    @property
    def confluent_fraction(self) -> float:
        """Fraction of the real components that are confluent (several lesions grown together)."""
        return self.n_groups / self.n_components


def pack(masks: list[np.ndarray], group: list[int], offset: list[tuple[int, int, int]],
         n_components: int, sources: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of a bank file: all masks as one bit stream, their shapes, and the metadata."""
    bits = np.packbits(np.concatenate([m.ravel() for m in masks]))
    return {
        "bits": bits, "shapes": np.array([m.shape for m in masks], np.int32), "group": np.asarray(group, np.int32),
        "offset": np.asarray(offset, np.int32).reshape(-1, 3), "n_components": np.int64(n_components),
        "sources": np.array(sources), "attribution": np.array(ATTRIBUTION),
    }


def unpack(arrays) -> LesionBank:
    shapes = arrays["shapes"]
    sizes = np.prod(shapes, axis=1)
    flat = np.unpackbits(arrays["bits"], count=int(sizes.sum())).astype(bool)
    ends = np.cumsum(sizes)
    masks = tuple(flat[end - size:end].reshape(shape) for end, size, shape in zip(ends, sizes, shapes, strict=True))
    return LesionBank(masks, arrays["group"].astype(int), arrays["offset"].astype(int), int(arrays["n_components"]))


@lru_cache(maxsize=1)
def load_bank() -> LesionBank:
    """The bank shipped with the package."""
    with resources.files("mslesion.data.synth").joinpath(BANK_FILE).open("rb") as f, np.load(f) as arrays:
        return unpack(arrays)


@dataclass(frozen=True)
class ShapeField:
    """A bank shape as a signed distance (mm, negative inside) on its padded 1 mm box."""

    distance: np.ndarray  # float32
    centre: np.ndarray  # index (in `distance`) of the shape's centre: its centroid voxel
    extent_mm: float  # distance from the centre to the farthest shape voxel corner
    volume_mm3: float


@lru_cache(maxsize=4096)
def shape_field(index: int) -> ShapeField:
    """The signed distance of bank shape `index`, zero half-way between inside and outside voxel centres."""
    inside = np.pad(load_bank().masks[index], PAD_VOXELS)
    distance = np.where(inside, 0.5 - ndimage.distance_transform_edt(inside),
                        ndimage.distance_transform_edt(~inside) - 0.5).astype(np.float32)
    distance.flags.writeable = False
    voxels = np.argwhere(inside)
    centre = np.rint(voxels.mean(axis=0)).astype(int)
    if not inside[tuple(centre)]:  # a curved lesion: its centre is the deepest voxel instead
        centre = np.unravel_index(int(np.argmin(distance)), distance.shape)
        centre = np.asarray(centre)
    extent = float(np.sqrt(((voxels - centre) ** 2).sum(axis=1)).max()) + np.sqrt(3) / 2
    return ShapeField(distance, centre, extent, float(len(voxels)))


@lru_cache(maxsize=256)
def group_layout(group: int) -> tuple[np.ndarray, np.ndarray]:
    """Bank indices of a confluent component's parts and each part's centre relative to the component's
    centre voxel (mm at 1 mm, integers: a part lands exactly where it was)."""
    bank = load_bank()
    indices = bank.group_parts(group)
    # shape_field(i).centre is in the padded box: subtract the padding to get the part's own box
    centres = np.array([bank.offset[i] + shape_field(int(i)).centre - PAD_VOXELS for i in indices], np.float64)
    volumes = np.array([shape_field(int(i)).volume_mm3 for i in indices])
    middle = np.rint((centres * volumes[:, None]).sum(axis=0) / volumes.sum())
    return indices, centres - middle


def signed_distance(index: int, offsets_mm: np.ndarray, rotation: np.ndarray, scale: float) -> np.ndarray:
    """Signed distance (mm) of bank shape `index`, rotated and scaled, at `offsets_mm` (3, ...) from its centre.

    Trilinear interpolation of the 1 mm distance map: exact at 1 mm for a cube symmetry and a centre on a voxel,
    a smooth resampling at any other voxel size.
    """
    field = shape_field(index)
    local = np.tensordot(rotation.T.astype(np.float32), offsets_mm, axes=1) / np.float32(scale)
    coords = local + field.centre.astype(np.float32).reshape(3, *([1] * (local.ndim - 1)))
    sampled = ndimage.map_coordinates(field.distance, coords.reshape(3, -1), order=1, mode="constant",
                                      cval=OUTSIDE_MM, prefilter=False)
    return sampled.reshape(local.shape[1:]) * np.float32(scale)


def cube_symmetry(rng: np.random.Generator) -> np.ndarray:
    """One of the 48 rotations and reflections of the cube: a bank shape seen from another side, exactly."""
    matrix = np.eye(3)[rng.permutation(3)]
    return matrix * rng.choice([-1.0, 1.0], size=3)[:, None]
