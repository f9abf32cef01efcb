"""Training, evaluating and predicting from patch files larger than memory (`--in-memory`, `--shuffle-window`).

The sample order is a function of the seed and the window, never of whether the images are in memory: both modes
must give the same weights bit for bit on the CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_patches

import mslesion.data.patches as patches_module
from mslesion.config import EvaluateConfig, TrainConfig
from mslesion.data.patches import PatchReader, available_memory_bytes, read_patches, write_patches
from mslesion.errors import InputError
from mslesion.evaluate import evaluate
from mslesion.train import epoch_plan, epoch_windows, train
from mslesion.transforms import N_SYMMETRIES


@pytest.mark.parametrize("augment", ["full", "random", "none"])
def test_a_training_set_within_one_window_keeps_the_whole_epoch_shuffle(augment: str):
    items = np.repeat(np.arange(30), 2)[:50]
    windows = epoch_windows(items, augment, epoch=3, seed=7, window=50)
    expected = epoch_plan(items, augment, epoch=3, seed=7)
    assert len(windows) == 1
    assert torch.equal(windows[0].items, expected[0]) and torch.equal(windows[0].ks, expected[1])


@pytest.mark.parametrize("augment", ["full", "random"])
def test_windows_cover_the_epoch_once_within_their_bound_and_depend_only_on_seed_and_epoch(augment: str):
    items = np.repeat(np.arange(200), np.where(np.arange(200) % 3 == 0, 2, 1))  # oversampled, as training does
    windows = epoch_windows(items, augment, epoch=2, seed=5, window=32)
    assert len(windows) == -(-len(items) // 32)
    assert all(len(w.patches) <= 32 for w in windows)
    samples = torch.cat([w.items for w in windows])
    per_item = N_SYMMETRIES if augment == "full" else 1
    assert sorted(samples.tolist()) == sorted(np.repeat(items, per_item).tolist())  # every sample exactly once
    if augment == "full":  # each patch copy is seen in all 48 symmetries
        pairs = sorted(zip(samples.tolist(), torch.cat([w.ks for w in windows]).tolist(), strict=True))
        expected = sorted((int(i), k) for i in items for k in range(N_SYMMETRIES))
        assert pairs == expected
    again = epoch_windows(items, augment, epoch=2, seed=5, window=32)
    assert all(torch.equal(a.items, b.items) and torch.equal(a.ks, b.ks) for a, b in zip(windows, again, strict=True))
    for other in (epoch_windows(items, augment, epoch=2, seed=6, window=32),
                  epoch_windows(items, augment, epoch=3, seed=5, window=32)):
        assert not torch.equal(torch.cat([w.items for w in other]), samples)
    # the chunk order mixes the file: the first window is not just the first rows
    assert windows[0].patches.max() > 64


def test_the_reader_returns_what_an_in_memory_read_returns(tmp_path: Path):
    p = toy_patches(n_per_code={2: 20, 3: 10, 5: 10, 6: 5}, size=5)
    write_patches(tmp_path / "p.h5", p)
    memory = read_patches(tmp_path / "p.h5", ("mask", "qsm"))
    lazy = read_patches(tmp_path / "p.h5", ("mask", "qsm"), in_memory="no")
    assert isinstance(lazy.images, PatchReader) and lazy.images.shape == memory.images.shape
    for index in ([3, 1, 1, 44, 0], np.arange(45), [7], []):
        assert np.array_equal(lazy.images.read(np.asarray(index, dtype=np.int64)), memory.images[index])
    assert np.array_equal(lazy.images[5], memory.images[5])
    subset = lazy.images.subset(np.array([9, 2, 30]))
    assert np.array_equal(subset.read(np.arange(3)), memory.images[[9, 2, 30]])
    assert np.array_equal(lazy.images.with_channels([1]).read(np.arange(4)), memory.images[:4, 1:2])


def test_auto_streams_what_does_not_fit(tmp_path: Path, monkeypatch):
    write_patches(tmp_path / "p.h5", toy_patches(size=5))
    assert isinstance(read_patches(tmp_path / "p.h5", in_memory="auto").images, np.ndarray)
    monkeypatch.setattr(patches_module, "available_memory_bytes", lambda: 10_000)
    assert isinstance(read_patches(tmp_path / "p.h5", in_memory="auto").images, PatchReader)
    with pytest.raises(InputError, match="GiB in memory"):
        read_patches(tmp_path / "p.h5", in_memory="yes")


def test_a_nan_in_a_streamed_file_is_named_when_read(tmp_path: Path):
    p = toy_patches(size=5)
    p.images[7, 1, 2, 2, 2] = np.nan
    write_patches(tmp_path / "nan.h5", p)
    reader = read_patches(tmp_path / "nan.h5", in_memory="no").images
    reader.read(np.arange(5))  # the rows before it read fine
    with pytest.raises(InputError, match="NaN or infinite values.*row 7"):
        reader.read(np.arange(10))


def test_float16_storage_halves_the_file_and_rounds_to_11_bits(tmp_path: Path):
    p = toy_patches(size=11, scale=0.02)  # QSM-like values in ppm
    write_patches(tmp_path / "f32.h5", p)
    write_patches(tmp_path / "f16.h5", p, float16=True)
    back = read_patches(tmp_path / "f16.h5")
    assert back.images.dtype == np.float32
    np.testing.assert_allclose(back.images, p.images, rtol=2**-11, atol=2**-24)
    assert np.array_equal(read_patches(tmp_path / "f16.h5", in_memory="no").images.read(np.arange(len(p))),
                          back.images)
    assert (tmp_path / "f16.h5").stat().st_size < 0.75 * (tmp_path / "f32.h5").stat().st_size
    p.images[0, 0, 0, 0, 0] = 1e5
    with pytest.raises(InputError, match="float16"):
        write_patches(tmp_path / "big.h5", p, float16=True)


def _fake_cgroup_v1(root: Path, proc: Path, limit: int, usage: int, inactive: int) -> None:
    group = root / "memory" / "job" / "42"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (group / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (group / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {inactive}\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited at the root
    (root / "memory" / "memory.usage_in_bytes").write_text("1\n")
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("5:cpu:/\n4:memory:/job/42\n0::/\n")
    (proc / "meminfo").write_text("MemTotal: 100000000 kB\nMemFree: 1000 kB\nMemAvailable: 50000000 kB\n")


def test_available_memory_follows_the_process_cgroup_limits(tmp_path: Path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    _fake_cgroup_v1(root, proc, limit=8 * 2**30, usage=3 * 2**30, inactive=2**30)
    assert available_memory_bytes(proc, root) == 6 * 2**30  # limit − usage + reclaimable cache, < MemAvailable
    # cgroup v2: a limit on a parent of the process's group counts too
    root2, proc2 = tmp_path / "cgroup2", tmp_path / "proc2"
    (root2 / "user.slice" / "job").mkdir(parents=True)
    (root2 / "user.slice" / "job" / "memory.max").write_text("max\n")
    (root2 / "user.slice" / "job" / "memory.current").write_text("100\n")
    (root2 / "user.slice" / "memory.max").write_text(f"{2**30}\n")
    (root2 / "user.slice" / "memory.current").write_text(f"{2**29}\n")
    (root2 / "user.slice" / "memory.stat").write_text("anon 1\ninactive_file 1024\n")
    (proc2 / "self").mkdir(parents=True)
    (proc2 / "self" / "cgroup").write_text("0::/user.slice/job\n")
    (proc2 / "meminfo").write_text("MemAvailable: 50000000 kB\n")
    assert available_memory_bytes(proc2, root2) == 2**29 + 1024
    (proc2 / "self" / "cgroup").write_text("0::/\n")  # no limit anywhere: MemAvailable
    assert available_memory_bytes(proc2, root2) == 50000000 * 1024


def _weights_digest(run: Path) -> str:
    state = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    return hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in state.values())).hexdigest()


@pytest.mark.parametrize("augment", ["random", "full"])
def test_streamed_training_gives_the_weights_of_training_in_memory(tmp_path: Path, augment: str):
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(n_per_code={2: 12, 3: 8, 5: 8, 6: 4}, size=23, n_patients=8, seed=5))
    torch.set_num_threads(1)
    runs, metrics = {}, {}
    for mode in ("yes", "no"):
        cfg = TrainConfig(data=str(data), out=str(tmp_path / mode), channels=("qsm", "mask"), augment=augment,
                          epochs=2 if augment == "random" else 1, batch_size=8, val_fraction=0.2, seed=3,
                          precision="fp32", threads=1, in_memory=mode, shuffle_window=8)  # several windows
        runs[mode] = train(cfg, show_progress=False)
        assert json.loads((runs[mode] / "config.json").read_text())["in_memory"] == mode
        metrics[mode] = evaluate(EvaluateConfig(run=str(runs[mode]), in_memory=mode))
        for key in ("data", "model", "model_sha256"):  # where the results came from, not the results
            metrics[mode].pop(key)
    assert _weights_digest(runs["yes"]) == _weights_digest(runs["no"])
    assert metrics["yes"] == metrics["no"]
    history = [json.loads((runs[m] / "history.json").read_text()) for m in ("yes", "no")]
    assert [h["loss"] for h in history[0]] == [h["loss"] for h in history[1]]


def test_auto_records_what_it_chose_in_the_run_config(tmp_path: Path, monkeypatch):
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(n_per_code={2: 6, 3: 4, 5: 4, 6: 2}, size=23))
    # 16 patches of 1 channel (23³ float32: 48.7 kB each) need 0.78 MB: a window of 4 fits in 0.4 MB, all do not
    monkeypatch.setattr(patches_module, "available_memory_bytes", lambda: 500_000)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), channels=("qsm",), augment="none", epochs=1,
                      batch_size=4, precision="fp32", threads=1, shuffle_window=4)
    run = train(cfg, show_progress=False)
    assert json.loads((run / "config.json").read_text())["in_memory"] == "no"
    with pytest.raises(InputError, match="lower --shuffle-window"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "run2"), shuffle_window=10_000), show_progress=False)
