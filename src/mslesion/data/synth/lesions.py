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
    texture_ppb: tuple[float, float] | None = None  # patchy susceptibility inside the lesion (std range)


# SYNTH_VERSION 3. The raters of Rahmanzadeh et al. (2022) classified lesions by eye on QSM, so a *classified*
# lesion is one whose contrast is plain against the white-matter texture and noise (3-8 ppb texture, TKD noise
# of similar size): the labelled classes sit clearly apart, and the contrasts between their criteria belong to
# class 1 ("between" below), as do lesions too small to judge. Values, and why:
# - isointense (2): within +-4 ppb of white matter, remyelinated myelin restores the susceptibility.
# - hypointense (6): -45...-18 ppb: diamagnetic, visibly darker (remyelinated with dense new myelin, or iron
#   loss); below -18 so that it is a few texture sigmas from iso.
# - hyperintense (5): +18...+55 ppb: myelin loss (and iron) make demyelinated lesions paramagnetic.
# - PRL (3): core -4...+15, a rim of iron-laden microglia at +35...+90 ppb (PRL rims are among the most
#   conspicuous QSM findings; Absinta 2016, Dal-Bianco 2017 report rims well above lesion and white matter).
# - hypointense rim (4): iso core, a diamagnetic rim -70...-30 ppb on every lesion (Table 1's description).
# Sizes: with real shapes the bank's 30-fold volume spread swamped v2's mild size factors (mask-only CNN ROC AUC
# 0.615, below the paper's 69% accuracy). Demyelinating lesions are the larger ones in MS cohorts (chronic
# active/PRLs are larger and expand, Absinta 2019; small lesions remyelinate more often, Goldschmidt 2009), so
# demyelinating classes get 1.5-2x and remyelinating 0.85x; class 1 is the smallest (small lesions are the
# ones raters cannot classify).
# FLAIR (SYNTH_VERSION 4): remyelinated lesions 0.40 above white matter, demyelinated 0.52, the others 0.45, each
# lesion spread x exp(N(0, 0.3)). Remyelinated "shadow plaques" stay visible on T2-weighted MRI but are less
# conspicuous than demyelinated lesions (Barkhof et al. 2003, Arch Neurol), and conventional MRI tells the two
# apart poorly (why QSM is used at all): the gap is small against the spread. v2's 0.55 vs 0.40 lifted a
# FLAIR-only proxy to ROC AUC 0.82; v3's equal brightness left FLAIR-only at ROC AUC 0.735 (60.9% accuracy,
# below the 66.5% majority baseline, against the paper's 70.1%); v4's gap gives the proxy 0.789.
CLASS_APPEARANCE = {
    1: ClassAppearance((-20, 30), (-40, 40), 0.5, size_factor=0.75, flair_excess=0.45,
                       texture_ppb=(6, 15)),  # the patchy kind; the other kinds: CLASS1_KINDS
    2: ClassAppearance((-4, 4), size_factor=0.85, flair_excess=0.40),
    3: ClassAppearance((-4, 15), (35, 90), 1.0, size_factor=2.0, flair_excess=0.52),
    4: ClassAppearance((-4, 4), (-70, -30), 1.0, size_factor=1.2),
    5: ClassAppearance((18, 55), size_factor=1.5, flair_excess=0.52),
    6: ClassAppearance((-45, -18), size_factor=0.85, flair_excess=0.40),
}
# Class 1 is heterogeneous (the paper: lesions raters could not classify "due to lesion heterogeneity or presence
# of artifacts"; some merged from lesions of classes 2-6). Single class-1 lesions are one of these kinds, drawn
# with these probabilities (MERGED_CLASS1_FRACTION of class 1 are merged lesions instead). The split is not
# reported; the fractions are a guess that keeps each kind common enough to matter.
# - between: contrast between the criteria (core between iso and hyper/hypo, or a faint rim on an iso core):
#   near a criterion's edge the call is a coin toss, which makes a perfect score impossible;
# - patchy: mixed hyper/hypo areas inside (CLASS_APPEARANCE[1]);
# - vein: a lesion of class 2-6 with a large vein through it, whose paramagnetic blooming hides the contrast;
# - streak: a lesion of class 2-6 beside a strong susceptibility source (microbleed, calcification) whose
#   TKD streaking runs across it;
# - unrated: a lesion of class 2-6 that looks like its class but was left unclassified (raters disagreed):
#   genuinely indistinguishable from the labelled ones.
CLASS1_KINDS = {"between": 0.40, "patchy": 0.25, "vein": 0.12, "streak": 0.13, "unrated": 0.10}
BETWEEN = (  # (core ppb, rim ppb or None): the gaps between the labelled criteria, overlapping their edges a little
    ((3.0, 21.0), None),  # iso .. hyper
    ((-21.0, -3.0), None),  # iso .. hypo
    ((-4.0, 8.0), (10.0, 38.0)),  # iso .. PRL: a faint rim
)
CORRUPTING_VEIN_MM = (0.5, 0.9)  # radius of the vein through a "vein" lesion (a central vein is 0.1-0.25 mm)
# Hemosiderin of a microbleed or a calcification: +-0.5-1.5 ppm over 0.5-1 mm, 1-4 mm from the lesion edge.
STREAK_SOURCE_PPM = (0.5, 1.5)
STREAK_SOURCE_MM = (0.5, 1.0)
STREAK_GAP_MM = (1.0, 4.0)
# Shapes are real (see `shapes`); a class's size factor scales them, relative to the Table 1 mix so that the
# cohort as a whole keeps the real size distribution.
REFERENCE_SIZE_FACTOR = float(np.exp(
    sum(TABLE1_COUNTS[c] * np.log(CLASS_APPEARANCE[c].size_factor) for c in TABLE1_COUNTS)
    / sum(TABLE1_COUNTS.values())
))
# Class 1 of the patch cohort: the paper's unclassified lesions "may have been formed by multiple lesions from
# classes 2 to 6 merging together"; the rest are the single kinds of CLASS1_KINDS. The split is not reported,
# so a guess.
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
    texture_ppm: float = 0.0  # std of a patchy susceptibility texture inside (0: none)
    texture_seed: int = 0  # its random stream: the texture is drawn at render time, on the grid
    source_ppm: float = 0.0  # a strong susceptibility source beside the lesion (0: none)
    source_mm: float = 0.0  # its radius
    source_offset_mm: np.ndarray | None = None  # its centre relative to the lesion's centre
    kind: str = ""  # class 1: which kind of unclassified lesion (CLASS1_KINDS); "" otherwise

    @property
    def extent_mm(self) -> float:
        """Radius of a ball around the centre that holds the whole lesion (and a source beside it)."""
        extent = shapes.shape_field(self.shape).extent_mm * self.scale
        if self.source_offset_mm is not None:
            extent = max(extent, float(np.linalg.norm(self.source_offset_mm)) + self.source_mm)
        return extent

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
    scaled by the class's size factor, with class-specific susceptibility; class 1 one of CLASS1_KINDS."""
    if code == 1:
        kind = str(rng.choice(list(CLASS1_KINDS), p=np.array(list(CLASS1_KINDS.values()))))
        if kind in ("vein", "streak", "unrated"):  # a lesion of classes 2-6 underneath
            lesion = draw_lesion(rng, draw_code(rng, tuple(c for c in TABLE1_COUNTS if c != 1)), centre_mm, shape)
            return replace(corrupt(rng, lesion, kind), code=1, kind=kind)
        look = CLASS_APPEARANCE[1]
        if kind == "between":
            core, rim = BETWEEN[int(rng.integers(len(BETWEEN)))]
            look = replace(look, core_ppb=core, rim_ppb=rim, rim_probability=1.0 if rim else 0.0, texture_ppb=None)
        return replace(draw_appearance(rng, 1, look, centre_mm, shape), kind=kind)
    return draw_appearance(rng, code, CLASS_APPEARANCE[code], centre_mm, shape)


def draw_appearance(
    rng: np.random.Generator, code: int, look: ClassAppearance, centre_mm: np.ndarray | None, shape: int | None
) -> Lesion:
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
        texture_ppm=float(rng.uniform(*look.texture_ppb)) / 1000 if look.texture_ppb else 0.0,
        texture_seed=int(rng.integers(2**31)),
    )


def corrupt(rng: np.random.Generator, lesion: Lesion, kind: str) -> Lesion:
    """A classifiable lesion made unclassifiable by a large vein through it or a streaking source beside it
    ("unrated": left as it is)."""
    if kind == "vein":
        return replace(lesion, vein_radius_mm=float(rng.uniform(*CORRUPTING_VEIN_MM)))
    if kind == "streak":
        radius = float(rng.uniform(*STREAK_SOURCE_MM))
        distance = shapes.shape_field(lesion.shape).extent_mm * lesion.scale * float(rng.uniform(0.5, 1.0)) \
            + radius + float(rng.uniform(*STREAK_GAP_MM))
        sign = 1.0 if rng.random() < 0.7 else -1.0  # microbleeds (paramagnetic) more often than calcifications
        return replace(lesion, source_ppm=sign * float(rng.uniform(*STREAK_SOURCE_PPM)), source_mm=radius,
                       source_offset_mm=physics.unit_vector(rng) * distance)
    return lesion


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
        if part.texture_ppm > 0:
            texture = physics.smooth_random_field(np.random.default_rng(part.texture_seed), distance.shape,
                                                  grid.voxel_mm, 1.0, part.texture_ppm)
            part_chi += fraction * texture
        chi += np.where(own, part_chi, np.float32(0))
        if part.source_ppm != 0 and part.source_offset_mm is not None:
            offsets = grid.offsets(box, part.centre_mm + part.source_offset_mm)
            ball = physics.partial_volume(np.sqrt((offsets**2).sum(axis=0)) - np.float32(part.source_mm),
                                          grid.voxel_mm)
            chi += ball * np.float32(part.source_ppm)
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
