"""The HDF5 patch contract: round trip, channel selection, class maps and every validation failure."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import toy_patches

from mslesion.data.patches import read_patches, write_patches
from mslesion.data.task import ClassMap, load_task
from mslesion.errors import InputError
from mslesion.paper import PAPER_CLASSES


def test_round_trip_keeps_everything(tmp_path: Path):
    patches = toy_patches(size=7)
    patches.split = np.asarray(["train"] * (len(patches) - 5) + ["test"] * 5, dtype=object)
    write_patches(tmp_path / "p.h5", patches)
    back = read_patches(tmp_path / "p.h5")
    assert np.array_equal(back.images, patches.images)
    assert back.images.dtype == np.float32
    assert np.array_equal(back.labels, patches.labels)
    assert list(back.patients) == list(patches.patients)
    assert np.array_equal(back.lesions, patches.lesions)
    assert back.channels == ("flair", "qsm", "mask")
    assert list(back.split) == list(patches.split)
    assert back.volume_mm3 is None and back.parts is None  # optional: written only when given
    with h5py.File(tmp_path / "p.h5") as f:
        assert f.attrs["format_version"] == 2
        assert list(f["images"].attrs["channels"]) == ["flair", "qsm", "mask"]


def test_per_lesion_volume_and_part_round_trip_and_follow_the_row_selection(tmp_path: Path):
    patches = toy_patches(size=7)
    patches.volume_mm3 = np.arange(len(patches), dtype=np.float64) * 1.5
    patches.parts = np.arange(len(patches)) % 3
    write_patches(tmp_path / "p.h5", patches)
    wanted = patches.labels != patches.labels[0]
    back = read_patches(tmp_path / "p.h5", labels_wanted=lambda labels: labels != patches.labels[0])
    np.testing.assert_array_equal(back.volume_mm3, patches.volume_mm3[wanted])
    np.testing.assert_array_equal(back.parts, patches.parts[wanted])
    patches.parts = patches.parts[:-1]
    with pytest.raises(InputError, match="part has"):
        write_patches(tmp_path / "q.h5", patches)


def test_a_format_1_file_still_reads():
    """tests/data/v1_patches.h5 was written by mslesion 0.1.0 (format 1: no volume_mm3, no part)."""
    fixture = Path(__file__).parent / "data" / "v1_patches.h5"
    with h5py.File(fixture) as f:
        assert f.attrs["format_version"] == 1 and "volume_mm3" not in f and "part" not in f
    patches = read_patches(fixture)
    assert len(patches) == 42 and patches.volume_mm3 is None and patches.parts is None


def test_channel_selection_in_requested_order(tmp_path: Path):
    patches = toy_patches(size=7)
    write_patches(tmp_path / "p.h5", patches)
    back = read_patches(tmp_path / "p.h5", ("mask", "flair"))
    assert back.channels == ("mask", "flair")
    assert np.array_equal(back.images[:, 0], patches.images[:, 2])
    assert np.array_equal(back.images[:, 1], patches.images[:, 0])


def test_class_map_parsing_and_targets():
    class_map = ClassMap.parse(PAPER_CLASSES)
    assert class_map.names == ("remyelinating", "demyelinating")
    assert class_map.targets(np.array([1, 2, 3, 4, 5, 6, 0])).tolist() == [-1, 0, 1, -1, 1, 0, -1]
    assert ClassMap.parse(class_map.spec()) == class_map


@pytest.mark.parametrize("spec", ["remyelinating=2,6", "a=1;a=2", "a=1,2;b=2", "a=x;b=1", "=1;b=2"])
def test_bad_class_maps_are_input_errors(spec):
    with pytest.raises(InputError):
        ClassMap.parse(spec)


def test_load_task_drops_unused_codes(tmp_path: Path):
    write_patches(tmp_path / "p.h5", toy_patches(n_per_code={1: 5, 2: 4, 3: 3, 4: 2, 0: 6}, size=5))
    task = load_task(tmp_path / "p.h5", ("qsm",), ClassMap.parse(PAPER_CLASSES))
    assert len(task) == 7
    assert task.images.shape == (7, 1, 5, 5, 5)
    assert sorted(task.labels.tolist()) == [2, 2, 2, 2, 3, 3, 3]


def write(tmp_path: Path, **changes) -> Path:
    patches = toy_patches(size=5)
    for key, value in changes.items():
        setattr(patches, key, value)
    path = tmp_path / "bad.h5"
    write_patches(path, patches)
    return path


def test_missing_file(tmp_path: Path):
    with pytest.raises(InputError, match="file not found") as info:
        read_patches(tmp_path / "nope.h5")
    assert "nope.h5" in str(info.value)


def test_not_hdf5(tmp_path: Path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_patches(tmp_path / "x.h5")


def test_nan_values(tmp_path: Path):
    images = toy_patches(size=5).images.copy()
    images[3, 1, 2, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_patches(write(tmp_path, images=images))


def test_unknown_channel(tmp_path: Path):
    with pytest.raises(InputError, match="unknown channel t1"):
        read_patches(write(tmp_path), ("qsm", "t1"))


def test_wrong_shape(tmp_path: Path):
    path = tmp_path / "shape.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((4, 5, 5, 5), np.float32)).attrs["channels"] = ["qsm"]
        for key in ("label", "lesion"):
            f.create_dataset(key, data=np.zeros(4, np.int64))
        f.create_dataset("patient", data=np.array(["a"] * 4, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(InputError, match=r"\[N, C, D, H, W\]"):
        read_patches(path)


def test_wrong_dtype(tmp_path: Path):
    path = tmp_path / "dtype.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((4, 1, 5, 5, 5), np.float64)).attrs["channels"] = ["qsm"]
        for key in ("label", "lesion"):
            f.create_dataset(key, data=np.zeros(4, np.int64))
        f.create_dataset("patient", data=np.array(["a"] * 4, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(InputError, match="float32"):
        read_patches(path)


def test_missing_dataset(tmp_path: Path):
    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((4, 1, 5, 5, 5), np.float32))
    with pytest.raises(InputError, match="missing dataset 'label'"):
        read_patches(path)


def test_empty_class(tmp_path: Path):
    path = tmp_path / "p.h5"
    write_patches(path, toy_patches(n_per_code={2: 5, 6: 4, 1: 3}, size=5))
    with pytest.raises(InputError, match="class 'demyelinating'.*no samples"):
        load_task(path, ("qsm",), ClassMap.parse(PAPER_CLASSES))


def test_label_outside_class_map(tmp_path: Path):
    path = tmp_path / "p.h5"
    write_patches(path, toy_patches(n_per_code={2: 5, 3: 4, 9: 3}, size=5))
    with pytest.raises(InputError, match=r"labels \[9\]"):
        load_task(path, ("qsm",), ClassMap.parse(PAPER_CLASSES))


def test_interrupted_write_keeps_the_old_file(tmp_path: Path):
    path = tmp_path / "p.h5"
    write_patches(path, toy_patches(size=5))
    broken = toy_patches(size=5)
    broken.channels = ("only-one-name",)
    with pytest.raises(InputError):
        write_patches(path, broken)
    assert len(read_patches(path)) == len(toy_patches(size=5))
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]


def test_an_empty_patch_file_round_trips(tmp_path: Path):
    patches = toy_patches(n_per_code={2: 0}, size=5)
    write_patches(tmp_path / "empty.h5", patches)
    back = read_patches(tmp_path / "empty.h5")
    assert len(back) == 0 and back.images.shape == (0, 3, 5, 5, 5)


def test_task_with_channels_equals_loading_those_channels(tmp_path: Path):
    write_patches(tmp_path / "p.h5", toy_patches(size=5))
    class_map = ClassMap.parse(PAPER_CLASSES)
    subset = load_task(tmp_path / "p.h5", ("flair", "qsm", "mask"), class_map).with_channels(("mask", "qsm"))
    direct = load_task(tmp_path / "p.h5", ("mask", "qsm"), class_map)
    assert subset.channels == ("mask", "qsm")
    assert np.array_equal(subset.images, direct.images) and subset.images.flags["C_CONTIGUOUS"]
    assert np.array_equal(subset.targets, direct.targets)
