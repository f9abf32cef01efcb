"""Synthetic MS lesion cohort: the project's default data, since the paper's patients are private.

Each lesion patch is simulated, not drawn: a susceptibility map chi (ppm, relative to white matter) of a
field of view larger than the patch holds a smooth white-matter texture, a few veins and the lesions;
the QSM channel is the dipole forward model of chi plus field noise, inverted by thresholded k-space
division (`physics.simulate_qsm`), so it carries the streaking and blurring of real QSM. FLAIR is white
matter times a bias field, brighter in lesions (partial volume at their edges), with Rician noise.

The mask channel marks the centred lesion only: neighbouring lesions may show in FLAIR and QSM, as they
do in real patches, but the mask says which lesion the label belongs to.

Classes follow the paper's Table 1 and the QSM criteria of Rahmanzadeh et al. (2022): what separates them
is the lesion's susceptibility relative to white matter (and a rim); demyelinating lesions are larger and a
little brighter on FLAIR (v4; `lesions.CLASS_APPEARANCE`), so FLAIR and mask alone carry a weak signal (size,
shape, brightness). Class 1 is heterogeneous (`lesions.CLASS1_KINDS`).
Patients differ in scanner gain, noise, QSM reconstruction and lesion load, so a patient-grouped split is
a harder, more honest test than a lesion-level one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mslesion.config import SynthConfig
from mslesion.data.patches import PatchSet, write_patches
from mslesion.data.synth import physics
from mslesion.data.synth.lesions import (
    VEIN_CHI_PPM,
    draw_code,
    draw_component,
    place_neighbour,
    render_lesion,
    table1_codes,
)
from mslesion.paper import MS_CHANNELS, PAPER_PATIENTS, TABLE1_COUNTS, TRAINED_CODES

SYNTH_VERSION = 4  # 2: real lesion shapes (shapes.py), confluent lesions; 3: class appearance recalibrated
# for the real shapes, class 1 of several kinds (lesions.CLASS1_KINDS); 4: remyelinated lesions a little less
# bright on FLAIR than demyelinated ones (lesions.CLASS_APPEARANCE)


def describe(cfg: SynthConfig) -> str:
    """The generator and its settings, as stored in the `source` attribute of every file it writes."""
    settings = ", ".join(f"{k}={v}" for k, v in asdict(cfg).items())
    return f"mslesion.data.synth v{SYNTH_VERSION} ({settings})"


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
            flair_contrast=float(np.exp(rng.normal(0.0, 0.15))) * cfg.lesion_contrast,
            flair_noise=float(rng.uniform(0.02, 0.06)),
            bias_amplitude=float(rng.uniform(0.02, 0.08)),
            # Effective field noise: thermal noise (~1-3 ppb at 3T) plus background-removal and model errors;
            # set so that QSM separates the classes about as well as in the paper (~89%), not perfectly.
            # (v3: 6-15 ppb, was 7-18: with real, mostly small shapes the v2 noise hid the contrast of small
            # lesions that raters classify by eye on real QSM.)
            field_noise_ppm=float(rng.uniform(0.006, 0.015)) * cfg.qsm_noise,
            tkd_threshold=float(rng.uniform(0.1, 0.2)),
            qsm_offset_ppm=float(rng.normal(0.0, 0.004)),
            texture_ppm=float(rng.uniform(0.003, 0.008)),
        )


# ---- patches -------------------------------------------------------------------------------------------


def synth_patch(cfg: SynthConfig, patient: PatientEffects, code: int, rng: np.random.Generator) -> np.ndarray:
    """FLAIR, QSM and mask (float32 [3, p, p, p]) of one lesion of class `code`, centred in the patch."""
    n, p, voxel = cfg.fov_size, cfg.patch_size, cfg.voxel_size_mm
    start = (n - p) // 2
    # Voxel (start + p // 2) of the field of view is at 0 mm; the lesion centre is jittered within a voxel
    # as a segmentation centroid would be.
    fov = physics.SimulationGrid((n, n, n), voxel, ((-(start + p // 2)) * voxel,) * 3)
    centred = draw_component(rng, code, rng.uniform(-0.5, 0.5, 3) * voxel)
    neighbours = [
        place_neighbour(rng, centred, draw_component(rng, draw_code(rng, table1_codes(False))))
        for _ in range(int(rng.poisson(cfg.neighbours_per_patch)))
    ]
    chi = np.zeros(fov.shape, np.float32)
    flair_excess = np.zeros(fov.shape, np.float32)
    mask = np.zeros(fov.shape, np.float32)
    for index, lesion in enumerate([centred, *neighbours]):
        rendered = render_lesion(lesion, fov)
        if rendered is None:
            continue
        chi[rendered.box] += rendered.chi_ppm * np.float32(cfg.lesion_contrast)
        np.maximum(flair_excess[rendered.box], rendered.flair_excess, out=flair_excess[rendered.box])
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


# Lesions per task sent to a worker process: large enough that the pickled patches (0.5 MB each) and the task
# overhead are small against the ~40 ms of CPU per lesion, small enough for a steady progress bar.
CHUNK_LESIONS = 32
# Below this, one process is faster than starting workers (each imports numpy and scipy: ~1 s).
PARALLEL_MIN_LESIONS = 256


def default_workers() -> int:
    """Processes for a large cohort: one per core this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def _synth_rows(cfg: SynthConfig, rows: list[tuple[int, int, int]]) -> np.ndarray:
    """The patches of `rows` (patient index, lesion id, code): each from its own random streams, so the result
    does not depend on which process makes it, or in which order."""
    images = np.empty((len(rows), len(MS_CHANNELS), *(cfg.patch_size,) * 3), dtype=np.float32)
    effects: dict[int, PatientEffects] = {}
    for row, (patient, lesion_id, code) in enumerate(rows):
        if patient not in effects:
            effects[patient] = PatientEffects.draw(np.random.default_rng([cfg.seed, 1, patient]), cfg)
        images[row] = synth_patch(cfg, effects[patient], code, np.random.default_rng([cfg.seed, 2, patient, lesion_id]))
    return images


def _single_threaded_ffts() -> None:
    # Worker processes already fill the cores; FFT threads on top would only contend (pocketfft's result does
    # not depend on its thread count: each 1D transform is computed alike).
    physics.FFT_WORKERS = 1


def generate_cohort(
    cfg: SynthConfig, progress: Callable[[int, int], None] | None = None, workers: int | None = None
) -> PatchSet:
    """Simulate the whole cohort in memory (about 0.5 MB per lesion); `progress(done, total)` as lesions finish.

    Every patient and every lesion has its own random stream derived from (seed, patient, lesion), so a
    lesion's patch does not depend on how many lesions come before it, nor on `workers` (processes; default:
    one per usable core for cohorts of PARALLEL_MIN_LESIONS or more): the files are bit-identical either way.
    """
    plan = allocate_lesions(cfg, np.random.default_rng([cfg.seed, 0]))
    p = cfg.patch_size
    images = np.empty((len(plan), len(MS_CHANNELS), p, p, p), dtype=np.float32)
    workers = (default_workers() if len(plan) >= PARALLEL_MIN_LESIONS else 1) if workers is None else workers
    chunks = [plan[start:start + CHUNK_LESIONS] for start in range(0, len(plan), CHUNK_LESIONS)]
    done = 0
    if workers <= 1:
        results: Iterable[np.ndarray] = (_synth_rows(cfg, chunk) for chunk in chunks)
        pool = None
    else:
        # spawn, not fork: the caller may hold threads (torch, FFT pools) that a forked child would inherit broken
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_single_threaded_ffts)
        results = pool.map(_synth_rows, [cfg] * len(chunks), chunks)
    try:
        for chunk, chunk_images in zip(chunks, results, strict=True):
            images[done:done + len(chunk)] = chunk_images
            done += len(chunk)
            if progress is not None:
                progress(done, len(plan))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return PatchSet(
        images=images,
        labels=np.array([code for _, _, code in plan], dtype=np.int64),
        patients=np.array([patient_id(pt, cfg.patients) for pt, _, _ in plan], dtype=object),
        lesions=np.array([lesion_id for _, lesion_id, _ in plan], dtype=np.int64),
        channels=MS_CHANNELS,
        voxel_size_mm=(cfg.voxel_size_mm,) * 3,
        source=describe(cfg),
        attrs={"synth_version": SYNTH_VERSION, "synth_config": json.dumps(asdict(cfg)),
               **{f"synth_{k}": v for k, v in asdict(cfg).items()}},
    )


def write_cohort(
    cfg: SynthConfig, out_path: str | Path, progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> PatchSet:
    """Generate the cohort and write it as an HDF5 patch file (atomically)."""
    patches = generate_cohort(cfg, progress, workers)
    write_patches(out_path, patches)
    return patches
