"""NIfTI loading, canonical reorientation and its inverse, grid checks, resampling; subject discovery."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mslesion.data.nifti import load_aligned, load_image, to_original_orientation
from mslesion.data.subjects import discover, from_bids, from_manifest, subject_id_from_path
from mslesion.errors import InputError

# Voxel axes stored as (posterior→anterior flipped, left-right swapped with superior-inferior): far from RAS.
ODD_AFFINE = np.array([[0, 0, -2.0, 50], [0, -1.0, 0, 20], [1.5, 0, 0, -30], [0, 0, 0, 1]])


def save(path, data, affine=ODD_AFFINE):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        load_image(tmp_path / "missing.nii.gz")
    assert info.value.path.endswith("missing.nii.gz")
    text = tmp_path / "text.nii"
    text.write_text("hello")
    with pytest.raises(InputError, match="NIfTI"):
        load_image(text)
    with pytest.raises(InputError, match="3D"):
        load_image(save(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 3), np.float32)))
    assert load_image(save(tmp_path / "4d1.nii.gz", np.zeros((4, 5, 6, 1), np.float32))).shape == (4, 5, 6)


def test_canonical_and_back_is_the_identity(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    path = save(tmp_path / "img.nii.gz", data)
    grid, arrays = load_aligned({"flair": path}, "flair")
    assert nib.aff2axcodes(grid.affine) == ("R", "A", "S")
    assert grid.voxel_size_mm == pytest.approx((2.0, 1.0, 1.5))
    # Same world position of each voxel value before and after reorientation.
    index = np.array([1, 2, 3])
    world = ODD_AFFINE @ [*index, 1]
    canonical_index = np.rint(np.linalg.inv(grid.affine) @ world).astype(int)[:3]
    assert arrays["flair"][tuple(canonical_index)] == data[tuple(index)]
    back = to_original_orientation(arrays["flair"], grid)
    np.testing.assert_allclose(back.affine, ODD_AFFINE)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)


@pytest.mark.parametrize(("units", "qform_code", "sform_code"), [(("mm", "sec"), 1, 2), (("micron", "unknown"), 2, 0)])
def test_outputs_keep_the_inputs_units_codes_and_affine(tmp_path, units, qform_code, sform_code):
    img = nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), ODD_AFFINE)
    img.header.set_xyzt_units(*units)
    img.set_qform(ODD_AFFINE, code=qform_code)
    img.set_sform(ODD_AFFINE, code=sform_code)
    nib.save(img, tmp_path / "img.nii.gz")
    grid, arrays = load_aligned({"flair": tmp_path / "img.nii.gz"}, "flair")
    back = to_original_orientation(arrays["flair"].astype(np.uint8), grid)
    assert back.header.get_xyzt_units() == units
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (qform_code, sform_code)
    np.testing.assert_array_equal(back.affine, ODD_AFFINE)  # exactly, not up to the reorientation's round-off
    assert back.get_data_dtype() == np.uint8


def test_grid_mismatch_and_resampling(tmp_path):
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[3:6, 3:6, 3:6] = 1
    flair = save(tmp_path / "flair.nii.gz", np.ones((5, 5, 5), np.float32), ODD_AFFINE @ np.diag([2.0, 2, 2, 1]))
    mask_path = save(tmp_path / "mask.nii.gz", mask)
    with pytest.raises(InputError, match="shape") as info:
        load_aligned({"flair": flair, "mask": mask_path}, "flair")
    assert info.value.path.endswith("mask.nii.gz")
    grid, arrays = load_aligned({"flair": flair, "mask": mask_path}, "flair", resample=True)
    assert grid.shape == arrays["mask"].shape == (5, 5, 5)
    assert set(np.unique(arrays["mask"])) <= {0.0, 1.0}  # nearest neighbour keeps a mask binary
    assert arrays["mask"].sum() > 0
    grid, arrays = load_aligned({"mask": mask_path}, "mask", voxel_size_mm=(1.0, 1.0, 1.0))
    assert grid.voxel_size_mm == pytest.approx((1.0, 1.0, 1.0))
    assert arrays["mask"].sum() == pytest.approx(mask.sum() * 2 * 1.5, rel=0.35)  # 27 voxels of 3 mm³


def test_subject_ids_from_names(tmp_path):
    assert subject_id_from_path(tmp_path / "sub-07_ses-1_label-lesion_mask.nii.gz") == "sub-07_ses-1"
    assert subject_id_from_path(tmp_path / "patient08_lesion_mask.nii.gz") == "patient08"
    assert subject_id_from_path(tmp_path / "patient07" / "lesion_mask.nii.gz") == "patient07"


def test_bids_discovery_and_errors(tmp_path):
    for sub, base in (("sub-01", tmp_path / "sub-01" / "anat"), ("sub-02", tmp_path / "derivatives" / "x" / "sub-02")):
        base.mkdir(parents=True)
        for suffix in ("FLAIR", "Chimap", "label-lesion_mask"):
            (base / f"{sub}_{suffix}.nii.gz").touch()
    (tmp_path / "sub-01" / "anat" / "sub-01_desc-phenotype_dseg.nii.gz").touch()
    subjects = from_bids(tmp_path)
    assert [s.id for s in subjects] == ["sub-01", "sub-02"]
    assert subjects[0].phenotype is not None and subjects[1].phenotype is None
    assert subjects[1].available_channels == ("flair", "qsm", "mask")
    (tmp_path / "derivatives" / "x" / "sub-02" / "sub-02_label-lesion_mask.nii.gz").unlink()
    with pytest.raises(InputError, match="sub-02 has no lesion mask"):
        from_bids(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no BIDS-style subjects"):
        from_bids(empty)


def test_manifest(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,flair,qsm,mask,phenotype\nA,a/f.nii.gz,,a/m.nii.gz,a/labels.csv\n")
    (subject,) = from_manifest(manifest)
    assert subject.mask == tmp_path / "a" / "m.nii.gz" and subject.qsm is None
    assert subject.phenotype == tmp_path / "a" / "labels.csv"
    manifest.write_text("subject,flair,mask,colour\nA,f,m,red\n")
    with pytest.raises(InputError, match="columns"):
        from_manifest(manifest)
    manifest.write_text("subject,mask\nA,m\nA,n\n")
    with pytest.raises(InputError, match="twice"):
        from_manifest(manifest)
    with pytest.raises(InputError, match="not both"):
        discover(manifest, mask=tmp_path / "m.nii.gz")
