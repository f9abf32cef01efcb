"""NIfTI volumes in: load, reorient to RAS, check that a subject's images share one grid, resample.

Everything downstream works on arrays in the closest canonical (RAS) orientation, so that lesion centres,
patches and cube symmetries mean the same thing for every scanner. Outputs go back to the orientation of
the grid the lesions were found on (`to_original_orientation`).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from mslesion.errors import InputError

# Affines of images written by different tools differ in the last float digits; 1e-3 mm (and 1e-4 in the
# direction cosines) is far below a voxel and far above float32 round-off.
AFFINE_ATOL = 1e-3


@dataclass
class ImageGrid:
    """The voxel grid of a subject: shape and affine of the canonical arrays, and how to undo the reorientation."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # canonical (RAS) voxel → world mm
    original_affine: np.ndarray  # the affine of the image this grid came from, before reorientation
    original_shape: tuple[int, int, int]
    # The original header's units and qform/sform codes: outputs on this grid keep them (a viewer then places
    # them exactly where it places the input; a scanner-anatomical sform stays scanner-anatomical).
    xyzt_units: tuple[str, str] = ("mm", "unknown")
    qform_code: int = 1
    sform_code: int = 1

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))


def load_image(path: str | Path) -> nib.Nifti1Image:
    """A 3D NIfTI image as stored (a 4D image with one volume is accepted as 3D)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, expected a NIfTI file", path)
    check_gzip_stream(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib errors, ...)
        raise InputError(f"not a readable NIfTI image ({exc.__class__.__name__})", path) from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"not a NIfTI image ({type(img).__name__})", path)
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise InputError(f"expected a 3D image, got shape {img.shape}", path)
    if not np.isfinite(img.affine).all() or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise InputError("invalid affine (singular or not finite)", path)
    return img


def check_gzip_stream(path: Path) -> None:
    """A .gz file must decompress to its end with a valid checksum.

    nibabel reads only the bytes the image needs, so a stream corrupted in the middle (or missing its tail)
    would otherwise be read as garbage voxels without a word: gzip checks the CRC only at the end."""
    if path.suffix.lower() != ".gz":
        return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"not a readable NIfTI image: corrupt or truncated gzip stream "
                         f"({str(exc) or exc.__class__.__name__})", path) from None


def canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    return nib.as_closest_canonical(img)


def voxel_data(img: nib.Nifti1Image, path: str | Path, dtype=np.float32) -> np.ndarray:
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # truncated gzip, wrong byte count
        raise InputError(f"cannot read the voxel data ({exc.__class__.__name__})", path) from None


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, atol: float = AFFINE_ATOL) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=atol, rtol=0)


def grid_mismatch(reference: nib.Nifti1Image, other: nib.Nifti1Image) -> str:
    if reference.shape[:3] != other.shape[:3]:
        return f"shape {other.shape[:3]} differs from {reference.shape[:3]}"
    worst = float(np.abs(reference.affine - other.affine).max())
    return f"affine differs by up to {worst:.4g} (tolerance {AFFINE_ATOL})"


def resample_onto(img: nib.Nifti1Image, reference: nib.Nifti1Image, is_label: bool) -> nib.Nifti1Image:
    """Resample onto the reference grid: linear for intensities, nearest neighbour for masks and labels."""
    from nibabel.processing import resample_from_to

    order = 0 if is_label else 1
    return resample_from_to(img, (reference.shape[:3], reference.affine), order=order, mode="constant", cval=0.0)


def reference_with_voxel_size(img: nib.Nifti1Image, voxel_size_mm: tuple[float, float, float]) -> nib.Nifti1Image:
    """A grid covering `img` with the given voxel size (nibabel's resample_to_output), as a reference."""
    from nibabel.processing import resample_to_output

    return resample_to_output(img, voxel_sizes=voxel_size_mm, order=1)


def grid_of(canonical_img: nib.Nifti1Image, original: nib.Nifti1Image) -> ImageGrid:
    return ImageGrid(
        shape=tuple(int(s) for s in canonical_img.shape[:3]),  # type: ignore[arg-type]
        affine=np.asarray(canonical_img.affine, dtype=np.float64),
        original_affine=np.asarray(original.affine, dtype=np.float64),
        original_shape=tuple(int(s) for s in original.shape[:3]),  # type: ignore[arg-type]
        xyzt_units=tuple(original.header.get_xyzt_units()),  # type: ignore[arg-type]
        qform_code=int(original.header["qform_code"]),
        sform_code=int(original.header["sform_code"]),
    )


def to_original_orientation(data: np.ndarray, grid: ImageGrid) -> nib.Nifti1Image:
    """A NIfTI image of canonical `data` ([X, Y, Z] or [X, Y, Z, T]) in the original orientation of `grid`, with
    the original affine (exactly), units and qform/sform codes."""
    img = nib.Nifti1Image(data, grid.affine)
    back = orientations.ornt_transform(
        orientations.io_orientation(grid.affine), orientations.io_orientation(grid.original_affine)
    )
    out = nib.Nifti1Image(np.asanyarray(img.as_reoriented(back).dataobj), grid.original_affine)
    out.header.set_xyzt_units(*grid.xyzt_units)
    out.set_qform(grid.original_affine, code=grid.qform_code)
    out.set_sform(grid.original_affine, code=grid.sform_code)
    return out


LABEL_ROLES = ("mask", "phenotype")


def load_aligned(
    paths: dict[str, Path], reference_role: str, resample: bool = False,
    voxel_size_mm: tuple[float, float, float] | None = None,
) -> tuple[ImageGrid, dict[str, np.ndarray]]:
    """Load a subject's images onto one grid, as canonical (RAS) float32 arrays keyed by role.

    Without `resample`, every image must share the reference's shape and affine (else an InputError naming
    the file). With it, images are resampled onto the reference grid (or a grid of `voxel_size_mm` covering
    it): linearly for intensities, nearest-neighbour for `mask` and `phenotype`.
    """
    images = {role: load_image(path) for role, path in paths.items()}
    reference = images[reference_role]
    if voxel_size_mm is not None:
        reference = reference_with_voxel_size(reference, voxel_size_mm)
    for role, img in images.items():
        if same_grid(reference, img):
            continue
        if not resample and voxel_size_mm is None:
            raise InputError(f"{grid_mismatch(reference, img)} of {paths[reference_role].name} "
                             f"(use --resample to resample onto it)", paths[role])
        images[role] = resample_onto(img, reference, is_label=role in LABEL_ROLES)
    canonical_images = {role: canonical(img) for role, img in images.items()}
    grid = grid_of(canonical_images[reference_role], images[reference_role])
    arrays = {role: voxel_data(img, paths[role]) for role, img in canonical_images.items()}
    return grid, arrays
