"""Import MedMNIST-3D-style patch sets (npz) into the project's HDF5 patch format.

Layout read: `train_images`, `train_labels`, `test_images`, `test_labels` and optionally `val_images`,
`val_labels`; images [N, D, H, W] (one channel, cubic), labels [N] or [N, 1] integer class indices 0..K-1.
Any 3D patch set with this layout imports, not only MedMNIST.

What the import does and why:
  * the official split is kept row by row in the file's `split` dataset, so `train --split predefined`
    trains on 'train', selects on 'val' and tests on 'test';
  * label code 0 means "not labelled" in this project, so class c is stored as code c + 1, and the
    matching class map ("normal=1;hyperplasia=2") is written to the file attribute `class_map`;
  * images become float32 in [0, 1]: uint8 by the fixed 0–255 range, anything else by the min/max of
    all images (a label-free affine map); stored = (raw − intensity_offset) / intensity_scale;
  * MedMNIST has no patient ids: every sample gets its own id ("train-00042"), so a patient-grouped
    split would be a per-sample split. The official split is what the data's publishers evaluate on.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from mslesion.atomic import check_file_output
from mslesion.config import MedMNISTImportConfig
from mslesion.data.patches import SPLIT_NAMES, PatchSet, write_patches
from mslesion.errors import InputError
from mslesion.paper import MIN_PATCH_SIZE

# Class names of the MedMNIST 3D sets staged in shared/data/medmnist3d (MedMNIST v2 dataset information).
KNOWN_CLASS_NAMES = {
    "adrenalmnist3d": ("normal", "hyperplasia"),
    "vesselmnist3d": ("vessel", "aneurysm"),
}
REQUIRED_SPLITS = ("train", "test")


def read_npz_splits(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images [N, D, H, W], labels [N] int64)} for the splits present, validated."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable npz file ({exc.__class__.__name__})", path) from None
    missing = [f"{s}_{kind}" for s in REQUIRED_SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in arrays]
    if missing:
        raise InputError(f"missing arrays {', '.join(missing)} (expected MedMNIST keys train_/val_/test_"
                         f"images and labels; found {', '.join(sorted(arrays)) or 'none'})", path)
    splits = {}
    for name in SPLIT_NAMES:
        if f"{name}_images" in arrays or f"{name}_labels" in arrays:
            splits[name] = _checked_pair(arrays, name, path)
    shapes = {name: images.shape[1:] for name, (images, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(f"patch shapes differ between splits: {shapes}", path)
    return splits


def _checked_pair(arrays: dict[str, np.ndarray], name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if f"{name}_images" not in arrays or f"{name}_labels" not in arrays:
        raise InputError(f"'{name}' has images or labels but not both", path)
    images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"]
    if images.ndim != 4:
        raise InputError(f"{name}_images must be [N, D, H, W] (one channel, 3D), got shape {images.shape}", path)
    if len(set(images.shape[1:])) != 1:
        # The trainer's 48 cube symmetries and LesionNet's patch_size assume cubes.
        raise InputError(f"{name}_images patches must be cubic, got {images.shape[1:]}", path)
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise InputError(f"{name}_images must be numeric, got {images.dtype}", path)
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise InputError(f"{name}_images contains NaN or infinite values", path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(f"{name}_labels must be [N] or [N, 1] (one class per sample; multi-label sets "
                         f"are not supported), got shape {labels.shape}", path)
    if len(labels) != len(images):
        raise InputError(f"{name}_labels has {len(labels)} entries but {name}_images has {len(images)}", path)
    if len(labels) == 0:
        raise InputError(f"split '{name}' is empty", path)
    return images, _integer_labels(labels, name, path)


def _integer_labels(labels: np.ndarray, name: str, path: Path) -> np.ndarray:
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise InputError(f"{name}_labels must be integer class indices, got {labels.dtype}", path)
    integral = np.isfinite(labels).all() and (labels == np.round(labels)).all()
    if np.issubdtype(labels.dtype, np.floating) and not integral:
        raise InputError(f"{name}_labels must be integer class indices", path)
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise InputError(f"{name}_labels has negative class indices", path)
    return labels


def intensity_scaling(images: list[np.ndarray], path: str | Path) -> tuple[float, float]:
    """(offset, scale) with stored = (raw − offset) / scale in [0, 1]: uint8 by its range, else global min/max."""
    if all(im.dtype == np.uint8 for im in images):
        return 0.0, 255.0
    low = float(min(im.min() for im in images))
    high = float(max(im.max() for im in images))
    if high <= low:
        raise InputError(f"all images have the same intensity {low}; nothing to learn from", path)
    return low, high - low


def default_class_names(path: str | Path, n_classes: int) -> tuple[str, ...]:
    known = KNOWN_CLASS_NAMES.get(Path(path).stem.lower())
    if known is not None and len(known) == n_classes:
        return known
    return tuple(f"class{c}" for c in range(n_classes))


def class_map_spec(names: tuple[str, ...]) -> str:
    """The class map of the stored codes: class c (0-based in the npz) is code c + 1."""
    return ";".join(f"{name}={c + 1}" for c, name in enumerate(names))


def medmnist_patches(cfg: MedMNISTImportConfig) -> PatchSet:
    """Read and convert the npz named in cfg.source (no file written)."""
    splits = read_npz_splits(cfg.source)
    n_classes = int(max(labels.max() for _, labels in splits.values())) + 1
    if n_classes < 2:
        raise InputError("all samples have class 0; a classification task needs at least two classes", cfg.source)
    names = cfg.class_names or default_class_names(cfg.source, n_classes)
    if len(names) != n_classes:
        raise InputError(f"{len(names)} class names given ({','.join(names)}) but the labels have "
                         f"{n_classes} classes (0..{n_classes - 1})", cfg.source)
    size = next(iter(splits.values()))[0].shape[1:]
    if len(set(size)) != 1 or size[0] < MIN_PATCH_SIZE:
        raise InputError(f"images are {'×'.join(map(str, size))}; the paper's network needs cubes of at least "
                         f"{MIN_PATCH_SIZE}³", cfg.source)
    offset, scale = intensity_scaling([images for images, _ in splits.values()], cfg.source)
    images = np.concatenate([
        ((im.astype(np.float32) - np.float32(offset)) / np.float32(scale))[:, None] for im, _ in splits.values()
    ])
    labels = np.concatenate([lab for _, lab in splits.values()]) + 1  # code 0 is "not labelled" here
    split = np.concatenate([np.full(len(lab), name, dtype=object) for name, (_, lab) in splits.items()])
    patients = np.concatenate([
        np.asarray([f"{name}-{i:05d}" for i in range(len(lab))], dtype=object) for name, (_, lab) in splits.items()
    ])
    source = Path(cfg.source)
    return PatchSet(
        images=images,
        labels=labels,
        patients=patients,
        lesions=np.zeros(len(labels), dtype=np.int64),
        channels=(cfg.channel_name,),
        source=f"{source.name} (md5 {file_md5(source)}), imported by mslesion import-medmnist",
        split=split,
        attrs={
            "class_map": class_map_spec(names),
            "label_encoding": "code = npz class index + 1 (0 means not labelled)",
            "intensity_offset": offset,
            "intensity_scale": scale,
            "intensity_encoding": "stored = (raw - intensity_offset) / intensity_scale",
            "patient_ids": "one id per sample (the source has no patient ids)",
        },
    )


def import_medmnist(cfg: MedMNISTImportConfig, overwrite: bool = False) -> PatchSet:
    """Convert cfg.source to the HDF5 patch file cfg.out (written atomically) and return its contents."""
    if not cfg.out:
        raise InputError("no output file given (--out)")
    check_file_output(cfg.out, overwrite)
    if Path(cfg.out).resolve() == Path(cfg.source).resolve():
        raise InputError("--out would overwrite the input file", cfg.out)
    patches = medmnist_patches(cfg)
    write_patches(cfg.out, patches)
    return patches


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_summary(patches: PatchSet) -> dict[str, dict[int, int]]:
    """{split: {code: count}}, for the CLI's report and the tests."""
    assert patches.split is not None
    return {
        name: {int(c): int(((patches.split == name) & (patches.labels == c)).sum()) for c in np.unique(patches.labels)}
        for name in SPLIT_NAMES if (patches.split == name).any()
    }
