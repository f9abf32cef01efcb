"""The trainer: schedule, epoch plans, learning (in any input unit), determinism and resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_patches

import mslesion.train as train_module
from mslesion.config import EvaluateConfig, TrainConfig
from mslesion.data.patches import write_patches
from mslesion.errors import InputError
from mslesion.evaluate import evaluate
from mslesion.train import epoch_plan, input_normalisation, lr_at, oversampled, train
from mslesion.transforms import apply_symmetry


def test_paper_learning_rate_schedule():
    cfg = TrainConfig()
    rates = [lr_at(epoch, cfg) for epoch in range(1, 16)]
    assert rates[:5] == pytest.approx([0.01] * 5)
    assert rates[5:9] == pytest.approx([0.00316] * 4, rel=1e-3)
    assert rates[9:] == pytest.approx([0.001] * 6, rel=1e-3)


def test_full_plan_visits_every_patch_in_all_48_orientations_once():
    items = np.array([3, 5, 5, 9])  # 5 is oversampled
    patches, symmetries = epoch_plan(items, "full", epoch=1, seed=0)
    pairs = sorted(zip(patches.tolist(), symmetries.tolist(), strict=True))
    expected = sorted((i, k) for i in items.tolist() for k in range(48))
    assert pairs == expected


def test_plans_are_seeded_and_change_between_epochs():
    items = np.arange(50)
    a1, k1 = epoch_plan(items, "random", 1, seed=4)
    a1b, k1b = epoch_plan(items, "random", 1, seed=4)
    a2, _ = epoch_plan(items, "random", 2, seed=4)
    assert torch.equal(a1, a1b) and torch.equal(k1, k1b)
    assert not torch.equal(a1, a2)
    assert sorted(a1.tolist()) == list(range(50))
    none_items, none_k = epoch_plan(items, "none", 1, seed=4)
    assert (none_k == 0).all() and sorted(none_items.tolist()) == list(range(50))


@pytest.mark.parametrize(("augment", "group"), [("random", 48), ("flips", 8), ("none", 1)])
def test_one_symmetry_modes_draw_from_their_group(augment, group):
    patches, ks = epoch_plan(np.arange(2000), augment, 1, seed=3)
    assert sorted(patches.tolist()) == list(range(2000))  # every patch once
    assert set(ks.tolist()) == set(range(group))  # the whole group, nothing outside it


def test_flips_never_exchange_axes():
    # an anatomical frame's axes keep their meaning: each flip symmetry maps every axis onto itself
    _, ks = epoch_plan(np.arange(200), "flips", 1, seed=0)
    volume = torch.arange(2 * 3 * 4).view(2, 3, 4)  # unequal sides: an axis exchange would change the shape
    for k in set(ks.tolist()):
        assert apply_symmetry(volume, k).shape == volume.shape
        assert torch.equal(symmetry_matrix_abs(k), torch.eye(3, dtype=torch.long))


def symmetry_matrix_abs(k: int) -> torch.Tensor:
    from mslesion.transforms import symmetry_matrix

    return torch.as_tensor(abs(symmetry_matrix(k)))


@pytest.mark.parametrize(("augment", "group"), [("none", 1), ("flips", 8), ("full", 48)])
def test_batch_norm_pass_sees_the_orientations_training_saw(augment, group, monkeypatch):
    # the population statistics must be those of the inputs the net trained on: no rotations for `none`
    from mslesion import train as train_module

    seen: list[int] = []
    monkeypatch.setattr(train_module, "patch_batch", lambda images, idx, ks: seen.extend(ks.tolist()))
    list(train_module.population_batches(torch.zeros(600, 1, 3, 3, 3), np.arange(600), 50, 0, augment))
    assert len(seen) == 600 and set(seen) == set(range(group))


def test_oversampling_doubles_the_first_class():
    train_idx = np.array([0, 1, 2, 3])
    targets = np.array([0, 1, 0, 1])
    assert sorted(oversampled(train_idx, targets, (2, 1)).tolist()) == [0, 0, 1, 2, 2, 3]


@pytest.mark.parametrize(("augment", "group"), [("none", 1), ("random", 48), ("flips", 8)])
def test_input_normalisation_equals_the_two_pass_definition(augment, group):
    # one pass (Σx, Σx²) must equal: mean image (symmetrised when augmenting), then 1/std about it per channel
    generator = torch.Generator().manual_seed(0)
    scales, offsets = torch.tensor([0.02, 3.0]).view(1, 2, 1, 1, 1), torch.tensor([0.5, -1.0]).view(1, 2, 1, 1, 1)
    images = torch.randn(40, 2, 7, 7, 7, generator=generator) * scales + offsets
    items = np.r_[np.arange(40), np.arange(10)]  # oversampled items count twice
    mean, scale = input_normalisation(images, items, augment)
    seen = images[torch.as_tensor(items)].double()
    expected_mean = seen.mean(0)
    expected_mean = torch.stack([apply_symmetry(expected_mean, k) for k in range(group)]).mean(0)
    expected_scale = 1 / (seen - expected_mean).pow(2).mean(dim=(0, 2, 3, 4)).sqrt()
    assert torch.allclose(mean.double(), expected_mean, atol=1e-6)
    assert torch.allclose(scale.flatten().double(), expected_scale, rtol=1e-5)


def toy_config(tmp_path: Path, name: str, scale: float = 1.0, **changes) -> TrainConfig:
    data = tmp_path / f"toy_{scale}.h5"
    if not data.exists():
        write_patches(data, toy_patches(n_per_code={2: 40, 3: 30, 5: 30, 6: 10}, size=23, scale=scale))
    settings = dict(data=str(data), out=str(tmp_path / name), channels=("flair", "qsm"), augment="random",
                    epochs=3, batch_size=32, seed=0, threads=2)
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [0.01, 1000.0])
def test_learns_a_separable_set_in_ppm_or_ppb_units(tmp_path: Path, scale: float):
    # ppm-scale inputs (~0.01) once made running-average batch norm collapse the net to one class.
    run = train(toy_config(tmp_path, "run", scale=scale), show_progress=False)
    metrics = evaluate(EvaluateConfig(run=str(run)))
    assert metrics["n"] == 33  # per code: floor(70%) of 40, 30, 30, 10 to train
    assert metrics["accuracy"] >= 0.9 > metrics["majority_baseline_accuracy"] + 0.2
    assert min(metrics["true_positive_rate"].values()) >= 0.8


def test_evaluate_reuses_a_given_task_only_when_it_is_the_runs_own(tmp_path: Path, monkeypatch):
    # demo and ablate hand their loaded task to evaluate instead of reading the file again per run
    import mslesion.evaluate as evaluate_module
    from mslesion.data.task import load_task

    cfg = toy_config(tmp_path, "run", epochs=1)
    run = train(cfg, show_progress=False)
    own = load_task(cfg.data, cfg.channels, cfg.classes)
    other = load_task(cfg.data, ("qsm",), cfg.classes)
    expected = evaluate(EvaluateConfig(run=str(run)))
    loads = []
    monkeypatch.setattr(evaluate_module, "load_task", lambda *a, **k: loads.append(a) or load_task(*a, **k))
    assert evaluate(EvaluateConfig(run=str(run)), own) == expected
    assert loads == []
    assert evaluate(EvaluateConfig(run=str(run)), other) == expected  # other channels: the file is read
    assert len(loads) == 1 and loads[0][1] == cfg.channels


def test_evaluate_tta_averages_over_the_models_symmetry_group(tmp_path: Path):
    from mslesion.data.task import load_task
    from mslesion.inference import predict_probabilities
    from mslesion.runs import load_trained, read_predictions

    cfg = toy_config(tmp_path, "run", epochs=1, augment="flips")
    run = train(cfg, show_progress=False)
    plain = evaluate(EvaluateConfig(run=str(run)))
    averaged = evaluate(EvaluateConfig(run=str(run), tta=True))
    assert (plain["tta_symmetries"], averaged["tta_symmetries"]) == (1, 8)
    trained, task = load_trained(run), load_task(cfg.data, cfg.channels, cfg.classes)
    test = np.asarray([r["index"] for r in json.loads((run / "split.json").read_text())["test"]])
    expected, _ = predict_probabilities(trained.model, task.images[test], tta=True, symmetries=8,
                                        temperature=trained.temperature)
    written = read_predictions(run / "predictions.csv")
    np.testing.assert_array_equal(written.index, test)
    np.testing.assert_allclose(written.probabilities, expected, atol=2e-6)  # written with 6 decimals
    none = train(toy_config(tmp_path, "none", epochs=1, augment="none"), show_progress=False)
    with pytest.raises(InputError, match="--augment none"):
        evaluate(EvaluateConfig(run=str(none), tta=True))


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, monkeypatch):
    uninterrupted = train(toy_config(tmp_path, "a", epochs=3), show_progress=False)
    metrics_a = evaluate(EvaluateConfig(run=str(uninterrupted)))

    real_epoch = train_module.train_epoch
    calls = {"n": 0}

    def interrupted_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    cfg_b = toy_config(tmp_path, "b", epochs=3)
    monkeypatch.setattr(train_module, "train_epoch", interrupted_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, show_progress=False)
    assert json.loads((Path(cfg_b.out) / "history.json").read_text())[-1]["epoch"] == 2
    assert not (Path(cfg_b.out) / "model.pt").exists()
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    resumed = train(cfg_b, resume=True, show_progress=False)
    metrics_b = evaluate(EvaluateConfig(run=str(resumed)))

    state_a = torch.load(Path(uninterrupted) / "model.pt", weights_only=True)["state_dict"]
    state_b = torch.load(Path(resumed) / "model.pt", weights_only=True)["state_dict"]
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for key in ("accuracy", "roc_auc", "confusion_matrix"):
        assert metrics_a[key] == metrics_b[key]
    assert (Path(uninterrupted) / "split.json").read_text() == (Path(resumed) / "split.json").read_text()


def test_resume_refuses_changed_settings(tmp_path: Path):
    cfg = toy_config(tmp_path, "c", epochs=1)
    train(cfg, show_progress=False)
    with pytest.raises(InputError, match="settings differ.*lr"):
        train(toy_config(tmp_path, "c", epochs=1, lr=0.5), resume=True, show_progress=False)


def test_run_folder_is_self_describing(tmp_path: Path):
    run = Path(train(toy_config(tmp_path, "d", epochs=1, val_fraction=0.2, select="val_auc"), show_progress=False))
    for name in ("config.json", "split.json", "checkpoint.pt", "model.pt", "history.json", "train.log"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["channels"] == ["flair", "qsm"] and config["select"] == "val_auc"
    split = json.loads((run / "split.json").read_text())
    indices = [row["index"] for part in ("train", "val", "test") for row in split[part]]
    assert len(indices) == len(set(indices)) == 110
    history = json.loads((run / "history.json").read_text())
    assert {"loss", "accuracy", "val_auc", "val_loss", "lr"} <= set(history[0])


@pytest.mark.slow
def test_zscore_learns_a_small_unit_channel_beside_a_loud_one(tmp_path: Path):
    # QSM in ppm (signal ±0.01) beside FLAIR-like noise ~1000× larger: plain zero-centring lets Adam move the
    # loud channel's weights as fast as the quiet one's: with input_norm="zerocenter" this set reaches only
    # 79% after 3 epochs (measured), with "zscore" (the default) it passes.
    patches = toy_patches(n_per_code={2: 40, 3: 30, 5: 30, 6: 10}, size=23)
    patches.images[:, 1] *= 0.01
    patches.images[:, 0] *= 30.0
    write_patches(tmp_path / "units.h5", patches)
    cfg = toy_config(tmp_path, "z", data=str(tmp_path / "units.h5"), epochs=3)
    metrics = evaluate(EvaluateConfig(run=str(train(cfg, show_progress=False))))
    assert metrics["accuracy"] >= 0.9
    scale = torch.load(Path(cfg.out) / "model.pt", weights_only=True)["state_dict"]["input_scale"].flatten()
    assert scale[1] > 50 * scale[0]  # the quiet channel is scaled up


def test_evaluate_with_abstention_counts_uncertain_lesions(tmp_path: Path):
    run = train(toy_config(tmp_path, "e", epochs=1), show_progress=False)
    plain = evaluate(EvaluateConfig(run=str(run)))
    abstaining = evaluate(EvaluateConfig(run=str(run), abstain=0.9))["abstention"]
    n = plain["n"]
    assert abstaining["n_uncertain"] + round(abstaining["coverage"] * n) == n
    assert 0.0 <= abstaining["coverage"] <= 1.0
    with pytest.raises(Exception, match="abstain"):
        EvaluateConfig(run=str(run), abstain=1.5)


def test_val_every_validates_only_those_epochs_and_the_last(tmp_path: Path):
    run = Path(train(toy_config(tmp_path, "v", epochs=5, val_fraction=0.2, select="val_auc", val_every=2),
                     show_progress=False))
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history if "val_auc" in h] == [2, 4, 5]
    validated = [h for h in history if "val_auc" in h]
    best = max(validated, key=lambda h: h["val_auc"])  # first of equals, as is_better keeps the earlier
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["selected_epoch"] == best["epoch"]
    with pytest.raises(InputError, match="val-every"):
        toy_config(tmp_path, "w", val_every=0)


def test_resume_accepts_a_checkpoint_older_than_a_setting(tmp_path: Path, monkeypatch):
    """A checkpoint written before a setting existed resumes when the setting has its default value."""
    cfg = toy_config(tmp_path, "old", epochs=2)
    real_epoch, calls = train_module.train_epoch, {"n": 0}

    def interrupted_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    path = Path(cfg.out) / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["val_every"]  # as written by a version without the setting
    torch.save(checkpoint, path)
    assert (Path(train(cfg, resume=True, show_progress=False)) / "model.pt").exists()
    with pytest.raises(InputError, match="val_every"):
        train(toy_config(tmp_path, "old", epochs=2, val_every=3), resume=True, show_progress=False)


@pytest.mark.parametrize("hours_away", [True, False])
def test_one_plain_line_per_epoch_and_a_warning_when_training_will_take_hours(tmp_path, capsys, monkeypatch,
                                                                             hours_away):
    """Output to a file (not a terminal): one flushed line per epoch. The first steps are timed and the rest of the
    protocol extrapolated: past LONG_TRAINING_S, one warning line on stderr (set to 0 s here to stand for hours)."""
    if hours_away:
        monkeypatch.setattr(train_module, "LONG_TRAINING_S", 0.0)
    train(toy_config(tmp_path, "plain", epochs=2, batch_size=8), show_progress=True)  # ≥ 6 steps per epoch
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"epoch {epoch}/2: \d+/\d+ in [\d.]+ s  loss [\d.]+  acc [\d.]+", line), line
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    if hours_away:
        assert len(warnings) == 1 and captured.err.count("\n") == 1
        assert re.search(r"samples/s .* will take about [\d.]+ h; quicker: .*fewer --epochs", warnings[0])
        assert warnings[0] in (tmp_path / "plain" / "train.log").read_text()
    else:
        assert warnings == []


def test_train_log_is_written_when_the_host_program_configured_logging(tmp_path, monkeypatch):
    # logging.config.dictConfig (import-linter, many applications) disables every logger that already exists
    monkeypatch.setattr(train_module.log, "disabled", True)
    train(toy_config(tmp_path, "hosted", epochs=1), show_progress=False)
    assert "epoch 1" in (tmp_path / "hosted" / "train.log").read_text()


def test_evaluate_on_other_data_reports_a_missing_class_instead_of_refusing(tmp_path: Path):
    cfg = toy_config(tmp_path, "run", epochs=1, classes="iso=2;prl=3;bright=5,6")
    run = train(cfg, show_progress=False)
    other = tmp_path / "no_bright.h5"  # an external test set without class 'bright' (codes 5 and 6)
    write_patches(other, toy_patches(n_per_code={2: 8, 3: 8}, size=23, seed=3))
    metrics = evaluate(EvaluateConfig(run=str(run), data=str(other)))
    assert metrics["n"] == 16 and metrics["n_per_class"] == {"iso": 8, "prl": 8, "bright": 0}
    assert np.isnan(metrics["true_positive_rate"]["bright"])
    assert 0 <= metrics["roc_auc"] <= 1  # the macro AUC of the classes present
    nothing = tmp_path / "unlabelled.h5"
    write_patches(nothing, toy_patches(n_per_code={0: 4}, size=23))
    with pytest.raises(InputError, match="no lesion has a label"):
        evaluate(EvaluateConfig(run=str(run), data=str(nothing)))
    with pytest.raises(InputError, match="has no samples"):  # training still needs every class
        train(toy_config(tmp_path, "run2", epochs=1, data=str(other), classes="iso=2;prl=3;bright=5,6"),
              show_progress=False)
