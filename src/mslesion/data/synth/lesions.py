"""Synthetic lesions: their geometry and appearance per Table 1 class, independent of any voxel grid, and
their rendering onto a simulation grid. Shared by the patch cohort (`cohort`) and whole-subject volumes (`volumes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mslesion.data.synth import physics, shapes
from mslesion.paper import TABLE1_COUNTS, TRAINED_CODES

# Deoxygenated venous blood vs tissue: Hct 0.4 x 3.39 ppm (SI, Spees et al. 2001) x (1 - Y) with Y ~ 0.65.
VEIN_CHI_PPM = 0.45


@dataclass(frozen=True)
class ClassAppearance:
    """How a Table 1 class looks: susceptibility (ppb relative to white matter), rim, size, FLAIR."""

    core_ppb: tuple[float, float]
    rim_ppb: tuple[float, float] | None = None
    rim_probability: float = 0.0
    size_factor: float = 1.0
    flair_excess: float = 0.45  # median of FLAIR lesion / white matter - 1


# Ranges after the visual criteria of Rahmanzadeh et al. (2022): iso within a few ppb of white matter,
# hypo/hyperintense clearly below/above, rims of iron-laden microglia (PRL) strongly paramagnetic.
# Size and FLAIR differences are calibrated so that FLAIR-only and mask-only classifiers stay near the
# paper's 70% and 69% (majority baseline 66.7%): demyelinating lesions a little larger and brighter.
CLASS_APPEARANCE = {
    1: ClassAppearance((-20, 30), (-40, 40), 0.5, size_factor=0.75, flair_excess=0.45),  # patchy, small
    2: ClassAppearance((-6, 6), flair_excess=0.45),
    3: ClassAppearance((-10, 20), (25, 70), 1.0, size_factor=1.5, flair_excess=0.57),
    4: ClassAppearance((-10, 10), (-60, -25), 1.0, size_factor=1.1, flair_excess=0.5),
    5: ClassAppearance((12, 45), size_factor=1.35, flair_excess=0.57),
    6: ClassAppearance((-35, -12), flair_excess=0.45),
}
# Shapes are real (see `shapes`); a class's size factor scales them, relative to the Table 1 mix so that the
# cohort as a whole keeps the real size distribution.
REFERENCE_SIZE_FACTOR = float(np.exp(
    sum(TABLE1_COUNTS[c] * np.log(CLASS_APPEARANCE[c].size_factor) for c in TABLE1_COUNTS)
    / sum(TABLE1_COUNTS.values())
))
# Class 1 of the patch cohort: the paper's unclassified lesions "may have been formed by multiple lesions from
# classes 2 to 6 merging together"; the rest are patchy mixtures. The split is not reported, so a guess.
MERGED_CLASS1_FRACTION = 0.25


@dataclass(frozen=True, eq=False)
class Lesion:
    """One lesion's geometry and appearance, independent of any voxel grid."""

    code: int
    centre_mm: np.ndarray
    shape: int  # index of its real shape in the lesion bank
    rotation: np.ndarray
    scale: float
    core_ppm: float
    rim_ppm: float  # rim susceptibility; rim_mm == 0 means no rim
    rim_mm: float
    gap_direction: np.ndarray
    gap_cos: float
    flair_excess: float
    vein_radius_mm: float  # central vein (0: none)
    vein_direction: np.ndarray

    @property
    def extent_mm(self) -> float:
        """Radius of a ball around the centre that holds the whole lesion."""
        return shapes.shape_field(self.shape).extent_mm * self.scale

    @property
    def radius_mm(self) -> float:
        """Radius of the ball of the same volume."""
        return float((3 * shapes.shape_field(self.shape).volume_mm3 / (4 * np.pi)) ** (1 / 3)) * self.scale


def size_scale(code: int) -> float:
    """Linear scale of a class's real shapes: the square root of its size factor relative to the Table 1 mix.

    Square root: the real shapes already vary 30-fold in volume within the bulk, and a full factor would
    stretch the cohort's volume distribution beyond the real one (measured: KS 0.115 against held-out masks).
    """
    return float(np.sqrt(CLASS_APPEARANCE[code].size_factor / REFERENCE_SIZE_FACTOR))


def draw_lesion(
    rng: np.random.Generator, code: int, centre_mm: np.ndarray | None = None, shape: int | None = None
) -> Lesion:
    """A lesion of class `code`: a real shape (a single lesion of the bank unless `shape` is given), turned and
    scaled by the class's size factor, with class-specific susceptibility."""
    look = CLASS_APPEARANCE[code]
    bank = shapes.load_bank()
    shape = int(bank.singles[rng.integers(len(bank.singles))]) if shape is None else shape
    has_rim = look.rim_ppb is not None and rng.random() < look.rim_probability
    rim_ppm = float(rng.uniform(*look.rim_ppb)) / 1000 if has_rim else 0.0  # type: ignore[misc]
    return Lesion(
        code=code,
        centre_mm=np.zeros(3) if centre_mm is None else np.asarray(centre_mm, dtype=np.float64),
        shape=shape, rotation=shapes.cube_symmetry(rng), scale=size_scale(code),
        core_ppm=float(rng.uniform(*look.core_ppb)) / 1000,
        rim_ppm=rim_ppm,
        rim_mm=float(rng.uniform(0.6, 1.5)) if has_rim else 0.0,
        gap_direction=physics.unit_vector(rng),
        gap_cos=float(np.cos(np.radians(rng.uniform(30, 70)))),
        flair_excess=float(np.clip(look.flair_excess * np.exp(rng.normal(0, 0.3)), 0.2, 1.0)),
        vein_radius_mm=float(rng.uniform(0.1, 0.25)) if rng.random() < 0.4 else 0.0,
        vein_direction=physics.unit_vector(rng),
    )


def draw_confluent(
    rng: np.random.Generator, draw_codes: Callable[[int], list[int]], centre_mm: np.ndarray | None = None
) -> list[Lesion]:
    """The lesions of a real confluent component of the bank, in place; `draw_codes(n)` gives their classes.

    The parts share one rotation and keep their real size (no class size factor): resampling a scaled union
    broke the thin bridges of half of them into pieces (measured at 1 mm), and they stay grown together
    exactly as in the real mask."""
    bank = shapes.load_bank()
    indices, offsets = shapes.group_layout(int(rng.integers(bank.n_groups)))
    centre = np.zeros(3) if centre_mm is None else np.asarray(centre_mm, dtype=np.float64)
    parts = [draw_lesion(rng, code, centre, shape=int(i)) for code, i in zip(draw_codes(len(indices)), indices,
                                                                               strict=True)]
    rotation = parts[0].rotation
    return [replace(p, rotation=rotation, scale=1.0, centre_mm=centre + rotation @ offset)
            for p, offset in zip(parts, offsets, strict=True)]


def is_confluent(rng: np.random.Generator) -> bool:
    """Whether a component is confluent, in the proportion of the real masks."""
    return bool(rng.random() < shapes.load_bank().confluent_fraction)


def mixed_codes(rng: np.random.Generator, n: int) -> list[int]:
    """Classes 2-6 for the n parts of a merged class 1 lesion, at least two different ones."""
    others = tuple(c for c in TABLE1_COUNTS if c != 1)
    codes = [draw_code(rng, others) for _ in range(n)]
    while len(set(codes)) == 1:  # a union of one class is that class, not class 1
        codes[-1] = draw_code(rng, others)
    return codes


def draw_component(rng: np.random.Generator, code: int, centre_mm: np.ndarray | None = None) -> list[Lesion]:
    """The lesion(s) of one connected component labelled `code` (patch cohort).

    A confluent component of classes 2-6 is a union of lesions of that class; class 1 is a union of lesions of
    different classes (MERGED_CLASS1_FRACTION of them) or a single patchy lesion."""
    if code == 1 and rng.random() < MERGED_CLASS1_FRACTION:
        return draw_confluent(rng, lambda n: mixed_codes(rng, n), centre_mm)
    if code != 1 and is_confluent(rng):
        return draw_confluent(rng, lambda n: [code] * n, centre_mm)
    return [draw_lesion(rng, code, centre_mm)]


def group_extent(parts: list[Lesion], centre_mm: np.ndarray) -> float:
    """Radius of a ball around `centre_mm` that holds every part."""
    return max(float(np.linalg.norm(p.centre_mm - centre_mm)) + p.extent_mm for p in parts)


@dataclass
class RenderedLesion:
    box: tuple[slice, slice, slice]
    inside: np.ndarray  # bool: the lesion mask
    fraction: np.ndarray  # partial volume 0..1
    chi_ppm: np.ndarray  # susceptibility relative to the surrounding tissue
    owner: np.ndarray  # int8: which part each voxel belongs to (index into the parts; the nearest part outside)
    flair_excess: np.ndarray  # FLAIR excess of each voxel (partial volume x its part's excess)


def render_lesion(lesion: Lesion | list[Lesion], grid: physics.SimulationGrid) -> RenderedLesion | None:
    """Voxelise a lesion, or the parts of a confluent lesion, on `grid` (None if it falls outside).

    A confluent lesion is one surface (the union of its parts); each voxel takes the appearance of the part it
    lies deepest in, and a rim follows the union's surface."""
    parts = [lesion] if isinstance(lesion, Lesion) else lesion
    centre = parts[0].centre_mm
    box = grid.box(centre, group_extent(parts, centre) + 2 * grid.voxel_mm)
    if box is None:
        return None
    distances = np.stack([
        shapes.signed_distance(p.shape, grid.offsets(box, p.centre_mm), p.rotation, p.scale) for p in parts
    ])
    owner = np.argmin(distances, axis=0).astype(np.int8)
    distance = np.min(distances, axis=0)
    fraction = physics.partial_volume(distance, grid.voxel_mm)
    chi = np.zeros(distance.shape, np.float32)
    excess = np.zeros(distance.shape, np.float32)
    for index, part in enumerate(parts):
        own = owner == index
        part_chi = fraction * np.float32(part.core_ppm)
        if part.rim_mm > 0:
            rim = physics.paramagnetic_rim(distance, grid.offsets(box, part.centre_mm), part.rim_mm,
                                           part.gap_direction, part.gap_cos, grid.voxel_mm)
            part_chi += rim * np.float32(part.rim_ppm - part.core_ppm)
        chi += np.where(own, part_chi, np.float32(0))
        excess += np.where(own, fraction * np.float32(part.flair_excess), np.float32(0))
        if part.vein_radius_mm > 0:
            offsets = grid.open_offsets(box, part.centre_mm)
            chi += physics.vein_tube(offsets, part.vein_direction, part.vein_radius_mm, grid.voxel_mm) * np.float32(
                VEIN_CHI_PPM)
    return RenderedLesion(box, distance <= 0, fraction, chi, owner, excess)


def place_neighbour(rng: np.random.Generator, centred: list[Lesion], neighbour: list[Lesion]) -> list[Lesion]:
    """Move `neighbour` to a random direction at a distance where it cannot overlap the centred lesion."""
    gap = float(rng.uniform(1.0, 8.0))
    here, there = centred[0].centre_mm, neighbour[0].centre_mm
    distance = group_extent(centred, here) + group_extent(neighbour, there) + gap
    shift = here + physics.unit_vector(rng) * distance - there
    return [replace(p, centre_mm=p.centre_mm + shift) for p in neighbour]


def table1_codes(labelled_only: bool) -> tuple[int, ...]:
    return TRAINED_CODES if labelled_only else tuple(sorted(TABLE1_COUNTS))


def draw_code(rng: np.random.Generator, codes: tuple[int, ...]) -> int:
    weights = np.array([TABLE1_COUNTS[c] for c in codes], dtype=np.float64)
    return int(codes[rng.choice(len(codes), p=weights / weights.sum())])
