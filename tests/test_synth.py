"""The synthetic cohort: reproducibility, format, physics and the whole-subject volumes."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from mslesion.config import SynthConfig
from mslesion.data.patches import read_patches
from mslesion.data.synth import physics
from mslesion.data.synth.cohort import (
    SYNTH_VERSION,
    PatientEffects,
    allocate_lesions,
    class_counts,
    generate_cohort,
    synth_patch,
    write_cohort,
)
from mslesion.data.synth.lesions import (
    BETWEEN,
    CLASS1_KINDS,
    CORRUPTING_VEIN_MM,
    draw_lesion,
    render_lesion,
)
from mslesion.errors import InputError
from mslesion.paper import MS_CHANNELS, TABLE1_COUNTS

TINY = SynthConfig(patients=3, lesions_scale=0.05, labelled_only=True, seed=5, fov_size=48)
# A patient without noise, texture, offset or clutter, for the physics checks.
QUIET = PatientEffects(flair_gain=1.0, flair_contrast=1.0, flair_noise=0.01, bias_amplitude=0.0,
                       field_noise_ppm=0.0, tkd_threshold=0.15, qsm_offset_ppm=0.0, texture_ppm=0.0)
QUIET_CFG = replace(TINY, neighbours_per_patch=0.0, veins_per_patch=0.0)


@pytest.fixture(scope="module")
def tiny_cohort():
    return generate_cohort(TINY)


def quiet_patches(code: int, n: int = 6) -> list[np.ndarray]:
    return [synth_patch(QUIET_CFG, QUIET, code, np.random.default_rng([9, code, i])) for i in range(n)]


# ---- config ----


@pytest.mark.parametrize("field, value", [
    ("patients", 0), ("lesions_scale", 0.0), ("lesions_scale", float("nan")), ("patch_size", 4),
    ("fov_size", 20), ("voxel_size_mm", 0.0), ("seed", -1), ("qsm_noise", -1.0), ("veins_per_patch", -0.5),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(InputError):
        SynthConfig(**{field: value})


def test_class_counts_follow_table1():
    assert class_counts(SynthConfig()) == TABLE1_COUNTS
    half = class_counts(SynthConfig(patients=115, lesions_scale=0.5, labelled_only=True))
    assert half == {code: round(TABLE1_COUNTS[code] * 0.5) for code in (2, 3, 5, 6)}
    assert set(class_counts(TINY)) == {2, 3, 5, 6} and min(class_counts(TINY).values()) >= 1


# ---- cohort ----


def test_shapes_dtypes_channels(tiny_cohort):
    n = sum(class_counts(TINY).values())
    assert tiny_cohort.images.shape == (n, 3, 35, 35, 35)
    assert tiny_cohort.images.dtype == np.float32
    assert tiny_cohort.channels == MS_CHANNELS
    assert np.isfinite(tiny_cohort.images).all()
    counts = class_counts(TINY)
    assert {code: int((tiny_cohort.labels == code).sum()) for code in counts} == counts
    assert set(np.unique(tiny_cohort.images[:, 2])) <= {0.0, 1.0}
    assert all(p.startswith("sub-") and len(p) == 7 for p in tiny_cohort.patients)
    pairs = list(zip(tiny_cohort.patients, tiny_cohort.lesions, strict=True))
    assert len(set(pairs)) == n and tiny_cohort.lesions.min() >= 1
    assert tiny_cohort.voxel_size_mm == (0.65, 0.65, 0.65)


def test_same_seed_identical_other_seed_different(tiny_cohort):
    again = generate_cohort(TINY)
    assert np.array_equal(again.images, tiny_cohort.images)
    assert np.array_equal(again.labels, tiny_cohort.labels)
    assert list(again.patients) == list(tiny_cohort.patients)
    other = generate_cohort(replace(TINY, seed=6))
    same_shape = other.images.shape == tiny_cohort.images.shape
    assert not same_shape or not np.array_equal(other.images, tiny_cohort.images)


def test_mask_marks_the_centred_lesion(tiny_cohort):
    masks = tiny_cohort.images[:, 2] > 0.5
    assert (masks.sum(axis=(1, 2, 3)) > 0).all()
    for mask in masks:
        labelled, n = ndimage.label(mask, np.ones((3, 3, 3)))
        centre = labelled[17, 17, 17] or np.bincount(labelled.ravel())[1:].argmax() + 1
        centroid = np.argwhere(labelled == centre).mean(axis=0)
        assert np.abs(centroid - 17).max() < 4  # the lesion the label belongs to sits at the centre


def test_flair_brighter_in_lesion(tiny_cohort):
    for flair, mask in zip(tiny_cohort.images[:, 0], tiny_cohort.images[:, 2] > 0.5, strict=True):
        ratio = flair[mask].mean() / np.median(flair[~mask])
        assert 1.05 < ratio < 2.3


def test_write_cohort_round_trip(tmp_path):
    path = tmp_path / "cohort.h5"
    written = write_cohort(TINY, path)
    read = read_patches(path)
    assert np.array_equal(read.images, written.images)
    assert np.array_equal(read.labels, written.labels) and list(read.patients) == list(written.patients)
    assert read.channels == MS_CHANNELS and "synth" in read.source
    assert json.loads(read.attrs["synth_config"])["seed"] == TINY.seed
    assert int(read.attrs["synth_patients"]) == TINY.patients
    assert int(read.attrs["synth_version"]) == SYNTH_VERSION == 4
    assert f"v{SYNTH_VERSION}" in read.source


def test_same_seed_identical_with_every_class():
    """Class 1's kinds draw textures and streaking sources at render time: still bit-identical per seed, and
    whether one process or several worker processes make the patches."""
    cfg = SynthConfig(patients=2, lesions_scale=0.06, seed=3, fov_size=48)
    first, again = generate_cohort(cfg, workers=1), generate_cohort(cfg, workers=2)
    assert set(np.unique(first.labels)) >= {1, 2, 3, 5, 6}
    assert np.array_equal(first.images, again.images)


def test_allocation_spreads_table1_over_patients():
    cfg = SynthConfig(patients=115, lesions_scale=1.0)
    plan = allocate_lesions(cfg, np.random.default_rng(0))
    codes = np.array([code for _, _, code in plan])
    assert {c: int((codes == c).sum()) for c in TABLE1_COUNTS} == TABLE1_COUNTS
    per_patient = np.bincount([patient for patient, _, _ in plan], minlength=115)
    assert per_patient.std() > 0.3 * per_patient.mean()  # lesion load varies between patients
    ids = {(patient, lesion) for patient, lesion, _ in plan}
    assert len(ids) == len(plan)


# ---- physics ----


def test_dipole_kernel_known_values():
    n, voxel = 16, 0.5
    kernel = physics.dipole_kernel((n, n, n), voxel)
    assert kernel.shape == (n, n, n // 2 + 1)
    assert kernel[0, 0, 0] == 0.0  # convention: the mean field (and susceptibility) is not measurable
    assert kernel[0, 0, 3] == pytest.approx(-2 / 3)  # k along B0 (z)
    assert kernel[3, 0, 0] == pytest.approx(1 / 3) and kernel[0, 5, 0] == pytest.approx(1 / 3)
    assert kernel[2, 0, 2] == pytest.approx(1 / 3 - 0.5)  # 45 degrees: 1/3 - cos^2
    assert kernel.min() >= -2 / 3 - 1e-6 and kernel.max() <= 1 / 3 + 1e-6


def test_tkd_recovers_a_smooth_map_without_noise():
    shape, voxel = (32, 32, 32), 1.0
    chi = physics.smooth_random_field(np.random.default_rng(0), shape, voxel, 3.0, 0.05)
    qsm = physics.simulate_qsm(chi, voxel, 0.0, 0.05, np.random.default_rng(1))
    assert np.corrcoef(qsm.ravel(), chi.ravel())[0, 1] > 0.9
    assert abs(float(qsm.mean())) < 1e-6  # D(0) = 0: QSM has zero mean


def test_smooth_random_field_has_requested_std():
    field = physics.smooth_random_field(np.random.default_rng(0), (48, 48, 48), 1.0, 2.0, 0.01)
    assert field.std() == pytest.approx(0.01, rel=0.2)


def test_mean_qsm_orders_hyper_above_wm_above_hypo():
    def lesion_minus_wm(patch: np.ndarray) -> float:
        mask = patch[2] > 0.5
        return float(patch[1][mask].mean() - np.median(patch[1][~mask]))

    hyper = np.mean([lesion_minus_wm(p) for p in quiet_patches(5)])
    iso = np.mean([lesion_minus_wm(p) for p in quiet_patches(2)])
    hypo = np.mean([lesion_minus_wm(p) for p in quiet_patches(6)])
    assert hyper > 0.005 and hypo < -0.005  # white matter is the reference: 0
    assert hyper > iso > hypo


@pytest.mark.parametrize("code", [5, 6])
def test_lesion_contrast_scales_the_lesion_and_nothing_else(code: int):
    """SynthConfig.lesion_contrast (for cohorts shifted from the default) scales the lesion's QSM and FLAIR
    contrast against white matter; the random stream and everything else stay the same."""
    def contrasts(scale: float) -> np.ndarray:
        cfg = replace(QUIET_CFG, lesion_contrast=scale)
        patient = PatientEffects.draw(np.random.default_rng(3), cfg)
        patient = replace(patient, field_noise_ppm=0.0, texture_ppm=0.0, bias_amplitude=0.0, qsm_offset_ppm=0.0)
        patch = synth_patch(cfg, patient, code, np.random.default_rng(4))
        mask = patch[2] > 0.5
        return np.array([patch[c][mask].mean() / np.median(patch[c][~mask]) - 1 if c == 0 else
                         patch[c][mask].mean() - np.median(patch[c][~mask]) for c in (0, 1)]), patch[2]

    (full, mask_full), (weak, mask_weak) = contrasts(1.0), contrasts(0.5)
    np.testing.assert_array_equal(mask_full, mask_weak)  # the same lesion: no extra random draws
    assert abs(full[1]) > 0.01  # ppm: a plain QSM contrast at full scale
    np.testing.assert_allclose(weak[1], 0.5 * full[1], rtol=0.15)  # QSM is linear in susceptibility
    assert 0.3 * full[0] < weak[0] < 0.7 * full[0]  # FLAIR: about half the excess (noise and partial volume)


def test_prl_rim_more_paramagnetic_than_core():
    grid = physics.SimulationGrid((48, 48, 48), 0.5, (-12.0, -12.0, -12.0))
    tested = 0
    for i in range(10):
        lesion = replace(draw_lesion(np.random.default_rng(i), 3), vein_radius_mm=0.0)  # no central vein
        rendered = render_lesion(lesion, grid)
        rim_band = rendered.inside & ~ndimage.binary_erosion(rendered.inside, iterations=2)
        core = ndimage.binary_erosion(rendered.inside, iterations=4)
        assert lesion.rim_ppm > lesion.core_ppm
        if core.sum() >= 5:  # real shapes include thin ones without a core 2 mm deep
            tested += 1
            assert rendered.chi_ppm[rim_band].mean() > rendered.chi_ppm[core].mean()
    assert tested >= 3
    # And it survives the QSM simulation.
    # And it survives the QSM simulation where there is a core to compare with (QSM blurs a thin lesion's rim
    # into its core).
    contrast = []
    for patch in quiet_patches(3, 16):
        mask = patch[2] > 0.5
        rim = mask & ~ndimage.binary_erosion(mask, iterations=2)
        core = ndimage.binary_erosion(mask, iterations=2)
        if core.sum() >= 100:
            contrast.append(patch[1][rim].mean() - patch[1][core].mean())
    assert len(contrast) >= 3 and np.mean(np.array(contrast) > 0) >= 0.6


def test_hypointense_rim_darker_than_core():
    """Class 4 (Table 1: hypointense rim): every lesion has a diamagnetic rim around an iso core."""
    grid = physics.SimulationGrid((48, 48, 48), 0.5, (-12.0, -12.0, -12.0))
    tested = 0
    for i in range(30):  # real shapes are mostly small: a third have a core 2 mm deep
        lesion = replace(draw_lesion(np.random.default_rng(i), 4), vein_radius_mm=0.0)
        assert lesion.rim_mm > 0 and lesion.rim_ppm <= -0.03 and abs(lesion.core_ppm) <= 0.004
        rendered = render_lesion(lesion, grid)
        rim_band = rendered.inside & ~ndimage.binary_erosion(rendered.inside, iterations=2)
        core = ndimage.binary_erosion(rendered.inside, iterations=4)
        if core.sum() >= 5:
            tested += 1
            assert rendered.chi_ppm[rim_band].mean() < rendered.chi_ppm[core].mean()
    assert tested >= 3


def test_class1_is_heterogeneous():
    """Class 1 (unclassified) holds each kind of CLASS1_KINDS, and each looks as its kind says."""
    lesions = [draw_lesion(np.random.default_rng([11, i]), 1) for i in range(300)]
    kinds = {kind: [x for x in lesions if x.kind == kind] for kind in CLASS1_KINDS}
    assert all(len(found) >= 10 for found in kinds.values())
    assert all(x.code == 1 for x in lesions)
    assert all(CORRUPTING_VEIN_MM[0] <= x.vein_radius_mm for x in kinds["vein"])
    assert all(abs(x.source_ppm) >= 0.5 and x.source_offset_mm is not None for x in kinds["streak"])
    assert all(x.texture_ppm > 0 for x in kinds["patchy"])
    cores = [(lo / 1000, hi / 1000) for (lo, hi), _ in BETWEEN]
    assert all(any(lo <= x.core_ppm <= hi for lo, hi in cores) for x in kinds["between"])
    # "unrated" lesions look exactly like a labelled class: no corruption at all
    assert all(x.source_ppm == 0 and x.texture_ppm == 0 and x.vein_radius_mm < 0.3 for x in kinds["unrated"])
    # A streaking source shows in the rendered susceptibility beside the lesion, not inside it.
    grid = physics.SimulationGrid((64, 64, 64), 0.5, (-16.0, -16.0, -16.0))
    streak = kinds["streak"][0]
    rendered = render_lesion(streak, grid)
    assert np.abs(rendered.chi_ppm[~rendered.inside]).max() > 0.3


def test_rendering_is_grid_independent():
    lesion = draw_lesion(np.random.default_rng(3), 5)
    volumes = []
    for voxel in (0.5, 0.25):
        n = int(round(16 / voxel))
        rendered = render_lesion(lesion, physics.SimulationGrid((n, n, n), voxel, (-8.0, -8.0, -8.0)))
        volumes.append(rendered.inside.sum() * voxel**3)
    assert volumes[0] == pytest.approx(volumes[1], rel=0.15)


# ---- whole-subject volumes ----

SUBJECT_SHAPE = (64, 72, 64)
SUBJECT_OPTIONS = {"shape": SUBJECT_SHAPE, "lesions_per_subject": 12}


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    from mslesion.data.synth.volumes import generate_subject_volumes

    out = tmp_path_factory.mktemp("bids")
    folders = generate_subject_volumes(SynthConfig(seed=2), out, 2, **SUBJECT_OPTIONS)
    return out, folders


def test_volumes_files_and_affines(subjects):
    nib = pytest.importorskip("nibabel")
    out, folders = subjects
    assert (out / "dataset_description.json").exists()
    assert [f.name for f in folders] == ["sub-001", "sub-002"]
    for folder in folders:
        images = {s: nib.load(folder / "anat" / f"{folder.name}_{s}.nii.gz")
                  for s in ("FLAIR", "Chimap", "label-lesion_mask", "desc-phenotype_dseg")}
        affines = [img.affine for img in images.values()]
        assert all(np.allclose(a, affines[0]) for a in affines)
        assert np.allclose(np.diag(affines[0])[:3], 1.0)
        assert all(img.shape == SUBJECT_SHAPE for img in images.values())
        assert images["label-lesion_mask"].get_data_dtype() == np.uint8
        assert images["desc-phenotype_dseg"].get_data_dtype() == np.uint8
        assert np.isfinite(images["Chimap"].get_fdata()).all()


def test_volumes_lesions_match_table(subjects):
    nib = pytest.importorskip("nibabel")
    _, folders = subjects
    for folder in folders:
        mask = np.asarray(nib.load(folder / "anat" / f"{folder.name}_label-lesion_mask.nii.gz").dataobj)
        dseg = np.asarray(nib.load(folder / "anat" / f"{folder.name}_desc-phenotype_dseg.nii.gz").dataobj)
        rows = list(csv.DictReader((folder / "lesions.csv").open()))
        assert rows
        components, n = ndimage.label(mask, np.ones((3, 3, 3)))  # 26-connected: components never touch
        assert n == len({r["component"] for r in rows})  # a confluent lesion is one component of several rows
        assert np.array_equal(mask > 0, dseg > 0)
        assert mask.sum() == sum(int(r["voxels"]) for r in rows)
        for component in {r["component"] for r in rows}:
            parts = [r for r in rows if r["component"] == component]
            ijk = int(parts[0]["i"]), int(parts[0]["j"]), int(parts[0]["k"])
            found = components[ijk] or components[tuple(np.argwhere(components > 0)[
                np.linalg.norm(np.argwhere(components > 0) - ijk, axis=1).argmin()])]
            assert (components == found).sum() == sum(int(r["voxels"]) for r in parts)
            codes = {int(r["label"]) for r in parts}
            assert set(np.unique(dseg[components == found])) == codes  # each part keeps its own code
            assert {int(r["component_label"]) for r in parts} == {codes.pop() if len(codes) == 1 else 1}


def test_volumes_reproducible(subjects, tmp_path):
    from mslesion.data.synth.volumes import generate_subject_volumes

    out, _ = subjects
    again = generate_subject_volumes(SynthConfig(seed=2), tmp_path, 1, **SUBJECT_OPTIONS)
    name = "sub-001_Chimap.nii.gz"
    assert (again[0] / "anat" / name).read_bytes() == (out / "sub-001" / "anat" / name).read_bytes()
