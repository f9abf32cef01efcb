"""Synthetic lesions: their geometry and appearance per Table 1 class, independent of any voxel grid, and
their rendering onto a simulation grid. Shared by the patch cohort (`cohort`) and whole-subject volumes (`volumes`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mslesion.data.synth import physics
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
MEDIAN_RADIUS_MM = 2.0  # equivalent radius ~2 mm: ~35 mm^3, the typical size of segmented MS lesions


@dataclass(frozen=True, eq=False)
class Lesion:
    """One lesion's geometry and appearance, independent of any voxel grid."""

    code: int
    centre_mm: np.ndarray
    radius_mm: float
    axes: np.ndarray  # relative semi-axes (product 1)
    rotation: np.ndarray
    wobble: np.ndarray  # see physics.radial_wobble
    lobes: np.ndarray  # (n, 4): offset mm, radius mm
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
        body = self.radius_mm * float(self.axes.max()) * (1 + float(np.abs(self.wobble[:, 5]).sum()))
        lobes = [np.linalg.norm(o[:3]) + o[3] * 1.35 for o in self.lobes]
        return max([body, *lobes])


def draw_lesion(rng: np.random.Generator, code: int, centre_mm: np.ndarray | None = None) -> Lesion:
    """A lesion of class `code`: log-normal size, irregular shape, class-specific susceptibility."""
    look = CLASS_APPEARANCE[code]
    radius = float(np.clip(MEDIAN_RADIUS_MM * look.size_factor * np.exp(rng.normal(0, 0.35)), 0.9, 5.5))
    axes = np.exp(rng.normal(0, 0.18, 3))
    axes /= np.prod(axes) ** (1 / 3)
    wobble = np.column_stack([
        [physics.unit_vector(rng) for _ in range(4)], rng.uniform(0.5, 1.5, 4),
        rng.uniform(0, 2 * np.pi, 4), rng.uniform(0, 0.08, 4),
    ])
    n_lobes = min(int(rng.poisson(0.4)), 2)
    lobes = np.array(
        [[*(physics.unit_vector(rng) * radius * rng.uniform(0.6, 1.0)), radius * rng.uniform(0.35, 0.6)]
         for _ in range(n_lobes)]
    ).reshape(n_lobes, 4)
    has_rim = look.rim_ppb is not None and rng.random() < look.rim_probability
    rim_ppm = float(rng.uniform(*look.rim_ppb)) / 1000 if has_rim else 0.0  # type: ignore[misc]
    return Lesion(
        code=code,
        centre_mm=np.zeros(3) if centre_mm is None else np.asarray(centre_mm, dtype=np.float64),
        radius_mm=radius, axes=axes, rotation=physics.random_rotation(rng), wobble=wobble, lobes=lobes,
        core_ppm=float(rng.uniform(*look.core_ppb)) / 1000,
        rim_ppm=rim_ppm,
        rim_mm=float(rng.uniform(0.6, 1.5)) if has_rim else 0.0,
        gap_direction=physics.unit_vector(rng),
        gap_cos=float(np.cos(np.radians(rng.uniform(30, 70)))),
        flair_excess=float(np.clip(look.flair_excess * np.exp(rng.normal(0, 0.3)), 0.2, 1.0)),
        vein_radius_mm=float(rng.uniform(0.1, 0.25)) if rng.random() < 0.4 else 0.0,
        vein_direction=physics.unit_vector(rng),
    )


@dataclass
class RenderedLesion:
    box: tuple[slice, slice, slice]
    inside: np.ndarray  # bool: the lesion mask
    fraction: np.ndarray  # partial volume 0..1
    chi_ppm: np.ndarray  # susceptibility relative to the surrounding tissue


def render_lesion(lesion: Lesion, grid: physics.SimulationGrid) -> RenderedLesion | None:
    """Voxelise a lesion on `grid` (None if it falls outside)."""
    box = grid.box(lesion.centre_mm, lesion.extent_mm + 2 * grid.voxel_mm)
    if box is None:
        return None
    offsets = grid.offsets(box, lesion.centre_mm)
    distance = physics.lesion_shape(
        offsets, lesion.radius_mm, lesion.axes, lesion.rotation, lesion.wobble, lesion.lobes
    )
    fraction = physics.partial_volume(distance, grid.voxel_mm)
    chi = fraction * np.float32(lesion.core_ppm)
    if lesion.rim_mm > 0:
        rim = physics.paramagnetic_rim(
            distance, offsets, lesion.rim_mm, lesion.gap_direction, lesion.gap_cos, grid.voxel_mm
        )
        chi += rim * np.float32(lesion.rim_ppm - lesion.core_ppm)
    if lesion.vein_radius_mm > 0:
        tube = physics.vein_tube(tuple(offsets), lesion.vein_direction, lesion.vein_radius_mm, grid.voxel_mm)
        chi += tube * np.float32(VEIN_CHI_PPM)
    return RenderedLesion(box, distance <= 0, fraction, chi)


def place_neighbour(rng: np.random.Generator, centred: Lesion, neighbour: Lesion) -> Lesion:
    """Move `neighbour` to a random direction at a distance where it cannot overlap the centred lesion."""
    gap = float(rng.uniform(1.0, 8.0))
    distance = centred.extent_mm + neighbour.extent_mm + gap
    return replace(neighbour, centre_mm=centred.centre_mm + physics.unit_vector(rng) * distance)


def table1_codes(labelled_only: bool) -> tuple[int, ...]:
    return TRAINED_CODES if labelled_only else tuple(sorted(TABLE1_COUNTS))


def draw_code(rng: np.random.Generator, codes: tuple[int, ...]) -> int:
    weights = np.array([TABLE1_COUNTS[c] for c in codes], dtype=np.float64)
    return int(codes[rng.choice(len(codes), p=weights / weights.sum())])
