"""The HDF5 patch dataset: the project's public contract (format documented in the README).

One file per dataset:
  images   float32 [N, C, D, H, W], attribute `channels` (names in stored order)
  label    int [N]   Table 1 codes for MS data (0 = not labelled)
  patient  str [N]   patient id
  lesion   int [N]   lesion id within its patient
  split    str [N]   optional predefined split ("train" / "val" / "test"), e.g. MedMNIST's official one
  volume_mm3 float [N]  optional (format 2): the lesion's volume; a patch may show only part of a large one
  part     int [N]   optional (format 2): part of a confluent lesion split by extract (0 = not split); with
                     it, (patient, lesion, part) names a patch
  file attributes: voxel_size_mm (3 floats), format_version, source (free form), anything else extra.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mslesion.atomic import atomic_path
from mslesion.errors import InputError

FORMAT_VERSION = 2  # 2: optional volume_mm3 and part datasets (files of format 1 read unchanged)
_IMAGES = itertools.count()
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class PatchSet:
    """Lesion patches and their metadata, as stored in one HDF5 file."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    lesions: np.ndarray
    channels: tuple[str, ...]
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = ""
    split: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    volume_mm3: np.ndarray | None = None
    parts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])  # type: ignore[return-value]


def write_patches(path: str | Path, patches: PatchSet) -> None:
    """Write atomically: an interrupted write leaves any earlier file untouched."""
    _check_consistent(patches, path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(hdf5_image(patches))


def hdf5_image(patches: PatchSet) -> bytes:
    """The patch file's bytes, built in memory: HDF5 writing to a full disk leaves the library in a state that
    crashes the interpreter at exit, so the disk only ever sees one plain write (an ordinary OSError if full)."""
    name = f"mslesion-{os.getpid()}-{next(_IMAGES)}.h5"  # names the in-memory file only; nothing is stored
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        # One chunk per patch: reading a subset of lesions touches only their chunks. An empty file
        # (a subject without lesions) cannot be chunked and is stored contiguously.
        chunked = dict(chunks=(1, *patches.images.shape[1:]), compression="gzip", compression_opts=1, shuffle=True)
        images = f.create_dataset(
            "images", data=patches.images.astype(np.float32, copy=False), **(chunked if len(patches) else {})
        )
        images.attrs["channels"] = list(patches.channels)
        f.create_dataset("label", data=patches.labels.astype(np.int64))
        f.create_dataset("patient", data=np.asarray(patches.patients, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("lesion", data=patches.lesions.astype(np.int64))
        if patches.split is not None:
            f.create_dataset("split", data=np.asarray(patches.split, dtype=object), dtype=h5py.string_dtype())
        if patches.volume_mm3 is not None:
            f.create_dataset("volume_mm3", data=patches.volume_mm3.astype(np.float64))
        if patches.parts is not None:
            f.create_dataset("part", data=patches.parts.astype(np.int64))
        f.attrs["voxel_size_mm"] = np.asarray(patches.voxel_size_mm, dtype=np.float64)
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["source"] = patches.source
        for key, value in patches.attrs.items():
            f.attrs[key] = value
        f.flush()
        return f.id.get_file_image()


def _check_consistent(p: PatchSet, path: str | Path) -> None:
    n = len(p.labels)
    if p.images.ndim != 5:
        raise InputError(f"images must be [N, C, D, H, W], got shape {p.images.shape}", path)
    if p.images.shape[1] != len(p.channels):
        raise InputError(f"{p.images.shape[1]} image channels but {len(p.channels)} channel names", path)
    check_cubic(p.images.shape, path)
    for name, arr in (("images", p.images), ("patient", p.patients), ("lesion", p.lesions)):
        if len(arr) != n:
            raise InputError(f"{name} has {len(arr)} entries but label has {n}", path)
    for name, optional in (("split", p.split), ("volume_mm3", p.volume_mm3), ("part", p.parts)):
        if optional is not None and len(optional) != n:
            raise InputError(f"{name} has {len(optional)} entries but label has {n}", path)


def check_cubic(shape: tuple[int, ...], path: str | Path) -> None:
    """Patches are cubes: the 48 cube symmetries and the net's isotropic blocks assume it."""
    if len(set(shape[2:])) != 1:
        raise InputError(f"patches must be cubic, got {'×'.join(map(str, shape[2:]))}", path)


def integer_labels(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Label codes as int64; fractional, negative or non-finite codes are refused, never truncated."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
        bad = values[~np.isfinite(values) | (values != np.round(values))][:3]
        raise InputError(f"'label' must hold integer codes, found {', '.join(f'{v:g}' for v in bad)}", path)
    if values.dtype.kind not in "fiub":
        raise InputError(f"'label' must hold integer codes, got {values.dtype}", path)
    labels = values.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise InputError(f"'label' codes must be ≥ 0 (0 = not labelled), found {int(labels.min())}", path)
    return labels


def available_memory_bytes() -> int:
    """Memory this process may still use: the free physical memory, or less under a cgroup limit."""
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit():
            free = min(free, int(limit) - usage)
    return free


def check_readable(images: h5py.Dataset, rows: int, path: Path) -> None:
    """Refuse what cannot be held in memory, and datasets whose patches were never written (they read as zeros)."""
    needed = rows * int(np.prod(images.shape[1:])) * images.dtype.itemsize
    if needed > 0.8 * available_memory_bytes():
        raise InputError(f"'images' needs {needed / 2**30:.1f} GiB in memory for {rows} patches but "
                         f"{available_memory_bytes() / 2**30:.1f} GiB are available", path)
    if images.chunks is not None and images.shape[0]:
        per_patch = int(np.prod([-(-s // c) for s, c in zip(images.shape[1:], images.chunks[1:], strict=True)]))
        expected = -(-images.shape[0] // images.chunks[0]) * per_patch
        written = images.id.get_num_chunks()
        if written < expected:
            raise InputError(f"'images' declares {images.shape[0]} patches but only {written} of its {expected} "
                             "chunks were ever written (a truncated or preallocated file)", path)


def read_patches(
    path: str | Path, channels: tuple[str, ...] | None = None, labels_wanted: Callable | None = None
) -> PatchSet:
    """Read and validate a patch file; select `channels` (in the given order) if asked.

    `labels_wanted(labels) -> bool mask` selects rows before the images are read, so that a file of many
    unlabelled lesions need not be held in memory to train on its labelled ones.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"not a readable HDF5 file ({exc.__class__.__name__})", path) from None
    with f:
        try:
            patches = _read_open_file(f, path, channels, labels_wanted)
        except (RuntimeError, KeyError, ValueError, TypeError, OSError) as exc:  # h5py on damaged metadata, bad attrs
            first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise InputError(f"damaged or malformed HDF5 patch file ({first_line[:120]})", path) from None
    _check_consistent(patches, path)
    if not np.isfinite(patches.images).all():
        bad = int((~np.isfinite(patches.images)).any(axis=(1, 2, 3, 4)).sum())
        raise InputError(f"'images' contains NaN or infinite values in {bad} patches", path)
    if patches.split is not None:
        unknown = sorted(set(patches.split) - set(SPLIT_NAMES))
        if unknown:
            raise InputError(f"'split' has unknown values {unknown}; allowed: {list(SPLIT_NAMES)}", path)
    return patches


def _read_open_file(f: h5py.File, path: Path, channels: tuple[str, ...] | None,
                    labels_wanted: Callable | None) -> PatchSet:
    for key in ("images", "label", "patient", "lesion"):
        if key not in f:
            raise InputError(f"missing dataset '{key}' (not an mslesion patch file?)", path)
    images_ds = f["images"]
    stored = tuple(str(c) for c in images_ds.attrs.get("channels", []))
    if images_ds.ndim != 5:
        raise InputError(f"'images' must be [N, C, D, H, W], got shape {images_ds.shape}", path)
    if len(stored) != images_ds.shape[1]:
        raise InputError(
            f"'images' has {images_ds.shape[1]} channels but its 'channels' attribute names {len(stored)}", path
        )
    if images_ds.dtype != np.float32:
        raise InputError(f"'images' must be float32, got {images_ds.dtype}", path)
    wanted = stored if channels is None else tuple(channels)
    index = _channel_index(stored, wanted, path)
    check_cubic(images_ds.shape, path)
    labels = integer_labels(f["label"][:], path)
    rows = np.ones(len(labels), bool) if labels_wanted is None else np.asarray(labels_wanted(labels), bool)
    if len(labels) != images_ds.shape[0]:
        raise InputError(f"'images' has {images_ds.shape[0]} patches but 'label' has {len(labels)}", path)
    check_readable(images_ds, int(rows.sum()), path)
    images = _read_rows(images_ds, rows)
    if index != list(range(len(stored))):
        images = images[:, index]
    patches = PatchSet(
        images=np.ascontiguousarray(images),
        labels=labels[rows],
        patients=np.asarray([_text(p) for p in f["patient"][:]], dtype=object)[rows],
        lesions=f["lesion"][:].astype(np.int64)[rows],
        channels=wanted,
        voxel_size_mm=voxel_size(f.attrs.get("voxel_size_mm", (1.0, 1.0, 1.0)), path),
        source=_text(f.attrs.get("source", "")),
        split=np.asarray([_text(s) for s in f["split"][:]], dtype=object)[rows] if "split" in f else None,
        attrs={k: v for k, v in f.attrs.items() if k not in ("voxel_size_mm", "format_version", "source")},
        volume_mm3=f["volume_mm3"][:].astype(np.float64)[rows] if "volume_mm3" in f else None,
        parts=f["part"][:].astype(np.int64)[rows] if "part" in f else None,
    )
    return patches


def voxel_size(value, path: Path) -> tuple[float, float, float]:
    sizes = np.atleast_1d(np.asarray(value, dtype=np.float64)) if np.asarray(value).dtype.kind in "fiu" else None
    if sizes is None or sizes.shape != (3,) or not (np.isfinite(sizes).all() and (sizes > 0).all()):
        raise InputError(f"the attribute voxel_size_mm must be 3 positive numbers, got {value!r}", path)
    return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    if rows.all():
        return dataset[:]
    return dataset[np.flatnonzero(rows)] if rows.any() else np.empty((0, *dataset.shape[1:]), np.float32)


def _channel_index(stored: tuple[str, ...], wanted: tuple[str, ...], path: Path) -> list[int]:
    if not wanted:
        raise InputError("no channels requested", path)
    missing = [c for c in wanted if c not in stored]
    if missing:
        raise InputError(f"unknown channel {', '.join(missing)}; the file has {', '.join(stored)}", path)
    if len(set(wanted)) != len(wanted):
        raise InputError(f"channel listed twice in {','.join(wanted)}", path)
    return [stored.index(c) for c in wanted]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)




def read_lesion_index(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The label and patient of every row of a patch file (validated as read_patches does), reading no image."""
    seen: dict[str, np.ndarray] = {}

    def no_rows(labels: np.ndarray) -> np.ndarray:
        seen["labels"] = labels
        return np.zeros(len(labels), bool)

    read_patches(path, labels_wanted=no_rows)
    with h5py.File(path, "r") as f:
        patients = np.asarray([_text(p) for p in f["patient"][:]], dtype=object)
    return seen["labels"], patients
