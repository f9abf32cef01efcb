"""Shared fixtures: tiny synthetic patch files written in tmp_path."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mslesion.data.patches import PatchSet, write_patches

# `--precision auto` caches a measurement per machine: tests measure into a folder of their own (and every
# subprocess they start inherits it), never into the user's cache.
os.environ["MSLESION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mslesion-test-cache-")
atexit.register(shutil.rmtree, os.environ["MSLESION_CACHE_DIR"], ignore_errors=True)


def toy_patches(
    n_per_code: dict[int, int] | None = None, size: int = 11, n_patients: int = 12, seed: int = 0,
    scale: float = 1.0, channels: tuple[str, ...] = ("flair", "qsm", "mask"),
) -> PatchSet:
    """A separable toy set: demyelinating codes (3, 5) carry a bright QSM blob, remyelinating (2, 6) a dark one.

    FLAIR is noise and the mask a sphere, so only channel 'qsm' carries the class.
    """
    rng = np.random.default_rng(seed)
    n_per_code = n_per_code or {2: 30, 3: 20, 5: 20, 6: 10}
    labels = np.concatenate([np.full(n, code) for code, n in n_per_code.items()]).astype(np.int64)
    n = len(labels)
    grid = np.indices((size, size, size)) - size // 2
    sphere = (np.sqrt((grid**2).sum(0)) <= size / 4).astype(np.float32)
    images = rng.normal(0, 0.3, size=(n, len(channels), size, size, size)).astype(np.float32)
    sign = np.where(np.isin(labels, (3, 5)), 1.0, -1.0).astype(np.float32)
    for c, name in enumerate(channels):
        if name == "qsm":
            images[:, c] += sign[:, None, None, None] * sphere
        if name == "mask":
            images[:, c] = sphere
    images *= scale
    patients = np.asarray([f"sub-{i % n_patients:03d}" for i in range(n)], dtype=object)
    lesions = np.arange(n, dtype=np.int64) // n_patients
    return PatchSet(images, labels, patients, lesions, channels, (1.0, 1.0, 1.0), source="toy")


@pytest.fixture
def toy_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.h5"
    write_patches(path, toy_patches())
    return path
