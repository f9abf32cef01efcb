"""The HDF5 patch dataset: the project's public contract (format documented in the README).

One file per dataset:
  images   float32 [N, C, D, H, W] (or float16: half the disk and I/O), attribute `channels` (names in stored order)
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

import contextlib
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

    images: np.ndarray  # float32; a PatchReader where read_patches left them in the file (in_memory no / auto)
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


def write_patches(path: str | Path, patches: PatchSet, float16: bool = False) -> None:
    """Write atomically: an interrupted write leaves any earlier file untouched.

    float16 stores the patches at half the size (disk, and bytes read per epoch when streaming); readers convert
    them back to float32. Values keep 11 significant bits (relative rounding ≤ 2⁻¹¹ ≈ 0.05%)."""
    _check_consistent(patches, path)
    if float16:
        check_float16_range(patches.images, path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(hdf5_image(patches, np.float16 if float16 else np.float32))


def check_float16_range(images: np.ndarray, path: str | Path) -> None:
    largest = float(np.abs(images).max()) if images.size else 0.0
    if largest > float(np.finfo(np.float16).max):
        raise InputError(f"a patch value ({largest:g}) exceeds float16's range (65504); store as float32", path)


def hdf5_image(patches: PatchSet, dtype: type = np.float32) -> bytes:
    """The patch file's bytes, built in memory: HDF5 writing to a full disk leaves the library in a state that
    crashes the interpreter at exit, so the disk only ever sees one plain write (an ordinary OSError if full)."""
    name = f"mslesion-{os.getpid()}-{next(_IMAGES)}.h5"  # names the in-memory file only; nothing is stored
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        # One chunk per patch: reading a subset of lesions touches only their chunks. An empty file
        # (a subject without lesions) cannot be chunked and is stored contiguously.
        chunked = dict(chunks=(1, *patches.images.shape[1:]), compression="gzip", compression_opts=1, shuffle=True)
        images = f.create_dataset(
            "images", data=patches.images.astype(dtype, copy=False), **(chunked if len(patches) else {})
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


def available_memory_bytes(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Memory this process may still use: the kernel's MemAvailable (free memory plus reclaimable page cache), or
    less where the process's own cgroup or one above it has a limit (v2: memory.max; v1: memory.limit_in_bytes).

    MemAvailable, not MemFree: after a large file was read once, its page cache makes MemFree small although the
    kernel gives that memory back on demand. The cgroup is the process's own (from /proc/self/cgroup), not the
    mount's root: a container or a systemd/SLURM job places its limit on a nested group."""
    available = _meminfo_available(proc / "meminfo")
    for group in _cgroup_paths(proc / "self" / "cgroup", cgroup_root):
        available = min(available, group)
    return available


def _meminfo_available(meminfo: Path) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_paths(self_cgroup: Path, root: Path) -> list[int]:
    """Headroom (limit − usage + reclaimable file cache) of every limited cgroup from this process's up to the root."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return []
    headroom = []
    for line in lines:
        hierarchy, _, controllers_path = line.partition(":")
        controllers, _, group = controllers_path.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 unified hierarchy
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1 memory controller
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = base / group.lstrip("/")
        while True:
            value = _cgroup_headroom(folder, *files)
            if value is not None:
                headroom.append(value)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return headroom


def _cgroup_headroom(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if not limit_text.isdigit() or int(limit_text) >= 2**60:  # "max" (v2) or the v1 "unlimited" sentinel
        return None
    reclaimable = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                reclaimable = int(value)
    except (OSError, ValueError):
        pass
    return max(0, int(limit_text) - usage + reclaimable)


def images_bytes(images: h5py.Dataset, rows: int, channels: int | None = None) -> int:
    """Bytes of `rows` patches held in memory as float32 (float16 files are converted on reading)."""
    per_channel = int(np.prod(images.shape[2:])) * 4
    return rows * per_channel * (images.shape[1] if channels is None else channels)


def fits_in_memory(needed: int) -> bool:
    """The margin leaves room for the model, its activations and the rest of the process."""
    return needed <= 0.8 * available_memory_bytes()


def check_fits(needed: int, what: str, path: Path, hint: str = "") -> None:
    if not fits_in_memory(needed):
        raise InputError(f"'images' needs {needed / 2**30:.1f} GiB in memory for {what} but "
                         f"{available_memory_bytes() / 2**30:.1f} GiB are available{hint}", path)


def check_readable(images: h5py.Dataset, rows: int, path: Path) -> None:
    """Refuse what cannot be held in memory, and datasets whose patches were never written (they read as zeros)."""
    check_fits(images_bytes(images, rows), f"{rows} patches", path)
    check_written(images, path)


def check_written(images: h5py.Dataset, path: Path) -> None:
    if images.chunks is not None and images.shape[0]:
        per_patch = int(np.prod([-(-s // c) for s, c in zip(images.shape[1:], images.chunks[1:], strict=True)]))
        expected = -(-images.shape[0] // images.chunks[0]) * per_patch
        written = images.id.get_num_chunks()
        if written < expected:
            raise InputError(f"'images' declares {images.shape[0]} patches but only {written} of its {expected} "
                             "chunks were ever written (a truncated or preallocated file)", path)


def read_patches(
    path: str | Path, channels: tuple[str, ...] | None = None, labels_wanted: Callable | None = None,
    in_memory: str = "yes",
) -> PatchSet:
    """Read and validate a patch file; select `channels` (in the given order) if asked.

    `labels_wanted(labels) -> bool mask` selects rows before the images are read, so that a file of many
    unlabelled lesions need not be held in memory to train on its labelled ones. `in_memory`: yes reads the
    images (refusing what does not fit), no leaves them in the file (`images` is then a PatchReader that reads
    rows on demand), auto reads them only when they fit in the memory available (cgroup limits included).
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
            patches = _read_open_file(f, path, channels, labels_wanted, in_memory)
        except (RuntimeError, KeyError, ValueError, TypeError, OSError) as exc:  # h5py on damaged metadata, bad attrs
            first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise InputError(f"damaged or malformed HDF5 patch file ({first_line[:120]})", path) from None
    _check_consistent(patches, path)
    if isinstance(patches.images, np.ndarray) and not np.isfinite(patches.images).all():
        bad = int((~np.isfinite(patches.images)).any(axis=(1, 2, 3, 4)).sum())
        raise InputError(f"'images' contains NaN or infinite values in {bad} patches", path)
    if patches.split is not None:
        unknown = sorted(set(patches.split) - set(SPLIT_NAMES))
        if unknown:
            raise InputError(f"'split' has unknown values {unknown}; allowed: {list(SPLIT_NAMES)}", path)
    return patches


def _read_open_file(f: h5py.File, path: Path, channels: tuple[str, ...] | None,
                    labels_wanted: Callable | None, in_memory: str) -> PatchSet:
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
    if images_ds.dtype not in (np.float32, np.float16):
        raise InputError(f"'images' must be float32 (or float16), got {images_ds.dtype}", path)
    wanted = stored if channels is None else tuple(channels)
    index = _channel_index(stored, wanted, path)
    check_cubic(images_ds.shape, path)
    labels = integer_labels(f["label"][:], path)
    rows = np.ones(len(labels), bool) if labels_wanted is None else np.asarray(labels_wanted(labels), bool)
    if len(labels) != images_ds.shape[0]:
        raise InputError(f"'images' has {images_ds.shape[0]} patches but 'label' has {len(labels)}", path)
    images: np.ndarray | PatchReader
    if in_memory == "yes" or (in_memory == "auto" and fits_in_memory(images_bytes(images_ds, int(rows.sum())))):
        check_readable(images_ds, int(rows.sum()), path)
        images = _read_rows(images_ds, rows)
        if index != list(range(len(stored))):
            images = images[:, index]
        images = np.ascontiguousarray(images, dtype=np.float32)
    else:
        check_written(images_ds, path)
        images = PatchReader(path, np.flatnonzero(rows), tuple(index), tuple(images_ds.shape))
    patches = PatchSet(
        images=images,
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




class PatchReader:
    """Patches left in their HDF5 file and read on demand (`--in-memory no`, or auto when the file does not fit).

    Stands where a PatchSet's or Task's in-memory images would: `len`, `shape`, `dtype`, `reader[index]`, and
    `read(indices)` for many rows at once. Rows are read in runs of consecutive file rows, at most RUN at a time,
    so that selecting a few channels of a many-channel file never holds more than a run of the others.
    Values are float32 (float16 files are converted) and checked to be finite as they are read.
    """

    RUN = 64

    def __init__(self, path: Path, rows: np.ndarray, channel_index: tuple[int, ...], stored_shape: tuple[int, ...]):
        self.path = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)  # file row of each patch
        self.channel_index = channel_index
        self.stored_shape = stored_shape
        self.shape = (len(self.rows), len(channel_index), *stored_shape[2:])
        self.dtype = np.dtype(np.float32)
        self.ndim = 5
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def subset(self, indices: np.ndarray) -> PatchReader:
        """The patches at `indices` (in that order), still in the file."""
        return PatchReader(self.path, self.rows[np.asarray(indices, dtype=np.int64)], self.channel_index,
                           self.stored_shape)

    def with_channels(self, positions: list[int]) -> PatchReader:
        """The same patches restricted to some of this reader's channels (positions among them)."""
        return PatchReader(self.path, self.rows, tuple(self.channel_index[p] for p in positions), self.stored_shape)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, int | np.integer):
            return self.read(np.asarray([index]))[0]
        if isinstance(index, slice):
            return self.read(np.arange(len(self))[index])
        return self.read(np.asarray(index))

    def read(self, indices: np.ndarray) -> np.ndarray:
        """float32 [len(indices), C, D, H, W]; each distinct row is read once, in file order."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        file_rows = self.rows[indices]
        unique, inverse = np.unique(file_rows, return_inverse=True)
        block = np.empty((len(unique), *self.shape[1:]), np.float32)
        if not len(unique):
            return block
        run_starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
        run_ends = np.append(run_starts[1:], len(unique))
        pieces = [(first, min(first + self.RUN, end)) for start, end in zip(run_starts, run_ends, strict=True)
                  for first in range(start, end, self.RUN)]
        all_channels = self.channel_index == tuple(range(self.stored_shape[1]))
        try:
            dataset = self._dataset()
            for first, last in pieces:
                part = dataset[unique[first]:unique[last - 1] + 1]
                block[first:last] = part if all_channels else part[:, list(self.channel_index)]
        except (OSError, RuntimeError) as exc:  # h5py on a damaged chunk or a vanished file
            first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise InputError(f"cannot read 'images' ({first_line[:120]})", self.path) from None
        if not np.isfinite(block).all():
            bad = unique[~np.isfinite(block).all(axis=(1, 2, 3, 4))]
            raise InputError(f"'images' contains NaN or infinite values (file row {int(bad[0])}, "
                             f"{len(bad)} patches in this read)", self.path)
        if len(unique) == len(file_rows) and np.array_equal(unique, file_rows):
            return block  # already in the order asked: no second copy of a window
        return block[inverse.reshape(-1)]

    def _dataset(self) -> h5py.Dataset:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file["images"]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:  # an open HDF5 handle does not cross processes; each opens its own
        return {**self.__dict__, "_file": None}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown h5py may already be gone
            self.close()


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
