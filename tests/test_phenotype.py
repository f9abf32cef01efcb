"""The phenotype task, its evaluation, out-of-distribution flags and whole-subject calls."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mslesion import paper
from mslesion.config import EvaluateConfig, TrainConfig
from mslesion.data.patches import PatchSet, write_patches
from mslesion.data.task import PHENOTYPE, ClassMap, load_task
from mslesion.errors import InputError
from mslesion.evaluate import evaluate
from mslesion.metrics import phenotype_metrics, volume_matched
from mslesion.ood import FEATURE_FLAG, VOLUME_FLAG, intensity_flag, ood_flags
from mslesion.runs import load_trained
from mslesion.train import loss_weights, train

SIZE = 23


def six_class_patches(n_per_code: dict[int, int], n_patients: int = 10, seed: int = 0) -> PatchSet:
    """Each Table 1 code its own QSM pattern (core or rim, bright or dark); class 1 a random mixture of two other
    codes' patterns, so that some of it looks like a classified lesion (the gate cannot be perfect)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, code) for code, n in n_per_code.items()]).astype(np.int64)
    radius = np.sqrt(((np.indices((SIZE,) * 3) - SIZE // 2) ** 2).sum(0))
    core, rim = (radius <= 4).astype(np.float32), ((radius > 4) & (radius <= 6)).astype(np.float32)
    look = {2: 0 * core, 3: rim, 4: -rim, 5: core, 6: -core}
    images = rng.normal(0, 0.3, (len(labels), 3, SIZE, SIZE, SIZE)).astype(np.float32)
    for n, code in enumerate(labels):
        if code == 1:
            a, b = rng.choice([2, 3, 4, 5, 6], 2, replace=False)
            images[n, 1] += 0.5 * look[a] + 0.5 * look[b]
        else:
            images[n, 1] += look[int(code)]
        images[n, 2] = core + rim
    patients = np.asarray([f"sub-{i % n_patients:02d}" for i in range(len(labels))], dtype=object)
    volumes = rng.lognormal(3.5, 1.0, len(labels))
    return PatchSet(images, labels, patients, np.arange(len(labels)) // n_patients, ("flair", "qsm", "mask"),
                    volume_mm3=volumes)


@pytest.fixture(scope="module")
def phenotype_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phenotype")
    write_patches(folder / "six.h5", six_class_patches({1: 60, 2: 24, 3: 24, 4: 12, 5: 24, 6: 24}))
    cfg = TrainConfig(data=str(folder / "six.h5"), out=str(folder / "run"), task="phenotype", augment="random",
                      epochs=4, batch_size=32, lr=0.003, lr_milestones=(3,), val_fraction=0.15, seed=0, threads=2)
    return train(cfg, show_progress=False)


# --- the task and its class map ---------------------------------------------------------------------------------


def test_phenotype_task_sets_the_six_codes_and_refuses_other_classes():
    cfg = TrainConfig(task="phenotype")
    assert cfg.classes == paper.PHENOTYPE_CLASSES and cfg.oversample == (1,)
    assert ClassMap.parse(cfg.classes).is_phenotype and not ClassMap.parse(cfg.classes).is_binary
    with pytest.raises(InputError, match="--task phenotype"):
        TrainConfig(task="phenotype", classes="a=2;b=3")
    with pytest.raises(InputError, match="--task"):
        TrainConfig(task="types")


def test_derived_probabilities_are_joint_and_sum_to_one_with_the_rim_class():
    probabilities = np.random.default_rng(0).dirichlet(np.ones(6), size=20)
    derived = PHENOTYPE.derived_probabilities(probabilities)
    rim = probabilities[:, PHENOTYPE.class_of(4)].sum(1)
    total = derived["p_unclassified"] + derived["p_remyelinating"] + derived["p_demyelinating"] + rim
    np.testing.assert_allclose(total, 1.0)
    np.testing.assert_allclose(derived["p_remyelinating"], probabilities[:, 1] + probabilities[:, 5])
    # The same codes in another order and with other names are the same task.
    shuffled = ClassMap.parse("h=5;u=1;i=2;p=3;r=4;d=6")
    assert shuffled.is_phenotype
    np.testing.assert_allclose(shuffled.derived_probabilities(probabilities)["p_demyelinating"],
                               probabilities[:, 0] + probabilities[:, 3])


def test_binary_and_custom_class_maps_have_their_calls_and_legend():
    binary = ClassMap.parse(paper.PAPER_CLASSES)
    assert binary.is_binary and binary.call_names() == ("remyelinating", "demyelinating")
    assert set(binary.derived_probabilities(np.full((3, 2), 0.5))) == {"p_remyelinating", "p_demyelinating"}
    custom = ClassMap.parse("bright=5;others=2,3,6")
    assert custom.derived_probabilities(np.full((3, 2), 0.5)) == {}
    assert custom.call_names() == ("hyperintense", "others")
    legend = custom.legend()
    assert {k: legend[k] for k in paper.CALL_LEGEND} == paper.CALL_LEGEND  # the fixed part never moves
    assert legend[paper.CUSTOM_CALLS_START] == "others"


@pytest.mark.parametrize("mode, ratio", [("none", 1.0), ("sqrt", 2.0), ("balanced", 4.0)])
def test_class_weights_follow_the_counts(mode: str, ratio: float):
    targets = np.r_[np.zeros(40, int), np.ones(10, int)]
    weights = loss_weights(TrainConfig(task="phenotype", class_weights=mode), targets, 2)
    if mode == "none":
        assert weights is None
        return
    assert float(weights[1] / weights[0]) == pytest.approx(ratio)
    assert float((weights[torch.as_tensor(targets)]).mean()) == pytest.approx(1.0)  # the loss keeps its scale
    assert loss_weights(TrainConfig(), targets, 2) is None  # binary auto: the paper's oversampling instead


# --- the evaluation ------------------------------------------------------------------------------------------------


def test_volume_matching_pairs_each_negative_with_a_positive_of_similar_size():
    rng = np.random.default_rng(1)
    positive = np.r_[np.ones(1000, bool), np.zeros(60, bool)]  # like class 1: many lesions, smaller on average
    volumes = np.r_[rng.lognormal(3, 1.5, 1000), rng.lognormal(5, 0.5, 60)]
    chosen = volume_matched(positive, volumes, seed=0)
    pos, neg = chosen[positive[chosen]], chosen[~positive[chosen]]
    assert len(pos) == len(neg) == 60
    assert abs(np.median(np.log(volumes[pos])) - np.median(np.log(volumes[neg]))) < 0.2
    assert abs(np.median(np.log(volumes[positive])) - np.median(np.log(volumes[~positive]))) > 1.5


def test_phenotype_metrics_report_an_absent_class_as_absent_and_ci_around_the_estimate():
    rng = np.random.default_rng(0)
    targets = rng.choice([0, 1, 2, 4, 5], 200)  # class 3 (hypointense rim) absent
    probabilities = np.full((200, 6), 0.02)
    probabilities[np.arange(200), targets] = 0.9
    probabilities[rng.random(200) < 0.2] = 1 / 6  # some lesions unreadable
    patients = np.asarray([f"p{i % 20}" for i in range(200)])
    result = phenotype_metrics(targets, probabilities, PHENOTYPE.names, patients, gate_class=0,
                               remyelinating=[1, 5], demyelinating=[2, 4], volumes=rng.lognormal(3, 1, 200),
                               n_resamples=200)
    assert result["true_positive_rate"]["hypointense_rim"] == "absent"
    for value in (*[v for v in result["true_positive_rate"].values() if v != "absent"],
                  result["gate_roc_auc"], result["derived_binary_roc_auc"], result["gate_roc_auc_volume_matched"]):
        assert value["low"] <= value["estimate"] <= value["high"]
    assert 0.8 < result["gate_roc_auc"]["estimate"] < 1.0
    assert np.asarray(result["confusion_matrix"]).shape == (6, 6)


@pytest.mark.slow
def test_phenotype_run_evaluates_with_gate_derived_binary_and_joint_columns(phenotype_run: Path):
    metrics = evaluate(EvaluateConfig(run=str(phenotype_run)))
    report = metrics["phenotype"]
    assert np.asarray(report["confusion_matrix"]).shape == (6, 6)
    assert report["gate_roc_auc"]["estimate"] > 0.75  # class 1 is a mixture: separable, not perfectly
    assert report["derived_binary_roc_auc"]["estimate"] > 0.85
    rows = list(csv.DictReader((phenotype_run / "predictions.csv").open()))
    for row in rows:
        total = sum(float(row[k]) for k in ("p_unclassified", "p_remyelinating", "p_demyelinating",
                                            "p_hypointense_rim"))
        assert total == pytest.approx(1.0, abs=1e-4)


# --- out-of-distribution flags -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flags_pass_in_distribution_lesions_and_catch_shifted_ones(phenotype_run: Path):
    trained = load_trained(phenotype_run)
    task = load_task(trained.config.data, trained.channels, trained.class_map)
    fresh = six_class_patches({1: 30, 2: 12, 3: 12, 4: 6, 5: 12, 6: 12}, seed=7)  # new lesions, same generator
    flags, scores = ood_flags(trained.ood, trained.model, fresh.images, fresh.volume_mm3, trained.channels)
    clean = np.mean([not f for f in flags])
    assert clean >= 0.8, flags
    shifted = fresh.images.copy()
    shifted[:, 1] = shifted[:, 1] * 4 + np.random.default_rng(0).normal(0, 1.5, shifted[:, 1].shape)
    volumes = np.where(np.arange(len(shifted)) % 2, 1e5, 0.01)  # far above and far below every training lesion
    shifted_flags, shifted_scores = ood_flags(trained.ood, trained.model, shifted, volumes, trained.channels)
    assert all(VOLUME_FLAG in f for f in shifted_flags)
    assert np.mean([intensity_flag("qsm") in f for f in shifted_flags]) > 0.9
    assert np.mean([FEATURE_FLAG in f for f in shifted_flags]) > 0.9
    assert np.median(shifted_scores) > 3 * np.median(scores)
    assert trained.ood["threshold_from"] == "validation" and len(task) == 168


# --- whole-subject calls ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("keep_ood", [False, True])
def test_phenotype_calls_and_label_map_agree(phenotype_run: Path, tmp_path: Path, monkeypatch, capsys,
                                            keep_ood: bool):
    import json

    from test_extract import run_cli, write_subject
    from test_predict import SubjectFiles

    s = write_subject(tmp_path / "s", "sub-1")
    out = tmp_path / "pred"
    code, text = run_cli(["predict", phenotype_run, "--mask", s.mask, "--flair", s.flair, "--qsm", s.qsm, "--out",
                          out, "--quiet", "--prl-count", "1", *(["--keep-ood"] if keep_ood else [])],
                         monkeypatch, capsys)
    assert code == 0, text
    files = SubjectFiles(out, task="phenotype")
    rows = files.rows()
    labels = files.labels()
    value_of = {name: value for value, name in paper.CALL_LEGEND.items()}
    for row in rows:
        voxel = tuple(int(row[k]) for k in ("centre_i", "centre_j", "centre_k"))
        assert labels[voxel] == value_of[row["call"]]
        if row["flags"] and not keep_ood:
            assert row["call"] == "out_of_distribution"
        else:
            assert row["call"] == row["predicted"]  # phenotype classes are their own calls
        assert float(row["p_unclassified"]) + float(row["p_remyelinating"]) + float(row["p_demyelinating"]) + float(
            row["p_hypointense_rim"]) == pytest.approx(1, abs=1e-3)
    summary = json.loads(files.summary.read_text())
    # one probability map per class, named by BIDS-safe labels (hypointense_rim → HRL)
    assert sorted(p.name.split("_label-")[1] for p in files.folder.glob("*_probseg.nii.gz")) == sorted(
        f"{label}_probseg.nii.gz" for label in ("unclassified", "isointense", "PRL", "HRL", "hyperintense",
                                                "hypointense"))
    assert summary["n_prl_like"] == sum(r["call"] == "PRL" for r in rows)
    assert summary["prl_1_or_more"] == (summary["n_prl_like"] >= 1)
    assert sum(summary[f"n_{name}"] for name in list(paper.CALL_LEGEND.values())[1:]) == len(rows)
    assert not any("binary model" in note for note in summary["notes"])
    assert summary["n_out_of_distribution"] == (0 if keep_ood else sum(bool(r["flags"]) for r in rows))


def test_a_binary_model_says_it_cannot_recognise_unclassifiable_lesions(tmp_path: Path, monkeypatch, capsys):
    import json

    from test_extract import run_cli, write_subject
    from test_predict import SubjectFiles, make_run

    run = make_run(tmp_path / "run")
    s = write_subject(tmp_path / "s", "sub-1")
    code, text = run_cli(["predict", run, "--mask", s.mask, "--flair", s.flair, "--qsm", s.qsm, "--out",
                          tmp_path / "p", "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    notes = json.loads(SubjectFiles(tmp_path / "p").summary.read_text())["notes"]
    assert any("cannot recognise unclassifiable lesions" in note for note in notes)
    summary = next(csv.DictReader((tmp_path / "p" / "summary.csv").open()))
    assert summary["n_prl_like"] == "" and summary["n_unclassified"] == "0"
