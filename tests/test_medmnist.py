"""import-medmnist: MedMNIST-3D-style npz → HDF5 patch file with the official split and shifted label codes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mslesion.cli import app, main
from mslesion.config import MedMNISTImportConfig, TrainConfig
from mslesion.data.medmnist import import_medmnist, medmnist_patches, read_npz_splits
from mslesion.data.patches import read_patches
from mslesion.data.task import ClassMap, load_task
from mslesion.errors import InputError
from mslesion.train import resolve_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist3d"
# The data README (shared/data/medmnist3d/SOURCE.md): sizes and positives per split.
README_COUNTS = {
    "adrenalmnist3d": {"train": (1188, 259), "val": (98, 22), "test": (298, 69)},
    "vesselmnist3d": {"train": (1335, 150), "val": (191, 22), "test": (382, 43)},
}


def toy_npz(path: Path, sizes=(12, 4, 6), size: int = 22, seed: int = 0, **override) -> Path:
    """A tiny MedMNIST-like npz: uint8 cubes, labels [N, 1] with both classes in every split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, n in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{name}_images"] = rng.integers(0, 256, size=(n, size, size, size), dtype=np.uint8)
        arrays[f"{name}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def convert(tmp_path: Path, npz: Path, **kwargs) -> Path:
    out = tmp_path / "out.h5"
    import_medmnist(MedMNISTImportConfig(source=str(npz), out=str(out), **kwargs))
    return out


def test_import_keeps_split_shifts_labels_and_scales(tmp_path: Path) -> None:
    npz = toy_npz(tmp_path / "toy.npz")
    raw = np.load(npz)
    out = convert(tmp_path, npz, channel_name="ct", class_names=("normal", "abnormal"))
    patches = read_patches(out)
    assert patches.images.shape == (22, 1, 22, 22, 22) and patches.images.dtype == np.float32
    assert patches.channels == ("ct",)
    assert list(patches.split) == ["train"] * 12 + ["val"] * 4 + ["test"] * 6
    expected = np.concatenate([raw[f"{s}_labels"][:, 0] for s in ("train", "val", "test")]).astype(np.int64) + 1
    np.testing.assert_array_equal(patches.labels, expected)
    np.testing.assert_allclose(patches.images[12:16, 0], raw["val_images"] / 255.0, atol=1e-6)
    assert patches.attrs["class_map"] == "normal=1;abnormal=2"
    assert (patches.attrs["intensity_offset"], patches.attrs["intensity_scale"]) == (0.0, 255.0)
    assert len(set(patches.patients)) == len(patches)  # one id per sample: MedMNIST has no patients


def test_float_images_scaled_by_global_min_max(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = {f"{s}_images": rng.normal(5, 2, size=(n, 22, 22, 22)) for s, n in (("train", 6), ("val", 2), ("test", 4))}
    patches = read_patches(convert(tmp_path, toy_npz(tmp_path / "f.npz", sizes=(6, 2, 4), size=22, **images)))
    assert patches.images.min() == pytest.approx(0.0, abs=1e-6) and patches.images.max() == pytest.approx(1.0)
    low = min(v.min() for v in images.values())
    np.testing.assert_allclose(patches.images[0, 0] * patches.attrs["intensity_scale"] + low,
                               images["train_images"][0], rtol=1e-5)


def test_round_trip_predefined_split_through_load_task(tmp_path: Path) -> None:
    out = convert(tmp_path, toy_npz(tmp_path / "toy.npz"), channel_name="mra")
    class_map = ClassMap.parse(read_patches(out).attrs["class_map"])
    assert class_map.names == ("class0", "class1")
    task = load_task(out, ("mra",), class_map)
    split = resolve_split(task, TrainConfig(data=str(out), channels=("mra",), classes=class_map.spec(),
                                            split="predefined", select="val_auc"))
    assert {k: len(v) for k, v in split.items()} == {"train": 12, "val": 4, "test": 6}
    np.testing.assert_array_equal(task.targets[split["test"]], np.arange(6) % 2)


def test_missing_val_split_is_allowed(tmp_path: Path) -> None:
    out = convert(tmp_path, toy_npz(tmp_path / "t.npz", val_images=None, val_labels=None))
    assert set(read_patches(out).split) == {"train", "test"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"test_labels": None}, "missing arrays test_labels"),
        ({"train_images": np.zeros((12, 6, 6), np.uint8)}, "must be [N, D, H, W]"),
        ({"train_images": np.zeros((12, 6, 6, 5), np.uint8)}, "must be cubic"),
        ({"val_labels": np.zeros((5, 1), np.uint8)}, "has 5 entries"),
        ({"test_labels": np.zeros((6, 3), np.uint8)}, "multi-label"),
        ({"test_labels": np.full((6, 1), -1)}, "negative"),
        ({"test_labels": np.full((6, 1), 0.5)}, "integer class indices"),
        ({"val_images": np.full((4, 22, 22, 22), np.nan)}, "NaN"),
        ({"test_images": np.zeros((6, 5, 5, 5), np.uint8)}, "shapes differ"),
    ],
)
def test_bad_npz_is_input_error(tmp_path: Path, override: dict, message: str) -> None:
    npz = toy_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        convert(tmp_path, npz)
    assert not (tmp_path / "out.h5").exists()


def test_wrong_class_name_count_and_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="3 class names"):
        convert(tmp_path, toy_npz(tmp_path / "t.npz"), class_names=("a", "b", "c"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable npz"):
        read_npz_splits(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="class name"):
        MedMNISTImportConfig(class_names=("a;b", "c"))


def test_cli_prints_class_map_and_exits_2_on_bad_input(tmp_path: Path, monkeypatch, capsys) -> None:
    npz = toy_npz(tmp_path / "toy.npz")
    runner = CliRunner()
    result = runner.invoke(app, ["import-medmnist", str(npz), "--out", str(tmp_path / "o.h5"),
                                 "--class-names", "normal,abnormal", "--channel-name", "ct"])
    assert result.exit_code == 0, result.output
    assert "normal=1;abnormal=2" in result.output
    assert read_patches(tmp_path / "o.h5").channels == ("ct",)
    monkeypatch.setattr(sys, "argv", ["mslesion", "import-medmnist", str(tmp_path / "missing.npz"),
                                      "--out", str(tmp_path / "x.h5")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_real_medmnist_matches_data_readme(name: str) -> None:
    npz = SHARED / f"{name}.npz"
    if not npz.exists():
        pytest.skip(f"{npz} not staged")
    patches = medmnist_patches(MedMNISTImportConfig(source=str(npz)))  # the conversion, without the gzip write
    assert patches.patch_shape == (28, 28, 28)
    assert patches.images.min() >= 0.0 and patches.images.max() <= 1.0
    for split, (n, positives) in README_COUNTS[name].items():
        rows = patches.split == split
        assert (rows.sum(), (patches.labels[rows] == 2).sum()) == (n, positives)
    assert set(np.unique(patches.labels)) == {1, 2}
    assert patches.attrs["class_map"] == {"adrenalmnist3d": "normal=1;hyperplasia=2",
                                          "vesselmnist3d": "vessel=1;aneurysm=2"}[name]
