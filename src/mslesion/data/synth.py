"""Synthetic MS lesion cohort: the project's default data, since the paper's patients are private.

Each lesion patch is simulated, not drawn: a susceptibility map chi (ppm, relative to white matter) of a
field of view larger than the patch holds a smooth white-matter texture, a few veins and the lesions;
the QSM channel is the dipole forward model of chi plus field noise, inverted by thresholded k-space
division (`physics.simulate_qsm`), so it carries the streaking and blurring of real QSM. FLAIR is white
matter times a bias field, brighter in lesions (partial volume at their edges), with Rician noise.

The mask channel marks the centred lesion only: neighbouring lesions may show in FLAIR and QSM, as they
do in real patches, but the mask says which lesion the label belongs to.

Classes follow the paper's Table 1 and the QSM criteria of Rahmanzadeh et al. (2022): what separates them
is the lesion's susceptibility relative to white matter (and a rim); size and FLAIR brightness differ only
weakly (demyelinating lesions a little larger and brighter), so FLAIR and mask alone carry a weak signal.
Patients differ in scanner gain, noise, QSM reconstruction and lesion load, so a patient-grouped split is
a harder, more honest test than a lesion-level one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mslesion.data import physics
from mslesion.data.dataset import MS_CHANNELS, TABLE1_COUNTS, PatchSet, write_patches
from mslesion.errors import InputError

SYNTH_VERSION = 1
PAPER_PATIENTS = 115
TRAINED_CODES = (2, 3, 5, 6)  # the paper trains on these; 1 and 4 are neither re- nor demyelinating
# Deoxygenated venous blood vs tissue: Hct 0.4 x 3.39 ppm (SI, Spees et al. 2001) x (1 - Y) with Y ~ 0.65.
VEIN_CHI_PPM = 0.45


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic cohort (saved in the output file's attributes)."""

    patients: int = 115
    """Number of patients (ids sub-001, sub-002, ...)."""
    lesions_scale: float = 1.0
    """Lesions per patient relative to the paper: 1.0 with 115 patients gives Table 1's counts."""
    labelled_only: bool = False
    """Skip classes 1 and 4: the paper does not train on them and they are most of the generation time."""
    patch_size: int = 35
    """Patch edge in voxels (the paper's 35)."""
    voxel_size_mm: float = 0.65
    """Isotropic voxel size in mm."""
    seed: int = 0
    """Random seed: the same seed and parameters give bit-identical patches."""
    fov_size: int = 64
    """Edge (voxels) of the field of view simulated around each patch, for the dipole convolution."""
    qsm_noise: float = 1.0
    """Multiplier on every patient's field noise (0: noiseless field; QSM still has TKD artefacts)."""
    neighbours_per_patch: float = 0.5
    """Mean number of other lesions near each lesion (they appear in FLAIR and QSM, not in the mask)."""
    veins_per_patch: float = 1.0
    """Mean number of veins crossing each patch (paramagnetic on QSM), besides central veins."""

    def __post_init__(self) -> None:
        _check(isinstance(self.patients, int) and self.patients >= 1, f"patients >= 1, got {self.patients}")
        _check(
            math.isfinite(self.lesions_scale) and self.lesions_scale > 0,
            f"lesions_scale must be > 0, got {self.lesions_scale}",
        )
        _check(
            isinstance(self.patch_size, int) and 9 <= self.patch_size <= 128,
            f"patch_size must be 9..128 voxels, got {self.patch_size}",
        )
        _check(
            isinstance(self.fov_size, int) and self.patch_size <= self.fov_size <= 256,
            f"fov_size must be patch_size..256 voxels, got {self.fov_size}",
        )
        _check(0.1 <= self.voxel_size_mm <= 5.0, f"voxel_size_mm must be 0.1..5, got {self.voxel_size_mm}")
        _check(
            isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed}"
        )
        for name in ("qsm_noise", "neighbours_per_patch", "veins_per_patch"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, f"{name} must be >= 0, got {value}")

    def describe(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in asdict(self).items())
        return f"mslesion.data.synth v{SYNTH_VERSION} ({settings})"


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise InputError(f"synthetic cohort: {problem}")


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


@dataclass(frozen=True)
class PatientEffects:
    """Per-patient acquisition and reconstruction differences."""

    flair_gain: float  # scanner scaling of FLAIR (arbitrary units; white matter ~ gain)
    flair_contrast: float  # multiplies every lesion's FLAIR excess
    flair_noise: float  # Rician sigma relative to white matter
    bias_amplitude: float  # FLAIR bias field standard deviation (relative)
    field_noise_ppm: float  # white noise on the field map before inversion
    tkd_threshold: float  # QSM reconstruction setting
    qsm_offset_ppm: float  # QSM reference-region offset
    texture_ppm: float  # white-matter susceptibility texture standard deviation

    @classmethod
    def draw(cls, rng: np.random.Generator, cfg: SynthConfig) -> PatientEffects:
        return cls(
            flair_gain=float(np.exp(rng.normal(0.0, 0.3))),
            flair_contrast=float(np.exp(rng.normal(0.0, 0.15))),
            flair_noise=float(rng.uniform(0.02, 0.06)),
            bias_amplitude=float(rng.uniform(0.02, 0.08)),
            # Effective field noise: thermal noise (~1-3 ppb at 3T) plus background-removal and model errors;
            # set so that QSM separates the classes about as well as in the paper (~89%), not perfectly.
            field_noise_ppm=float(rng.uniform(0.007, 0.018)) * cfg.qsm_noise,
            tkd_threshold=float(rng.uniform(0.1, 0.2)),
            qsm_offset_ppm=float(rng.normal(0.0, 0.004)),
            texture_ppm=float(rng.uniform(0.003, 0.008)),
        )


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


def render_lesion(lesion: Lesion, grid: physics.Grid) -> RenderedLesion | None:
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



# ---- patches -------------------------------------------------------------------------------------------


def synth_patch(cfg: SynthConfig, patient: PatientEffects, code: int, rng: np.random.Generator) -> np.ndarray:
    """FLAIR, QSM and mask (float32 [3, p, p, p]) of one lesion of class `code`, centred in the patch."""
    n, p, voxel = cfg.fov_size, cfg.patch_size, cfg.voxel_size_mm
    start = (n - p) // 2
    # Voxel (start + p // 2) of the field of view is at 0 mm; the lesion centre is jittered within a voxel
    # as a segmentation centroid would be.
    fov = physics.Grid((n, n, n), voxel, ((-(start + p // 2)) * voxel,) * 3)
    centred = draw_lesion(rng, code, rng.uniform(-0.5, 0.5, 3) * voxel)
    neighbours = [
        place_neighbour(rng, centred, draw_lesion(rng, draw_code(rng, table1_codes(False))))
        for _ in range(int(rng.poisson(cfg.neighbours_per_patch)))
    ]
    chi = np.zeros(fov.shape, np.float32)
    flair_excess = np.zeros(fov.shape, np.float32)
    mask = np.zeros(fov.shape, np.float32)
    for index, lesion in enumerate([centred, *neighbours]):
        rendered = render_lesion(lesion, fov)
        if rendered is None:
            continue
        chi[rendered.box] += rendered.chi_ppm
        excess = rendered.fraction * np.float32(lesion.flair_excess)
        np.maximum(flair_excess[rendered.box], excess, out=flair_excess[rendered.box])
        if index == 0:
            mask[rendered.box] = rendered.inside
    for _ in range(int(rng.poisson(cfg.veins_per_patch))):
        point = rng.uniform(-0.3, 0.3, 3) * n * voxel
        radius = rng.uniform(0.2, 0.6)
        tube = physics.vein_tube(fov.open_offsets(None, point), physics.unit_vector(rng), radius, voxel)
        chi += tube * np.float32(VEIN_CHI_PPM)
    crop = (slice(start, start + p),) * 3
    return np.stack([
        synth_flair(rng, patient, flair_excess[crop], voxel),
        synth_qsm(rng, patient, chi, voxel)[crop],
        mask[crop],
    ])


def synth_qsm(
    rng: np.random.Generator, patient: PatientEffects, chi_ppm: np.ndarray, voxel: float
) -> np.ndarray:
    """QSM (ppm) of a lesion susceptibility map embedded in textured white matter."""
    qsm = physics.simulate_qsm(
        chi_ppm, voxel, patient.field_noise_ppm, patient.tkd_threshold, rng, patient.texture_ppm
    )
    return qsm + np.float32(patient.qsm_offset_ppm)


def synth_flair(
    rng: np.random.Generator, patient: PatientEffects, excess: np.ndarray, voxel: float
) -> np.ndarray:
    """FLAIR: white matter x bias field x (1 + lesion excess), with Rician noise."""
    bias = physics.smooth_random_field(rng, excess.shape, voxel, 8.0, patient.bias_amplitude)
    tissue = np.float32(patient.flair_gain) * (1 + bias) * (1 + np.float32(patient.flair_contrast) * excess)
    return physics.rician_magnitude(rng, tissue, patient.flair_gain * patient.flair_noise)


# ---- cohort --------------------------------------------------------------------------------------------


def class_counts(cfg: SynthConfig) -> dict[int, int]:
    """Lesions per class: Table 1 scaled by lesions_scale x patients / 115 (rounded; at least one of each
    trained class so that even a tiny cohort has both remyelinating and demyelinating lesions)."""
    factor = cfg.lesions_scale * cfg.patients / PAPER_PATIENTS
    return {
        code: max(round(TABLE1_COUNTS[code] * factor), 1 if code in TRAINED_CODES else 0)
        for code in table1_codes(cfg.labelled_only)
    }


def allocate_lesions(cfg: SynthConfig, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(patient index, lesion id, code) for every lesion, sorted by patient and lesion id.

    Patients differ in lesion load (gamma-distributed) and in their mix of classes (some patients have
    many PRLs, as in real cohorts), which is what makes a patient-grouped split harder than a lesion one.
    """
    load = rng.gamma(2.0, 1.0, cfg.patients)
    per_patient: list[list[int]] = [[] for _ in range(cfg.patients)]
    for code, count in class_counts(cfg).items():
        weights = load * rng.gamma(3.0, 1.0, cfg.patients)
        for patient in rng.choice(cfg.patients, size=count, p=weights / weights.sum()):
            per_patient[patient].append(code)
    plan = []
    for patient, codes in enumerate(per_patient):
        for lesion_id, code in enumerate(rng.permutation(np.asarray(codes, dtype=int)), start=1):
            plan.append((patient, lesion_id, int(code)))
    return plan


def patient_id(index: int, patients: int) -> str:
    return f"sub-{index + 1:0{max(3, len(str(patients)))}d}"


def generate_cohort(cfg: SynthConfig, progress: Callable[[int, int], None] | None = None) -> PatchSet:
    """Simulate the whole cohort in memory (about 0.5 MB per lesion); `progress(done, total)` per lesion.

    Every patient and every lesion has its own random stream derived from (seed, patient, lesion), so a
    lesion's patch does not depend on how many lesions come before it.
    """
    plan = allocate_lesions(cfg, np.random.default_rng([cfg.seed, 0]))
    p = cfg.patch_size
    images = np.empty((len(plan), len(MS_CHANNELS), p, p, p), dtype=np.float32)
    effects: dict[int, PatientEffects] = {}
    for row, (patient, lesion_id, code) in enumerate(plan):
        if patient not in effects:
            effects[patient] = PatientEffects.draw(np.random.default_rng([cfg.seed, 1, patient]), cfg)
        rng = np.random.default_rng([cfg.seed, 2, patient, lesion_id])
        images[row] = synth_patch(cfg, effects[patient], code, rng)
        if progress is not None:
            progress(row + 1, len(plan))
    return PatchSet(
        images=images,
        labels=np.array([code for _, _, code in plan], dtype=np.int64),
        patients=np.array([patient_id(pt, cfg.patients) for pt, _, _ in plan], dtype=object),
        lesions=np.array([lesion_id for _, lesion_id, _ in plan], dtype=np.int64),
        channels=MS_CHANNELS,
        voxel_size_mm=(cfg.voxel_size_mm,) * 3,
        source=cfg.describe(),
        attrs={"synth_version": SYNTH_VERSION, "synth_config": json.dumps(asdict(cfg)),
               **{f"synth_{k}": v for k, v in asdict(cfg).items()}},
    )


def write_cohort(
    cfg: SynthConfig, out_path: str | Path, progress: Callable[[int, int], None] | None = None
) -> PatchSet:
    """Generate the cohort and write it as an HDF5 patch file (atomically)."""
    patches = generate_cohort(cfg, progress)
    write_patches(out_path, patches)
    return patches
