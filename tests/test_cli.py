"""Bad input ends with one clear line naming the file and the problem, exit code 2, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_patches

from mslesion.data.patches import write_patches


def mslesion(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mslesion", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_the_commands():
    result = mslesion("--help")
    assert result.returncode == 0
    for command in ("synth", "train", "evaluate", "demo"):
        assert command in result.stdout


def test_missing_data_file(tmp_path: Path):
    assert_one_line_error(mslesion("train", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")),
                          "missing.h5", "file not found")


def test_unknown_channel(tmp_path: Path, toy_file: Path):
    assert_one_line_error(mslesion("train", str(toy_file), "--channels", "qsm,t2star", "--out", str(tmp_path / "r")),
                          "toy.h5", "unknown channel t2star")


def test_nan_in_patches(tmp_path: Path):
    patches = toy_patches(size=5)
    patches.images[0, 0, 0, 0, 0] = np.nan
    write_patches(tmp_path / "nan.h5", patches)
    assert_one_line_error(mslesion("train", str(tmp_path / "nan.h5"), "--out", str(tmp_path / "r")),
                          "nan.h5", "NaN")


def test_empty_class(tmp_path: Path):
    write_patches(tmp_path / "one.h5", toy_patches(n_per_code={2: 6, 6: 3}, size=5))
    assert_one_line_error(mslesion("train", str(tmp_path / "one.h5"), "--out", str(tmp_path / "r")),
                          "one.h5", "demyelinating", "no samples")


def test_bad_option_value(tmp_path: Path, toy_file: Path):
    assert_one_line_error(mslesion("train", str(toy_file), "--augment", "sometimes", "--out", str(tmp_path / "r")),
                          "--augment")


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(mslesion("evaluate", str(run)), "model.pt", "corrupt")
    assert (run / "model.pt").read_bytes() == b"\x00garbage" * 100


def test_foreign_checkpoint(tmp_path: Path):
    import torch

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"weights": torch.zeros(3)}, run / "model.pt")
    assert_one_line_error(mslesion("evaluate", str(run)), "model.pt", "not an mslesion checkpoint")


def test_run_folder_without_checkpoint(tmp_path: Path):
    (tmp_path / "empty_run").mkdir()
    assert_one_line_error(mslesion("evaluate", str(tmp_path / "empty_run")), "model.pt", "not found")


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path: Path):
    write_patches(tmp_path / "toy.h5", toy_patches(n_per_code={2: 20, 3: 15, 5: 15, 6: 6}, size=23))
    run = tmp_path / "run"
    result = mslesion("train", str(tmp_path / "toy.h5"), "--channels", "qsm", "--augment", "none", "--epochs", "2",
                      "--batch-size", "16", "--out", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    assert (run / "metrics.json").exists()
    again = mslesion("train", str(tmp_path / "toy.h5"), "--channels", "qsm", "--out", str(run))
    assert_one_line_error(again, str(run), "--overwrite", "--resume")
    assert mslesion("evaluate", str(run)).returncode == 0


@pytest.mark.parametrize(("command", "config", "renamed"), [
    ("train", "TrainConfig", {"cv": "cv_folds", "fold": None}),  # --fold counts from 0 once --cv is given
    ("evaluate", "EvaluateConfig", {}),
    ("predict", "PredictConfig", {"min_volume": "min_volume_mm3", "voxel_size": "voxel_size_mm"}),
    ("extract", "ExtractConfig", {"min_volume": "min_volume_mm3", "voxel_size": "voxel_size_mm"}),
    ("ablate", "AblationConfig", {"cv": "cv_folds", "split": "scheme", "bootstrap": "n_bootstrap"}),
    ("report", "ReportConfig", {}),
    ("synth", "SynthConfig", {}),
])
def test_command_line_defaults_are_the_config_defaults(command: str, config: str, renamed: dict):
    import dataclasses

    from typer.main import get_command

    import mslesion.config as configs
    from mslesion.cli import app

    def settings(cfg) -> dict:  # nested blocks (train, finding) flattened; the outer setting wins
        inner = [settings(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                 if dataclasses.is_dataclass(getattr(cfg, f.name))]
        return {**{k: v for block in inner for k, v in block.items()},
                **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}}

    fields = settings(getattr(configs, config)())
    checked = 0
    for param in get_command(app).commands[command].params:
        name = renamed.get(param.name, param.name)
        if name not in fields or param.param_type_name == "argument":
            continue
        expected = fields[name]
        if isinstance(expected, tuple):  # channel sets are separated by ';', the channels of one set by ','
            expected = (";" if name == "channel_sets" else ",").join(map(str, expected))
        assert param.default == expected or str(param.default) == str(expected), (command, param.name)
        checked += 1
    assert checked >= 2
