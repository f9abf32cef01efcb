"""extract: lesions from NIfTI subjects → patches, labels, per-lesion CSV; bad inputs end as one line, exit 2."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mslesion.config import ExtractConfig, LesionFinding
from mslesion.data.extract import (
    crop_patch,
    extract_subject,
    lesion_components,
    run_extract,
    sidecar_paths,
)
from mslesion.data.patches import read_patches
from mslesion.data.subjects import Subject
from mslesion.errors import InputError

# A left-posterior-inferior grid (not RAS) with 1 mm voxels: extraction must undo the orientation.
LPI_AFFINE = np.array([[-1.0, 0, 0, 20], [0, -1, 0, 30], [0, 0, -1, 10], [0, 0, 0, 1]])
# (centre, radius in voxels, Table 1 code) of the synthetic lesions, in stored voxel indices.
LESIONS = (((10, 10, 10), 2, 3), ((22, 20, 12), 2, 6), ((12, 22, 22), 3, 5))


def ball(shape: tuple[int, int, int], centre, radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return ((grid - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def write_subject(
    folder: Path, name: str = "sub-001", shape=(32, 32, 32), affine=LPI_AFFINE, lesions=LESIONS,
    qsm_scale: float = 1.0, seed: int = 0,
) -> Subject:
    """FLAIR (tissue ~ 100, lesions 180), QSM (ppm; lesion value by class), binary mask and phenotype map."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(shape, np.uint8)
    phenotype = np.zeros(shape, np.uint8)
    flair = np.full(shape, 100.0, np.float32) + rng.normal(0, 2, shape).astype(np.float32)
    flair[:2] = 0  # background slab, as in a skull-stripped scan
    qsm = rng.normal(0, 0.005, shape).astype(np.float32)
    for centre, radius, code in lesions:
        inside = ball(shape, centre, radius)
        mask[inside], phenotype[inside] = 1, code
        flair[inside] = 180.0
        qsm[inside] = 0.04 if code in (3, 5) else -0.02
    paths = {}
    for role, data in (("FLAIR", flair), ("Chimap", qsm * qsm_scale), ("label-lesion_mask", mask),
                       ("desc-phenotype_dseg", phenotype)):
        paths[role] = folder / f"{name}_{role}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), paths[role])
    return Subject(name, paths["label-lesion_mask"], paths["FLAIR"], paths["Chimap"], paths["desc-phenotype_dseg"])


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run `mslesion ARGS` through main() (as the console script does); returns (exit code, stdout + stderr)."""
    from mslesion.cli import main

    monkeypatch.setattr(sys, "argv", ["mslesion", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), captured.out + captured.err


def cfg(tmp_path: Path, patch_size: int = 35, channels: tuple[str, ...] = (), **finding) -> ExtractConfig:
    return ExtractConfig(out=str(tmp_path / "out" / "patches.h5"), channels=channels, patch_size=patch_size,
                         finding=LesionFinding(**finding))


def test_lesions_centres_labels_and_patches(tmp_path):
    subject = write_subject(tmp_path / "s")
    result = extract_subject(subject, cfg(tmp_path, patch_size=23), ("flair", "qsm", "mask"))
    assert len(result) == len(LESIONS)
    world = {(r["x_mm"], r["y_mm"], r["z_mm"]): r for r in result.records}
    for centre, radius, code in LESIONS:
        expected = tuple(float(v) for v in (LPI_AFFINE @ [*centre, 1])[:3])
        record = world[expected]  # centre of mass of a ball = its centre, in world mm
        assert (record["centre_i"], record["centre_j"], record["centre_k"]) == centre  # stored voxel indices
        assert record["label"] == code
        assert record["voxels"] == int(ball((32, 32, 32), centre, radius).sum())
    mask_channel = result.patches[:, 2]
    assert np.all(mask_channel[:, 11, 11, 11] == 1)  # every patch is centred on its lesion
    assert set(np.unique(mask_channel)) == {0.0, 1.0}
    # FLAIR divided by normal tissue (~100): tissue ≈ 1, lesion ≈ 1.8; QSM stays in ppm.
    assert result.patches[:, 0, 11, 11, 11] == pytest.approx(1.8, abs=0.05)
    assert abs(np.median(result.patches[:, 0][mask_channel == 0]) - 1.0) < 0.05
    assert np.abs(result.patches[:, 1]).max() < 0.1


def test_reorientation_gives_the_same_patches(tmp_path):
    """The same anatomy stored RAS and LPI gives identical patches and world coordinates."""
    lpi = extract_subject(write_subject(tmp_path / "lpi"), cfg(tmp_path, patch_size=23), ("flair", "mask"))
    flip = np.diag([-1.0, -1, -1, 1])
    ras_lesions = tuple((tuple(31 - c for c in centre), r, code) for centre, r, code in LESIONS)
    ras_affine = LPI_AFFINE @ np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ flip
    ras_affine[:3, 3] = (LPI_AFFINE @ [31, 31, 31, 1])[:3]
    ras = extract_subject(write_subject(tmp_path / "ras", affine=ras_affine, lesions=ras_lesions),
                          cfg(tmp_path, patch_size=23), ("flair", "mask"))
    key = lambda r: (r["x_mm"], r["y_mm"], r["z_mm"])  # noqa: E731
    assert sorted(map(key, lpi.records)) == sorted(map(key, ras.records))
    order_lpi = np.argsort([key(r) for r in lpi.records], axis=0)[:, 0]
    order_ras = np.argsort([key(r) for r in ras.records], axis=0)[:, 0]
    np.testing.assert_allclose(lpi.patches[order_lpi, 1], ras.patches[order_ras, 1])


# Two overlapping balls (a confluent lesion: one component, two centres 7 voxels apart) and a single lesion.
def confluent_lesions(first_code: int, second_code: int) -> tuple:
    return (((11, 16, 16), 4, first_code), ((18, 16, 16), 4, second_code), ((16, 6, 6), 2, 3))


@pytest.mark.parametrize(("codes", "expected"), [((2, 5), 1), ((5, 5), 5)])
def test_a_confluent_lesion_of_mixed_types_is_unclassified(tmp_path, codes, expected):
    """Without splitting a union is one lesion: class 1 when its parts' codes differ (the paper's merged lesions),
    else their shared code."""
    subject = write_subject(tmp_path / "s", lesions=confluent_lesions(*codes))
    result = extract_subject(subject, cfg(tmp_path, patch_size=23), ("flair", "mask"))
    assert sorted(result.labels.tolist()) == sorted([expected, 3])


def test_split_confluent_gives_each_part_its_patch_row_and_code(tmp_path):
    subject = write_subject(tmp_path / "s", lesions=confluent_lesions(2, 5))
    result = extract_subject(subject, cfg(tmp_path, patch_size=23, split_confluent=True), ("flair", "mask"))
    rows = sorted(result.records, key=lambda r: (r["lesion"], r["part"]))
    union, single = [r for r in rows if r["part"] > 0], [r for r in rows if r["part"] == 0]
    assert len(union) == 2 and len(single) == 1
    assert union[0]["lesion"] == union[1]["lesion"] != single[0]["lesion"]  # the component id, as without splitting
    assert [r["part"] for r in union] == [1, 2]
    # Each part its own code (split at the neck between the two balls) and its own centre, near its ball's.
    by_code = {r["label"]: r for r in union}
    assert sorted(by_code) == [2, 5] and single[0]["label"] == 3
    for (centre, _, code) in confluent_lesions(2, 5)[:2]:
        got = np.array([by_code[code][k] for k in ("centre_i", "centre_j", "centre_k")])
        assert np.abs(got - centre).max() <= 1
    # The mask channel of a part's patch shows that part only: its voxels, none of the other part's.
    whole = extract_subject(subject, cfg(tmp_path, patch_size=23), ("flair", "mask"))
    union_voxels = next(r["voxels"] for r in whole.records if r["lesion"] == union[0]["lesion"])
    assert sum(r["voxels"] for r in union) == union_voxels
    for n, record in enumerate(result.records):
        assert result.patches[n, 1].sum() == record["voxels"]
    assert len(result.map_ids) == len(set(result.map_ids.tolist())) == 3


def test_flags_lesions_larger_than_the_patch_or_at_the_volume_edge(tmp_path):
    lesions = (((8, 8, 8), 2, 3), ((30, 28, 24), 12, 6), ((12, 40, 0), 2, 5))  # middle: 25 voxels wide
    subject = write_subject(tmp_path / "s", shape=(48, 48, 48), lesions=lesions)
    result = extract_subject(subject, cfg(tmp_path, patch_size=23), ("flair", "mask"))
    flags = {r["label"]: r["flags"] for r in result.records}
    assert flags == {3: "", 6: "larger_than_patch", 5: "touches_edge"}
    large = extract_subject(subject, cfg(tmp_path, patch_size=25), ("flair", "mask"))
    assert {r["label"]: r["flags"] for r in large.records}[6] == ""  # a 25-voxel ball fits a 25³ patch


def test_the_patch_file_records_volume_and_part(tmp_path):
    subject = write_subject(tmp_path / "s", lesions=confluent_lesions(2, 5))
    config = cfg(tmp_path, patch_size=23, split_confluent=True)
    results, _ = run_extract([subject], config, show_progress=False)
    patches = read_patches(config.out)
    np.testing.assert_array_equal(patches.parts, [r["part"] for r in results[0].records])
    np.testing.assert_allclose(patches.volume_mm3, [r["volume_mm3"] for r in results[0].records])
    table = list(csv.DictReader(sidecar_paths(Path(config.out))[0].open()))
    assert [int(r["part"]) for r in table] == patches.parts.tolist()


@pytest.mark.parametrize(("connectivity", "expected"), [(6, 2), (26, 1)])
def test_connectivity(connectivity, expected):
    mask = np.zeros((8, 8, 8), np.float32)
    mask[1:3, 1:3, 1:3] = 1
    mask[3:5, 3:5, 1:3] = 1  # touches the first cube along an edge only
    labelled = lesion_components(mask, LesionFinding(connectivity=connectivity), Path("m.nii.gz"))
    assert len(np.unique(labelled)) - 1 == expected


def test_min_volume_drops_small_lesions(tmp_path):
    subject = write_subject(tmp_path / "s", lesions=(((10, 10, 10), 2, 3), ((22, 22, 22), 0.5, 3)))  # 33 vs 1 voxel
    assert len(extract_subject(subject, cfg(tmp_path, patch_size=23), ("mask",))) == 1
    assert len(extract_subject(subject, cfg(tmp_path, patch_size=23, min_volume_mm3=0), ("mask",))) == 2


def test_centre_outside_a_curved_lesion_moves_onto_it(tmp_path):
    shape = (24, 24, 24)
    ring = ball(shape, (12, 12, 12), 6) & ~ball(shape, (12, 12, 12), 4)
    ring[:, :, :11] = False
    ring[:, :, 14:] = False  # a thick ring: its centre of mass is in the hole
    path = tmp_path / "ring_mask.nii.gz"
    nib.save(nib.Nifti1Image(ring.astype(np.uint8), np.eye(4)), path)
    result = extract_subject(Subject("ring", path), cfg(tmp_path, patch_size=23), ("mask",))
    assert len(result) == 1
    assert result.patches[0, 0, 11, 11, 11] == 1
    centre = np.array([result.records[0][k] for k in ("centre_i", "centre_j", "centre_k")])
    assert ring[tuple(centre)]
    assert np.linalg.norm(centre - 12) == pytest.approx(4.0, abs=1.01)  # the nearest lesion voxels: inner radius


def test_crop_pads_at_the_volume_edge():
    volume = np.arange(5**3, dtype=np.float32).reshape(5, 5, 5) + 1
    patch = crop_patch(volume, np.array([0, 2, 4]), 5)
    assert patch[2, 2, 2] == volume[0, 2, 4]
    assert np.all(patch[:2] == 0) and np.all(patch[:, :, 3:] == 0)
    np.testing.assert_array_equal(patch[2:, :, :3], volume[:3, :, 2:])


def test_instance_map_keeps_touching_lesions_apart(tmp_path):
    data = np.zeros((24, 24, 24), np.int16)
    data[5:10, 5:10, 5:10] = 4
    data[10:15, 5:10, 5:10] = 9  # touching lesion with another id
    path = tmp_path / "inst_mask.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    result = extract_subject(Subject("s", path), cfg(tmp_path, patch_size=23, instances=True), ("mask",))
    assert result.lesion_ids.tolist() == [4, 9]
    assert [r["voxels"] for r in result.records] == [125, 125]
    with pytest.raises(InputError, match="--instances") as info:
        extract_subject(Subject("s", path), cfg(tmp_path, patch_size=23), ("mask",))
    assert info.value.path == str(path)


def test_labels_from_a_csv(tmp_path):
    subject = write_subject(tmp_path / "s")
    first = extract_subject(subject, cfg(tmp_path, patch_size=23), ("mask",))
    ids = first.lesion_ids.tolist()
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(f"lesion,label\n{ids[0]},2\n{ids[2]},5\n")
    with_csv = Subject(subject.id, subject.mask, subject.flair, subject.qsm, labels_csv)
    result = extract_subject(with_csv, cfg(tmp_path, patch_size=23), ("mask",))
    assert result.labels.tolist() == [2, 0, 5]
    labels_csv.write_text("lesion,label\n999,2\n")
    with pytest.raises(InputError, match="999"):
        extract_subject(with_csv, cfg(tmp_path, patch_size=23), ("mask",))


def test_qsm_in_ppb_is_converted_and_nan_counted(tmp_path):
    subject = write_subject(tmp_path / "s", qsm_scale=1000.0)
    img = nib.load(subject.qsm)
    data = np.asarray(img.dataobj, np.float32)
    data[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), subject.qsm)
    result = extract_subject(subject, cfg(tmp_path, patch_size=23), ("qsm", "mask"))
    assert np.abs(result.patches[:, 0]).max() < 0.1  # back in ppm
    assert np.isfinite(result.patches).all()
    assert any("ppb" in n for n in result.notes)
    assert any("3 NaN/infinite" in n for n in result.notes)


def test_run_extract_writes_patches_csv_and_record(tmp_path):
    subjects = [write_subject(tmp_path / "a", "sub-a"), write_subject(tmp_path / "b", "sub-b", seed=1)]
    config = cfg(tmp_path, patch_size=23)
    run_extract(subjects, config, show_progress=False)
    patches = read_patches(config.out)
    assert patches.channels == ("flair", "qsm", "mask")
    assert len(patches) == 6 and sorted(set(patches.patients)) == ["sub-a", "sub-b"]
    assert sorted(patches.labels.tolist()) == [3, 3, 5, 5, 6, 6]
    assert "flair" in json.loads(patches.attrs["normalisation"])
    csv_path, json_path = sidecar_paths(Path(config.out))
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6 and rows[0]["subject"] == "sub-a"
    assert json.loads(json_path.read_text())["subjects"]["sub-b"]["lesions"] == 3


def test_cli_bids_folder_and_manifest(tmp_path, monkeypatch, capsys):
    bids = tmp_path / "bids"
    write_subject(bids / "sub-01" / "anat", "sub-01")
    write_subject(bids / "derivatives" / "qsm" / "sub-02" / "anat", "sub-02", seed=2)
    code, text = run_cli(["extract", bids, "--out", tmp_path / "p.h5", "--patch-size", "23", "--quiet"],
                         monkeypatch, capsys)
    assert code == 0, text
    assert sorted(set(read_patches(tmp_path / "p.h5").patients)) == ["sub-01", "sub-02"]
    s = write_subject(tmp_path / "m", "x")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"subject,flair,qsm,mask,phenotype\nP1,m/{s.flair.name},,m/{s.mask.name},\n")
    code, text = run_cli(["extract", manifest, "--out", tmp_path / "m.h5", "--patch-size", "23", "--quiet"],
                         monkeypatch, capsys)
    assert code == 0, text
    patches = read_patches(tmp_path / "m.h5")
    assert patches.channels == ("flair", "mask") and set(patches.patients) == {"P1"}
    assert patches.labels.tolist() == [0, 0, 0]  # no phenotype given: unknown


def test_cli_subject_without_lesions_is_not_an_error(tmp_path, monkeypatch, capsys):
    subject = write_subject(tmp_path / "s", lesions=())
    code, text = run_cli(["extract", "--mask", subject.mask, "--flair", subject.flair, "--out", tmp_path / "e.h5",
                          "--patch-size", "23", "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    assert "no lesions" in text
    assert not (tmp_path / "e.h5").exists()  # nothing to train on; the empty table says so
    assert (tmp_path / "e_lesions.csv").read_text().count("\n") == 1  # header only


def _subjects_with_a_bad_one(tmp_path: Path) -> list[Subject]:
    """Five subjects with different lesions; the third has a FLAIR that is not an image."""
    layouts = [LESIONS, LESIONS[:2], LESIONS, LESIONS[1:], (((16, 16, 16), 3, 2),)]
    subjects = [write_subject(tmp_path / f"s{i}", f"sub-{i}", lesions=layout, seed=i)
                for i, layout in enumerate(layouts)]
    subjects[2].flair.write_text("not an image")
    return subjects


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.parent.iterdir())}


def test_jobs_give_the_same_files_as_one_process(tmp_path):
    subjects = _subjects_with_a_bad_one(tmp_path)
    outputs = {}
    config = ExtractConfig(out=str(tmp_path / "out" / "patches.h5"), patch_size=23)  # recorded in the files
    for jobs in (1, 2):
        results, failures = run_extract(subjects, config, show_progress=False, overwrite=True, continue_on_error=True,
                                        jobs=jobs)
        assert [r.subject for r in results] == ["sub-0", "sub-1", "sub-3", "sub-4"]
        assert [f["subject"] for f in failures] == ["sub-2"]
        outputs[jobs] = _outputs(Path(config.out))
    assert set(outputs[1]) == {"patches.h5", "patches_lesions.csv", "patches_extract.json", "patches_errors.csv",
                               "patches_labels_template.csv"}
    assert outputs[1] == outputs[2]  # byte for byte
    assert len(read_patches(config.out)) == 3 + 2 + 2 + 1


def test_jobs_stop_at_the_first_bad_subject_in_order_and_write_nothing(tmp_path):
    subjects = _subjects_with_a_bad_one(tmp_path)
    subjects[4].qsm.write_text("not an image either")  # a later failure, which a worker may meet first
    messages = []
    for jobs in (1, 3):
        config = ExtractConfig(out=str(tmp_path / f"out{jobs}" / "patches.h5"), patch_size=23)
        with pytest.raises(InputError) as error:
            run_extract(subjects, config, show_progress=False, jobs=jobs)
        messages.append((str(error.value), error.value.path))
        assert not Path(config.out).parent.exists() or not any(Path(config.out).parent.iterdir())
    assert messages[0] == messages[1] and "sub-2_FLAIR" in messages[0][0]
    with pytest.raises(InputError, match="--jobs"):
        run_extract(subjects, ExtractConfig(out=str(tmp_path / "o" / "p.h5")), show_progress=False, jobs=0)


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list, str, str]]:
    """name → (extra CLI args, file the message must name, words it must contain)."""
    s = write_subject(tmp_path / "s", "sub-1")
    not_nifti = tmp_path / "notes_FLAIR.nii.gz"
    not_nifti.write_text("not an image")
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 32, 2), np.float32), LPI_AFFINE), four_d)
    shifted = tmp_path / "shifted.nii.gz"
    moved = LPI_AFFINE.copy()
    moved[0, 3] += 2
    nib.save(nib.Nifti1Image(np.ones((32, 32, 32), np.float32), moved), shifted)
    labels = tmp_path / "labels_mask.nii.gz"  # three values: neither binary (0/1, 0/255) nor passed as --instances
    label_data = np.asarray(nib.load(s.mask).dataobj) * 2
    label_data[ball(label_data.shape, LESIONS[0][0], LESIONS[0][1])] = 3
    nib.save(nib.Nifti1Image(label_data.astype(np.uint8), LPI_AFFINE), labels)
    return {
        "missing": (["--mask", s.mask, "--flair", tmp_path / "nope.nii.gz"], "nope.nii.gz", "not found"),
        "not nifti": (["--mask", s.mask, "--flair", not_nifti], not_nifti.name, "NIfTI"),
        "4D": (["--mask", s.mask, "--flair", four_d], four_d.name, "3D"),
        "mismatch": (["--mask", s.mask, "--flair", shifted], s.mask.name, "affine"),
        "not binary": (["--mask", labels], labels.name, "one lesion value"),
        "patch too large": (["--mask", s.mask, "--patch-size", "40"], s.mask.name, "larger than the volume"),
    }


@pytest.mark.parametrize("case", ["missing", "not nifti", "4D", "mismatch", "not binary", "patch too large"])
def test_cli_bad_input_is_one_line_exit_2_and_no_output(case, tmp_path, monkeypatch, capsys):
    args, named, words = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out" / "patches.h5"
    code, text = run_cli(["extract", *args, "--out", out, "--quiet"], monkeypatch, capsys)
    assert code == 2
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and words in lines[0], text
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_resample_onto_the_reference_grid(tmp_path, monkeypatch, capsys):
    s = write_subject(tmp_path / "s", "sub-1", shape=(48, 48, 48))  # 24³ at 2 mm: room for a 23³ patch
    img = nib.load(s.flair)
    coarse = tmp_path / "coarse_FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2], img.affine @ np.diag([2.0, 2, 2, 1])), coarse)
    code, text = run_cli(["extract", "--mask", s.mask, "--flair", coarse, "--out", tmp_path / "r.h5",
                          "--patch-size", "23", "--quiet"], monkeypatch, capsys)
    assert code == 2 and "--resample" in text
    code, text = run_cli(["extract", "--mask", s.mask, "--flair", coarse, "--out", tmp_path / "r.h5",
                          "--patch-size", "23", "--resample", "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    patches = read_patches(tmp_path / "r.h5")
    assert len(patches) == 3  # the lesions are found on the mask's (reference) grid
    assert patches.images[:, 0, 11, 11, 11].min() > 1.3  # the FLAIR hyperintensity survives resampling


def test_synth_volumes_voxel_size_and_lesion_rate(tmp_path, monkeypatch, capsys):
    """--voxel-size keeps the brain's size in mm; --lesions-per-subject sets the mean count; bad values exit 2."""
    out = tmp_path / "bids"
    code, text = run_cli(["synth", "--volumes", "2", "--voxel-size", "2", "--lesions-per-subject", "12", "--out", out,
                          "--labelled-only", "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    flair = nib.load(out / "sub-001" / "anat" / "sub-001_FLAIR.nii.gz")
    assert flair.shape == (48, 56, 48) and np.allclose(flair.header.get_zooms(), 2.0)
    counts = [len((out / s / "lesions.csv").read_text().splitlines()) - 1 for s in ("sub-001", "sub-002")]
    assert 0 < sum(counts) <= 2 * 12 * 2  # Poisson around 12 per subject (2-mm voxels fit fewer small ones)
    for bad in (["--voxel-size", "0"], ["--lesions-per-subject", "-1"]):
        code, text = run_cli(["synth", "--volumes", "1", "--out", tmp_path / "bad", *bad, "--quiet"], monkeypatch,
                             capsys)
        assert code == 2 and len(text.strip().splitlines()) == 1, text
        assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def split_synthetic_subjects(tmp_path_factory) -> tuple[int, int, int, int]:
    """(true parts of confluent lesions, recovered within 2 voxels, single lesions, over-split) over 6 synthetic
    subjects at 0.8 mm (the bank's shapes are 1 mm: resampled and rotated, so this is not the bank's own split
    re-run), with half the components confluent (real masks: 3%) so that the counts rest on ~150 parts."""
    from unittest import mock

    from mslesion.config import SynthConfig
    from mslesion.data.synth import volumes

    voxel_mm, out = 0.8, tmp_path_factory.mktemp("split")
    with mock.patch.object(volumes, "is_confluent", lambda rng: bool(rng.random() < 0.5)):
        folders = volumes.generate_subject_volumes(SynthConfig(seed=0, labelled_only=True), out, 6,
                                                   voxel_size_mm=voxel_mm, lesions_per_subject=40)
    totals = np.zeros(4, np.int64)
    for folder in folders:
        truth = list(csv.DictReader((folder / "lesions.csv").open()))
        anat = folder / "anat"
        subject = Subject(folder.name, anat / f"{folder.name}_label-lesion_mask.nii.gz", None, None, None)
        found = extract_subject(subject, cfg(folder, patch_size=23, min_volume_mm3=0, split_confluent=True),
                                ("mask",)).records
        centres = np.array([[r[k] for k in ("x_mm", "y_mm", "z_mm")] for r in found], dtype=np.float64)
        parts_of = {c: sum(r["component"] == c for r in truth) for c in {r["component"] for r in truth}}
        for row in truth:
            distance = np.linalg.norm(centres - [float(row[k]) for k in ("x_mm", "y_mm", "z_mm")], axis=1)
            nearest = int(np.argmin(distance))
            if parts_of[row["component"]] > 1:
                totals += (1, distance[nearest] / voxel_mm <= 2, 0, 0)
            else:
                totals += (0, 0, 1, found[nearest]["part"] > 0)
    return tuple(int(v) for v in totals)  # type: ignore[return-value]


@pytest.mark.slow
def test_split_confluent_finds_the_parts_of_synthetic_confluent_lesions(split_synthetic_subjects):
    """Measured (seed 0): 135/148 parts (91.2%) recovered, 1/165 single lesions (0.6%) over-split; seeds 1-3 and
    1 mm voxels (not in the test): 91-97% and at most 3.2% (README)."""
    parts, recovered, singles, over_split = split_synthetic_subjects
    print(f"{recovered}/{parts} parts recovered within 2 voxels, {over_split}/{singles} single lesions over-split")
    assert parts >= 100 and singles >= 100
    assert recovered >= 0.8 * parts
    assert over_split <= 0.05 * singles


@pytest.mark.slow
def test_split_confluent_recovers_nine_parts_in_ten(split_synthetic_subjects):
    """The issue's target: 90% of the parts recovered within 2 voxels, at most 5% of single lesions over-split."""
    parts, recovered, singles, over_split = split_synthetic_subjects
    assert recovered >= 0.9 * parts
    assert over_split <= 0.05 * singles


def fill_in(template: Path, filled: Path, codes: dict[tuple[str, int, int], str]) -> list[dict]:
    """What a rater does: the template's rows with the label column filled in (blank where codes has none)."""
    rows = list(csv.DictReader(template.open()))
    for row in rows:
        row["label"] = codes.get((row["subject"], int(row["lesion"]), int(row["part"])), "")
    with filled.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_the_labels_template_filled_in_labels_the_next_extraction(tmp_path, monkeypatch, capsys):
    """extract writes NAME_labels_template.csv; filled in (one row left blank) and given back with --labels, every
    subject's lesions carry the rater's codes, the blank one 0 (unlabelled)."""
    for name in ("sub-1", "sub-2"):
        write_subject(tmp_path / "bids" / name / "anat", name, lesions=LESIONS if name == "sub-1" else LESIONS[:2])
    for path in (tmp_path / "bids").rglob("*phenotype*"):
        path.unlink()  # unlabelled scans: the reason for a template
    first = tmp_path / "first" / "patches.h5"
    code, text = run_cli(["extract", tmp_path / "bids", "--out", first, "--patch-size", "23", "--quiet"], monkeypatch,
                         capsys)
    assert code == 0, text
    template = first.with_name("patches_labels_template.csv")
    assert "patches_labels_template.csv" in text
    lesions = list(csv.DictReader(sidecar_paths(first)[0].open()))
    rows = list(csv.DictReader(template.open()))
    assert list(rows[0]) == ["subject", "lesion", "part", "x_mm", "y_mm", "z_mm", "centre_i", "centre_j", "centre_k",
                             "volume_mm3", "label"]
    assert [r["label"] for r in rows] == [""] * 5
    for row, lesion in zip(rows, lesions, strict=True):  # the same lesions, the same centres in mm and volumes
        assert all(row[k] == lesion[k] for k in ("subject", "lesion", "part", "x_mm", "z_mm", "volume_mm3"))

    keys = [(r["subject"], int(r["lesion"]), int(r["part"])) for r in rows]
    codes = dict(zip(keys, ["5", "2", "6", "3"], strict=False))  # the fifth lesion left blank
    fill_in(template, tmp_path / "filled.csv", codes)
    second = tmp_path / "second" / "patches.h5"
    code, text = run_cli(["extract", tmp_path / "bids", "--labels", tmp_path / "filled.csv", "--out", second,
                          "--patch-size", "23", "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    patches = read_patches(second)
    got = {(str(p), int(lesion)): int(label) for p, lesion, label in zip(patches.patients, patches.lesions,
                                                                         patches.labels, strict=True)}
    assert got == {(s, lesion): int(codes.get((s, lesion, part), 0)) for s, lesion, part in keys}
    assert sorted(got.values()) == [0, 2, 3, 5, 6]
    assert "match no subject" not in text

    # a row whose subject id matches none given (a typo) is ignored, and said so
    filled = (tmp_path / "filled.csv").read_text().splitlines()
    (tmp_path / "typo.csv").write_text("\n".join([*filled, filled[1].replace("sub-1", "sub-l", 1)]) + "\n")
    code, text = run_cli(["extract", tmp_path / "bids", "--labels", tmp_path / "typo.csv", "--out",
                          tmp_path / "third" / "patches.h5", "--patch-size", "23", "--quiet"], monkeypatch, capsys)
    assert code == 0 and "typo.csv" in text and "sub-l match no subject given" in text, text


def test_a_template_of_split_parts_labels_each_part(tmp_path, monkeypatch, capsys):
    subject = write_subject(tmp_path / "s", "sub-1", lesions=confluent_lesions(2, 5))
    args = ["--mask", subject.mask, "--flair", subject.flair, "--patch-size", "23", "--split-confluent", "--quiet"]
    first = tmp_path / "a" / "p.h5"
    assert run_cli(["extract", *args, "--out", first], monkeypatch, capsys)[0] == 0
    rows = list(csv.DictReader(first.with_name("p_labels_template.csv").open()))
    union = [(r["subject"], int(r["lesion"]), int(r["part"])) for r in rows if int(r["part"]) > 0]
    assert len(union) == 2
    codes = {union[0]: "6", union[1]: "3"}
    fill_in(first.with_name("p_labels_template.csv"), tmp_path / "filled.csv", codes)
    labelled = Subject(subject.id, subject.mask, subject.flair, None, tmp_path / "filled.csv")
    result = extract_subject(labelled, cfg(tmp_path, patch_size=23, split_confluent=True), ("flair", "mask"))
    by_part = {(int(lesion), int(part)): int(c) for lesion, part, c in zip(result.lesion_ids, result.parts,
                                                                           result.labels, strict=True)}
    assert {by_part[key[1:]] for key in union} == {6, 3} and sorted(by_part.values()) == [0, 3, 6]
    # read back without splitting, the union has no part 1 or 2: one line naming the labels file
    with pytest.raises(InputError, match="--split-confluent") as info:
        extract_subject(labelled, cfg(tmp_path, patch_size=23), ("flair", "mask"))
    assert info.value.path == str(tmp_path / "filled.csv")


@pytest.mark.parametrize(("table", "problem"), [
    ("subject,lesion,label\nsub-1,1,x\n", "must be integers"),
    ("subject,lesion,label\nsub-1,1,-2\n", "≥ 0"),
    ("subject,lesion,label\nsub-1,1,2\nsub-1,1,3\n", "labelled twice"),
    ("subject,id,label\nsub-1,1,2\n", "lesion,label"),
])
def test_bad_labels_tables_end_in_one_line(tmp_path, table, problem):
    from mslesion.data.extract import read_lesion_labels

    path = tmp_path / "labels.csv"
    path.write_text(table)
    with pytest.raises(InputError, match=problem) as info:
        read_lesion_labels(path, "sub-1")
    assert info.value.path == str(path)


def test_labels_for_other_subjects_only_leave_a_note(tmp_path):
    from mslesion.data.extract import read_lesion_labels

    path = tmp_path / "labels.csv"
    path.write_text("subject,lesion,part,label\nsub-2,1,0,2\n")
    notes: list[str] = []
    assert read_lesion_labels(path, "sub-1", notes) == {}
    assert notes and "sub-1" in notes[0]
    assert read_lesion_labels(path, "sub-2", notes) == {(1, 0): 2}
