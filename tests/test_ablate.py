"""Channel ablation: grid layout, validation, resumability and the written results."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
from conftest import toy_patches

from mslesion.ablate import ablate, ablation_markdown, grid
from mslesion.config import AblationConfig, TrainConfig
from mslesion.data.patches import write_patches
from mslesion.errors import InputError
from mslesion.runs import ABLATION_PNG, CHECKPOINT, METRICS, MODEL, RESULTS_CSV, RESULTS_MD, run_folder

FAST = dict(n_bootstrap=20, train=TrainConfig(augment="none", epochs=2, batch_size=16, lr=0.01, threads=1,
                                              val_fraction=0.15))


def test_grid_covers_sets_seeds_and_folds(tmp_path: Path) -> None:
    cfg = AblationConfig(data="x.h5", out=str(tmp_path), channel_sets=("qsm", "flair,qsm"), cv_folds=3, seeds=2)
    runs = grid(cfg)
    assert len(runs) == 2 * 2 * 3
    assert {r.channels for r in runs} == {("qsm",), ("flair", "qsm")}
    assert {(r.seed, r.fold) for r in runs} == {(s, f) for s in range(2) for f in range(3)}
    assert all(r.cv_folds == 3 and r.val_fraction == 0.15 for r in runs)
    assert run_folder(tmp_path, "flair, qsm", 1, 2) == tmp_path / "runs" / "flair+qsm" / "seed1" / "fold2"
    assert cfg.reference_set == "flair,qsm"


def test_paper_scheme_is_one_lesion_level_split_per_seed(tmp_path: Path) -> None:
    runs = grid(AblationConfig(data="x.h5", out=str(tmp_path), channel_sets=("qsm",), scheme="paper", seeds=3))
    assert [(r.split, r.cv_folds, r.fold, r.seed) for r in runs] == [("paper", 0, -1, s) for s in range(3)]


@pytest.mark.parametrize("bad", [dict(scheme="lesion"), dict(cv_folds=1), dict(seeds=0), dict(channel_sets=()),
                                 dict(reference="mask"), dict(channel_sets=("qsm", " , ")),
                                 dict(train=dict(augment="some")), dict(train=dict(epochs=0))])
def test_bad_settings_are_input_errors(bad: dict) -> None:
    with pytest.raises(InputError):
        if "train" in bad:
            bad = {"train": TrainConfig(**bad["train"])}
        AblationConfig(data="x.h5", **{"channel_sets": ("qsm", "flair"), **bad})


@pytest.mark.parametrize(("names", "paper_column"), [(["remyelinating", "demyelinating"], True),
                                                     (["small", "large"], False),  # another binary task
                                                     (["unclassified", "isointense", "PRL"], False)])
def test_results_markdown_shows_cis_and_the_papers_numbers_only_beside_the_papers_task(names, paper_column) -> None:
    row = {"channels": "qsm", "n": 40, "majority_baseline": 0.6, "class_names": names}
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "partial_roc_auc", *(f"tpr_{n}" for n in names)):
        row.update({key: 0.8, f"{key}_low": 0.7, f"{key}_high": 0.9})
    text = ablation_markdown({"config": {"scheme": "cv", "cv_folds": 5, "seeds": 1, "n_bootstrap": 1000},
                             "rows": [row], "comparisons": [{"a": "qsm", "b": "flair", "metric": "roc_auc",
                                                             "difference": 0.2, "low": 0.1, "high": 0.3,
                                                             "p_value": 0.01}]})
    assert "| qsm | 80.0 [70.0, 90.0] |" in text
    assert ("89.31" in text) == ("paper acc." in text) == paper_column  # Table 3's accuracy for QSM alone
    assert ("rarer class" in text) == (len(names) == 2)
    assert "+0.200 [+0.100, +0.300] | 0.01" in text


@pytest.mark.slow
def test_ablation_runs_resumes_and_skips(tmp_path: Path) -> None:
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(size=23, n_patients=12))
    cfg = AblationConfig(data=str(data), out=str(tmp_path / "ablation"), channel_sets=("flair", "qsm"), cv_folds=2,
                         **FAST)
    results = ablate(cfg, show_progress=False)
    out = Path(cfg.out)
    for name in (RESULTS_CSV, RESULTS_MD, ABLATION_PNG):
        assert (out / name).stat().st_size > 0
    with open(out / RESULTS_CSV) as f:
        rows = {r["channels"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"flair", "qsm"} and int(rows["qsm"]["n"]) == 80
    # only QSM carries the class in the toy set
    assert float(rows["qsm"]["roc_auc"]) > 0.9 > float(rows["flair"]["roc_auc"])
    assert float(rows["qsm"]["accuracy_low"]) <= float(rows["qsm"]["accuracy"]) <= float(rows["qsm"]["accuracy_high"])
    assert [c["metric"] for c in results["comparisons"]] == ["roc_auc", "balanced_accuracy"]

    # an interrupted run (checkpoint, no model) resumes; finished runs are left alone
    interrupted = run_folder(out, "qsm", 0, 1)
    (interrupted / MODEL).unlink()
    (interrupted / METRICS).unlink()
    finished = run_folder(out, "flair", 0, 0) / MODEL
    before = finished.stat().st_mtime_ns
    assert (interrupted / CHECKPOINT).exists()
    ablate(cfg, show_progress=False)
    assert finished.stat().st_mtime_ns == before
    assert (interrupted / MODEL).exists() and "resuming after epoch 2" in (interrupted / "train.log").read_text()

    with pytest.raises(InputError, match="other settings"):
        ablate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3)), show_progress=False)


def test_missing_data_or_unknown_channel_fails_before_any_output(tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    with pytest.raises(InputError, match="not found"):
        ablate(AblationConfig(data=str(tmp_path / "missing.h5"), out=str(out), channel_sets=("qsm",)), False)
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(size=23))
    with pytest.raises(InputError, match="unknown channel swi"):
        ablate(AblationConfig(data=str(data), out=str(out), channel_sets=("qsm", "swi")), False)
    assert not out.exists()


@pytest.mark.slow
def test_shards_of_the_grid_give_the_results_of_the_whole_grid(tmp_path: Path) -> None:
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(size=23, n_patients=12))
    whole = AblationConfig(data=str(data), out=str(tmp_path / "whole"), channel_sets=("flair", "qsm"), cv_folds=2,
                           **FAST)
    sharded = dataclasses.replace(whole, out=str(tmp_path / "sharded"))
    expected = ablate(whole, show_progress=False)
    first = ablate(sharded, show_progress=False, shard=(1, 3))  # 4 runs in 3 slices: runs 1 and 4
    assert len(first["pending"]) == 2 and not (tmp_path / "sharded" / RESULTS_MD).exists()
    with pytest.raises(InputError, match="not finished"):
        ablate(sharded, show_progress=False, collect=True)
    ablate(sharded, show_progress=False, shard=(3, 3))
    last = ablate(sharded, show_progress=False, shard=(2, 3))  # finishes the grid: writes the results
    assert last["rows"] == expected["rows"] and last["comparisons"] == expected["comparisons"]
    assert ablate(sharded, show_progress=False, collect=True)["rows"] == expected["rows"]


@pytest.mark.parametrize("shard", [(0, 2), (3, 2), (1, 0)])
def test_a_shard_outside_the_grid_is_an_input_error(tmp_path: Path, shard: tuple[int, int]) -> None:
    from mslesion.ablate import shard_of

    with pytest.raises(InputError, match="--shard"):
        shard_of(grid(AblationConfig(data="x.h5", out=str(tmp_path), channel_sets=("qsm",))), shard)


def test_a_phenotype_cv_grid_pairs_every_run_with_a_binary_twin(tmp_path: Path) -> None:
    cfg = AblationConfig(data="x.h5", out=str(tmp_path), channel_sets=("qsm",), cv_folds=2,
                         train=TrainConfig(task="phenotype"))
    runs = grid(cfg)
    phenotype, twins = runs[0::2], runs[1::2]
    assert [r.task for r in phenotype] == ["phenotype"] * 2 and [r.task for r in twins] == ["binary"] * 2
    for run, twin in zip(phenotype, twins, strict=True):
        assert (twin.fold, twin.seed, twin.channels) == (run.fold, run.seed, run.channels)
        assert twin.folds_from == run.classes and twin.oversample == (2, 1)
        assert "runs-binary" in twin.out and "runs-binary" not in run.out
    paper_scheme = AblationConfig(data="x.h5", out=str(tmp_path), scheme="paper", train=TrainConfig(task="phenotype"))
    assert all(r.task == "phenotype" for r in grid(paper_scheme))  # no shared folds to pair on


@pytest.mark.slow
def test_phenotype_ablation_reports_gate_and_derived_vs_dedicated_binary(tmp_path: Path) -> None:
    from test_phenotype import six_class_patches

    from mslesion.runs import read_predictions

    data = tmp_path / "six.h5"
    write_patches(data, six_class_patches({1: 60, 2: 24, 3: 24, 4: 12, 5: 24, 6: 24}, n_patients=12))
    cfg = AblationConfig(data=str(data), out=str(tmp_path / "ablation"), channel_sets=("qsm",), cv_folds=2,
                         n_bootstrap=20, train=dataclasses.replace(FAST["train"], task="phenotype", augment="random",
                                                                   epochs=3))
    results = ablate(cfg, show_progress=False)
    report = results["rows"][0]["phenotype"]
    assert report["gate_roc_auc"]["estimate"] > 0.6
    paired = report["derived_vs_dedicated_binary"]
    assert paired["low"] <= paired["difference"] <= paired["high"]
    # The twins tested exactly the phenotype runs' patients in every fold.
    for fold in range(2):
        phenotype = read_predictions(run_folder(tmp_path / "ablation", "qsm", 0, fold) / "predictions.csv")
        twin = read_predictions(run_folder(tmp_path / "ablation", "qsm", 0, fold, "runs-binary") / "predictions.csv")
        assert set(twin.patients) <= set(phenotype.patients)
        assert sorted(twin.labels) == sorted(label for label in phenotype.labels if label in (2, 3, 5, 6))
    text = (tmp_path / "ablation" / "results.md").read_text()
    assert "gate ROC AUC" in text and "derived − dedicated" in text
