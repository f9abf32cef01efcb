"""Synthetic whole-subject scans (BIDS-style NIfTI), for the extraction and prediction features.

Each subject is an ellipsoidal "brain" (grey matter around white matter, two ventricles) holding lesions
drawn and rendered exactly as in the patch generator (`lesions.draw_lesion`, `lesions.render_lesion`), and its
QSM is the same dipole forward model and TKD inversion (`physics.simulate_qsm`) applied to the whole
susceptibility map. Lesion shapes are real (`shapes`); about 3% of the lesions are confluent: real unions of
2-5 lesions, each part with its own class in the phenotype map and its own row in lesions.csv. Components never
touch: at least two voxels separate any two, so 26-connected components of the mask are exactly the
`component`s of the table (a confluent union counted once; its `component_label` is 1 when its parts differ).

Layout (BIDS-like):
  out_dir/dataset_description.json
  out_dir/sub-XXX/anat/sub-XXX_FLAIR.nii.gz                 float32, arbitrary units
  out_dir/sub-XXX/anat/sub-XXX_Chimap.nii.gz                float32, ppm
  out_dir/sub-XXX/anat/sub-XXX_label-lesion_mask.nii.gz     uint8 0/1
  out_dir/sub-XXX/anat/sub-XXX_desc-phenotype_dseg.nii.gz   uint8, Table 1 code of each lesion voxel
  out_dir/sub-XXX/lesions.csv   ground truth, one row per lesion (part): lesion_id, component, i, j, k (rounded
                                centroid voxel), voxels, label (Table 1 code), component_label, x_mm, y_mm, z_mm
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mslesion.atomic import atomic_path, write_atomic, write_json
from mslesion.config import SynthConfig
from mslesion.data.synth import physics
from mslesion.data.synth.cohort import PatientEffects, describe, patient_id
from mslesion.data.synth.lesions import (
    VEIN_CHI_PPM,
    Lesion,
    RenderedLesion,
    draw_code,
    draw_confluent,
    draw_lesion,
    group_extent,
    is_confluent,
    render_lesion,
    table1_codes,
)
from mslesion.errors import InputError
from mslesion.paper import PAPER_PATIENTS, TABLE1_COUNTS

# Susceptibility relative to CSF (ppm), typical of 3T QSM (Deistung et al. 2013; Langkammer et al. 2012).
CHI_WHITE_MATTER = -0.03
CHI_GREY_MATTER = 0.01
# FLAIR: fluid suppressed, grey matter a little brighter than white matter.
FLAIR_WHITE_MATTER, FLAIR_GREY_MATTER, FLAIR_CSF = 1.0, 1.25, 0.15
DEFAULT_SHAPE_MM = (96.0, 112.0, 96.0)  # field of view of a subject: a small adult brain at 1 mm
LESION_GAP_VOXELS = 2  # free voxels around every lesion, so that lesions stay separate components
MIN_LESION_VOXELS = 3
PLACEMENT_TRIES = 200


@dataclass
class Anatomy:
    brain: np.ndarray  # bool
    white_matter: np.ndarray  # bool, where lesions may lie
    csf: np.ndarray  # bool (ventricles)


@dataclass
class PlacedLesions:
    labels: np.ndarray  # int32 lesion id per voxel (0: none)
    chi_ppm: np.ndarray
    flair_excess: np.ndarray
    table: list[dict[str, int | float]] = field(default_factory=list)


def volume_affine(shape: tuple[int, int, int], voxel_mm: float) -> np.ndarray:
    """RAS affine with the voxel size on the diagonal and the volume centred on the world origin."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * voxel_mm
    return affine


def brain_anatomy(grid: physics.SimulationGrid, rng: np.random.Generator) -> Anatomy:
    """An ellipsoidal brain filling most of the grid, white matter inside, two ventricles near the centre."""
    half = np.asarray(grid.shape) * grid.voxel_mm / 2.0
    x, y, z = grid.open_offsets(None, np.zeros(3))
    semi = half * 0.9 * rng.uniform(0.95, 1.0, 3)
    radius2 = (x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2
    brain = radius2 <= 1.0
    white_matter = radius2 <= 0.8**2  # 0.8: room for the large real lesions (was 0.72 before SYNTH_VERSION 2)
    csf = np.zeros(grid.shape, bool)
    for side in (-1, 1):
        vx, vy, vz = semi * [0.12, 0.35, 0.12]
        cx = side * semi[0] * 0.14
        csf |= ((x - cx) / vx) ** 2 + (y / vy) ** 2 + ((z - semi[2] * 0.05) / vz) ** 2 <= 1.0
    return Anatomy(brain, white_matter & ~ndimage.binary_dilation(csf, iterations=3), csf)


def place_lesions(
    cfg: SynthConfig, grid: physics.SimulationGrid, anatomy: Anatomy, n_lesions: int, rng: np.random.Generator
) -> PlacedLesions:
    """Place `n_lesions` lesions (connected components: single or confluent), apart by the gap.

    A lesion is centred in white matter and lies in brain tissue: large real lesions (periventricular caps,
    confluent lesions) reach grey matter and fit nowhere in this small white matter otherwise. Each drawn lesion
    is rendered once around a voxel and tried at up to PLACEMENT_TRIES random white-matter voxels, the largest
    first: drawing a new lesion after every miss would keep mostly small ones."""
    placed = PlacedLesions(np.zeros(grid.shape, np.int32), np.zeros(grid.shape, np.float32),
                           np.zeros(grid.shape, np.float32))
    candidates = np.argwhere(ndimage.binary_erosion(anatomy.white_matter, iterations=2))
    tissue = anatomy.brain & ~anatomy.csf
    drawn = [local for _ in range(n_lesions) if (local := render_component(cfg, grid.voxel_mm, rng)) is not None]
    drawn.sort(key=lambda local: -int(local[1].inside.sum()))  # the largest first, while there is room
    components = 0
    for attempt in range(n_lesions * 3):
        if components == n_lesions:
            break
        local = drawn[attempt] if attempt < len(drawn) else render_component(cfg, grid.voxel_mm, rng)
        if local is None:
            continue
        parts, rendered, footprint = local
        half = np.asarray(rendered.inside.shape) // 2
        for _try in range(PLACEMENT_TRIES):
            corner = candidates[rng.integers(len(candidates))] - half
            box = tuple(slice(int(c), int(c) + n) for c, n in zip(corner, footprint.shape, strict=True))
            if min(corner) < 1 or any(b.stop >= n for b, n in zip(box, grid.shape, strict=True)):
                continue  # lesions never touch the volume's edge
            if placed.labels[box][footprint].any() or not tissue[box][rendered.inside].all():
                continue
            components += 1
            add_component(placed, grid, parts, rendered, box, components)
            break
    return placed


def render_component(
    cfg: SynthConfig, voxel_mm: float, rng: np.random.Generator
) -> tuple[list[Lesion], RenderedLesion, np.ndarray] | None:
    """A lesion (its parts) rendered on a local grid centred on a voxel, and its footprint (lesion + gap).

    Everything on the subject grid is voxel-aligned, so the local rendering moves to any voxel unchanged."""
    codes = table1_codes(cfg.labelled_only)
    if is_confluent(rng):
        parts = draw_confluent(rng, lambda n: [draw_code(rng, codes) for _ in range(n)])
    else:
        parts = [draw_lesion(rng, draw_code(rng, codes))]
    reach = int(np.ceil(group_extent(parts, np.zeros(3)) / voxel_mm)) + LESION_GAP_VOXELS + 2
    local = physics.SimulationGrid((2 * reach + 1,) * 3, voxel_mm, (-reach * voxel_mm,) * 3)
    rendered = render_lesion(parts, local)
    if rendered is None or rendered.inside.sum() < MIN_LESION_VOXELS:
        return None
    if ndimage.label(rendered.inside)[1] != 1:
        return None  # resampling broke a thin bridge (6-connected, as extract counts): not one lesion
    owned = [np.any(rendered.inside & (rendered.owner == n)) for n in range(len(parts))]
    if not all(owned):
        return None  # a part swallowed by the others
    gap = ndimage.generate_binary_structure(3, 3)  # 26-connected dilation: a cube around every voxel
    footprint = ndimage.binary_dilation(rendered.inside, gap, iterations=LESION_GAP_VOXELS)
    return parts, rendered, footprint


def add_component(
    placed: PlacedLesions, grid: physics.SimulationGrid, parts: list[Lesion], rendered: RenderedLesion,
    box: tuple[slice, ...], component: int,
) -> None:
    """Write a rendered lesion at `box` and one truth-table row per part."""
    first = len(placed.table) + 1
    ids = np.where(rendered.inside, rendered.owner.astype(np.int32) + first, 0)
    placed.labels[box] = np.where(rendered.inside, ids, placed.labels[box])
    placed.chi_ppm[box] += rendered.chi_ppm
    np.maximum(placed.flair_excess[box], rendered.flair_excess, out=placed.flair_excess[box])
    codes = {p.code for p in parts}
    component_label = parts[0].code if len(codes) == 1 else 1  # the paper: merged lesions are unclassified
    start = np.array([b.start for b in box])
    for n, part in enumerate(parts):
        voxels = np.argwhere(ids == first + n) + start
        centroid = voxels.mean(axis=0)
        i, j, k = np.rint(centroid).astype(int)
        x, y, z = np.asarray(grid.origin_mm) + centroid * grid.voxel_mm
        placed.table.append({
            "lesion_id": first + n, "component": component, "i": int(i), "j": int(j), "k": int(k),
            "voxels": int(len(voxels)), "label": part.code, "component_label": component_label,
            "x_mm": round(float(x), 3), "y_mm": round(float(y), 3), "z_mm": round(float(z), 3),
        })


def subject_images(
    cfg: SynthConfig, grid: physics.SimulationGrid, anatomy: Anatomy, lesions: PlacedLesions,
    patient: PatientEffects, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR and QSM (ppm, zero outside the brain) of one subject."""
    grey = anatomy.brain & ~anatomy.white_matter & ~anatomy.csf
    chi = np.where(grey, CHI_GREY_MATTER, 0.0).astype(np.float32)
    chi[anatomy.white_matter] = CHI_WHITE_MATTER
    chi += lesions.chi_ppm * np.float32(cfg.lesion_contrast)
    for _ in range(int(rng.poisson(6))):  # medullary veins crossing white matter
        point = rng.uniform(-0.3, 0.3, 3) * np.asarray(grid.shape) * grid.voxel_mm
        direction, radius = physics.unit_vector(rng), rng.uniform(0.3, 0.8)
        tube = physics.vein_tube(grid.open_offsets(None, point), direction, radius, grid.voxel_mm)
        chi += tube * np.float32(VEIN_CHI_PPM) * anatomy.brain
    qsm = physics.simulate_qsm(
        chi, grid.voxel_mm, patient.field_noise_ppm, patient.tkd_threshold, rng, patient.texture_ppm
    )
    qsm = (qsm + np.float32(patient.qsm_offset_ppm)) * anatomy.brain

    tissue = np.where(grey, FLAIR_GREY_MATTER, 0.0).astype(np.float32)
    tissue[anatomy.white_matter] = FLAIR_WHITE_MATTER
    tissue[anatomy.csf] = FLAIR_CSF
    tissue *= 1 + np.float32(patient.flair_contrast) * lesions.flair_excess
    bias = physics.smooth_random_field(rng, grid.shape, grid.voxel_mm, 30.0, patient.bias_amplitude)
    flair = physics.rician_magnitude(rng, np.float32(patient.flair_gain) * (1 + bias) * tissue,
                                     patient.flair_gain * patient.flair_noise)
    return flair, qsm.astype(np.float32)


def subject_shape(voxel_size_mm: float) -> tuple[int, int, int]:
    """The grid of a subject whose field of view is DEFAULT_SHAPE_MM, at this voxel size (>= 32 voxels a side)."""
    if not 0.1 <= voxel_size_mm <= 5.0:
        raise InputError(f"--voxel-size must be 0.1..5 mm, got {voxel_size_mm}")
    return tuple(max(32, round(size / voxel_size_mm)) for size in DEFAULT_SHAPE_MM)  # type: ignore[return-value]


def generate_subject_volumes(
    cfg: SynthConfig,
    out_dir: str | Path,
    n_subjects: int,
    shape: tuple[int, int, int] | None = None,
    voxel_size_mm: float = 1.0,
    lesions_per_subject: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write `n_subjects` synthetic subjects under `out_dir`; returns their folders.

    Lesions per subject are Poisson with mean `lesions_per_subject` (default: the paper's lesions per
    patient x cfg.lesions_scale, counting only classes 2, 3, 5, 6 when cfg.labelled_only). Patient effects
    (gain, noise, QSM reconstruction) are those of the same patient index in the patch generator.
    """
    if n_subjects < 1:
        raise InputError(f"--volumes must be >= 1 (leave it out for patches), got {n_subjects}")
    fitting = subject_shape(voxel_size_mm)  # also checks the voxel size
    shape = fitting if shape is None else shape
    if len(shape) != 3 or min(shape) < 32:
        raise InputError(f"volume shape must be 3 sizes >= 32 voxels, got {shape}")
    if lesions_per_subject is None:
        counted = sum(TABLE1_COUNTS[c] for c in table1_codes(cfg.labelled_only))
        lesions_per_subject = cfg.lesions_scale * counted / PAPER_PATIENTS
    out_dir = Path(out_dir)
    write_json(out_dir / "dataset_description.json", {
        "Name": "mslesion synthetic cohort", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "mslesion.data.synth.volumes", "Description": describe(cfg)}],
    })
    folders = []
    for index in range(n_subjects):
        folders.append(write_subject(cfg, out_dir, index, n_subjects, tuple(shape), voxel_size_mm,
                                     lesions_per_subject))
        if progress is not None:
            progress(index + 1, n_subjects)
    return folders


def write_subject(
    cfg: SynthConfig, out_dir: Path, index: int, n_subjects: int, shape: tuple[int, int, int],
    voxel_mm: float, lesions_per_subject: float,
) -> Path:
    rng = np.random.default_rng([cfg.seed, 3, index])
    patient = PatientEffects.draw(np.random.default_rng([cfg.seed, 1, index]), cfg)
    affine = volume_affine(shape, voxel_mm)
    grid = physics.SimulationGrid(shape, voxel_mm, tuple(affine[:3, 3]))
    anatomy = brain_anatomy(grid, rng)
    lesions = place_lesions(cfg, grid, anatomy, int(rng.poisson(lesions_per_subject)), rng)
    flair, qsm = subject_images(cfg, grid, anatomy, lesions, patient, rng)
    codes = np.zeros(len(lesions.table) + 1, np.uint8)
    codes[1:] = [row["label"] for row in lesions.table]

    subject = patient_id(index, n_subjects)
    anat = out_dir / subject / "anat"
    for suffix, image in (
        ("FLAIR", flair), ("Chimap", qsm), ("label-lesion_mask", (lesions.labels > 0).astype(np.uint8)),
        ("desc-phenotype_dseg", codes[lesions.labels]),
    ):
        write_nifti(anat / f"{subject}_{suffix}.nii.gz", image, affine)
    write_lesion_table(out_dir / subject / "lesions.csv", lesions.table)
    return out_dir / subject


def write_nifti(path: Path, image: np.ndarray, affine: np.ndarray) -> None:
    """Write a gzipped NIfTI-1 atomically, with millimetre units and a scanner-space (RAS) qform/sform."""
    import nibabel as nib

    nifti = nib.Nifti1Image(image, affine)
    nifti.header.set_xyzt_units("mm")
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    data = gzip.compress(nifti.to_bytes(), compresslevel=1, mtime=0)  # mtime 0: same input, same bytes
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_lesion_table(path: Path, table: list[dict[str, int | float]]) -> None:
    columns = ["lesion_id", "component", "i", "j", "k", "voxels", "label", "component_label", "x_mm", "y_mm", "z_mm"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_atomic(path, lambda tmp: tmp.write_text(buffer.getvalue()))
