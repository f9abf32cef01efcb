"""Starter models: builtin:<name> models, `mslesion models`, and fine-tuning with train --init."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import toy_patches
from test_extract import run_cli, write_subject
from test_predict import make_run

from mslesion import runs
from mslesion.config import TrainConfig
from mslesion.data.patches import write_patches
from mslesion.data.task import load_task
from mslesion.errors import InputError
from mslesion.model import LesionNet
from mslesion.train import start_from, train


@pytest.fixture
def builtin(tmp_path: Path, monkeypatch) -> Path:
    """A package folder of built-in models holding one (untrained) binary flair,qsm,mask model."""
    root = tmp_path / "builtin"
    make_run(root / "toy-binary")
    (root / runs.BUILTIN_INDEX).write_text(json.dumps({"models": [{
        "name": "toy-binary", "version": 1, "channels": "flair,qsm,mask", "task": "binary",
        "classes": "remyelinating=2,6;demyelinating=3,5", "training_data": "nothing", "test": "none"}]}))
    monkeypatch.setattr(runs, "builtin_root", lambda: root)
    return root


def test_predict_with_a_builtin_model_records_its_name_version_and_sha(builtin, tmp_path, monkeypatch, capsys):
    s = write_subject(tmp_path / "s", "sub-1")
    out = tmp_path / "pred"
    code, text = run_cli(["predict", "builtin:toy-binary", "--mask", s.mask, "--flair", s.flair, "--qsm", s.qsm,
                          "--out", out, "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    record = json.loads((out / "predict_config.json").read_text())
    assert record["model"] == "builtin:toy-binary" and record["builtin_version"] == 1
    assert record["model_sha256"] == runs.file_sha256(builtin / "toy-binary" / "model.pt")
    assert record["precision_used"] in ("fp32", "bf16") and record["mslesion_version"]


def test_an_unknown_builtin_model_names_the_available_ones(builtin, tmp_path, monkeypatch, capsys):
    s = write_subject(tmp_path / "s", "sub-1")
    code, text = run_cli(["predict", "builtin:nope", "--mask", s.mask, "--flair", s.flair, "--qsm", s.qsm,
                          "--out", tmp_path / "pred", "--quiet"], monkeypatch, capsys)
    assert code == 2 and "built-in model 'nope'" in text and "toy-binary" in text
    assert not (tmp_path / "pred").exists()


def test_models_lists_the_builtin_models(builtin, monkeypatch, capsys):
    code, text = run_cli(["models"], monkeypatch, capsys)
    assert code == 0 and "toy-binary" in text and "simulated data only" in text


def test_the_package_ships_the_models_its_index_names():
    for card in runs.builtin_models():
        trained = runs.load_trained(f"builtin:{card['name']}")
        assert ",".join(trained.channels) == card["channels"] and trained.class_map.spec() == card["classes"]


@pytest.mark.parametrize("norm", ["refit", "keep"])
def test_init_copies_the_starters_weights_and_chosen_normalisation(tmp_path: Path, norm: str):
    source = make_run(tmp_path / "source", seed=3)
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(size=23))
    task = load_task(data, ("flair", "qsm", "mask"), "remyelinating=2,6;demyelinating=3,5")
    model = LesionNet(3, 2, 23)
    model.mean_image.fill_(0.25)  # as if estimated on the new data
    model.input_scale.fill_(2.0)
    start_from(model, TrainConfig(init=str(source), init_norm=norm), task)
    starter = runs.load_trained(source).model.state_dict()
    for key, value in model.state_dict().items():
        if key in ("mean_image", "input_scale"):
            assert torch.equal(value, starter[key]) == (norm == "keep"), key
        else:
            assert torch.equal(value, starter[key]), key


def test_init_with_other_classes_starts_the_classifier_afresh(tmp_path: Path):
    source = make_run(tmp_path / "source", seed=3)
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(size=23))
    task = load_task(data, ("flair", "qsm", "mask"), "bright=3,5;dark=2;other=6")
    model = LesionNet(3, 3, 23)
    start_from(model, TrainConfig(init=str(source)), task)
    starter = runs.load_trained(source).model.state_dict()
    assert torch.equal(model.features[0][0].weight, starter["features.0.0.weight"])
    assert model.classifier.weight.shape[0] == 3


def test_init_of_another_architecture_names_the_starters_one(tmp_path: Path):
    source = make_run(tmp_path / "source", arch="compact")
    assert runs.load_trained(source).model.arch == "compact"  # rebuilt from the stored config
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(size=23))
    out = tmp_path / "run"
    with pytest.raises(InputError, match="is a 'compact' network.*give --arch compact"):
        train(TrainConfig(data=str(data), out=str(out), init=str(source), epochs=1), show_progress=False)
    assert not out.exists()


def test_init_with_other_channels_fails_before_anything_is_written(tmp_path: Path):
    source = make_run(tmp_path / "source", channels=("flair", "mask"))
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(size=23))
    out = tmp_path / "run"
    with pytest.raises(InputError, match="trained on channels flair,mask"):
        train(TrainConfig(data=str(data), out=str(out), channels=("flair", "qsm"), init=str(source), epochs=1),
              show_progress=False)
    assert not out.exists()
    shutil.rmtree(source)
    with pytest.raises(InputError, match="not found"):
        train(TrainConfig(data=str(data), out=str(out), channels=("flair", "qsm"), init=str(source), epochs=1),
              show_progress=False)
