"""Test metrics of a trained run: accuracy, balanced accuracy, per-class true-positive rate, ROC AUC,
confusion matrix, test-set sizes and the all-majority baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mslesion.atomic import locked_folder, write_json
from mslesion.config import EvaluateConfig
from mslesion.data.task import Task, load_task
from mslesion.errors import InputError
from mslesion.inference import predict_probabilities
from mslesion.metrics import abstention_metrics, classification_metrics, phenotype_metrics
from mslesion.runs import (
    METRICS,
    PREDICTIONS,
    RUN_LOCK,
    SPLIT,
    TrainedModel,
    load_trained,
    model_provenance,
    provenance,
    read_json,
    write_predictions,
)
from mslesion.runtime import parse_device


def test_indices(run_dir: Path, task: Task, same_data: bool) -> np.ndarray:
    """The run's own test split when evaluating on its own data; every lesion of another file."""
    if not same_data:
        return np.arange(len(task))
    indices = np.asarray([row["index"] for row in read_json(run_dir / SPLIT)["test"]], dtype=np.int64)
    if len(indices) and indices.max() >= len(task):
        raise InputError("split.json does not match the data file (was the file regenerated?)", run_dir / SPLIT)
    return indices


def evaluate(cfg: EvaluateConfig, task: Task | None = None) -> dict:
    """Evaluate a run's finished model; writes metrics.json and predictions.csv into the run folder.

    `task`: the run's own data as its training loaded it (demo, ablate), so that it is not read again; used only
    when it is that file with the model's channels and classes, else the file is loaded as usual."""
    run_dir = Path(cfg.run)
    device = parse_device(cfg.device)
    trained = load_trained(run_dir)
    symmetries = trained.tta_symmetries() if cfg.tta else 1  # a model without a symmetry group fails here
    data = cfg.data or trained.config.data
    same_data = not cfg.data or Path(cfg.data).resolve() == Path(trained.config.data).resolve()
    if not (task is not None and same_data and is_task_of(task, trained)):
        # the run's own file was checked by training; other data may lack a class (reported as absent)
        task = load_task(data, trained.channels, trained.class_map, cfg.in_memory, every_class=same_data)
    if task.images.shape[2:] != (trained.model.patch_size,) * 3:
        raise InputError(f"patches are {task.images.shape[2:]}, the model expects {trained.model.patch_size}³", data)
    indices = test_indices(run_dir, task, same_data)
    images = task.images[indices] if isinstance(task.images, np.ndarray) else task.images.subset(indices)
    probabilities, _ = predict_probabilities(trained.model, images, cfg.batch_size, device, tta=cfg.tta,
                                             temperature=trained.temperature, symmetries=symmetries)
    metrics = {
        "data": str(data),
        "split": "test" if same_data else "all",
        "channels": list(trained.channels),
        **provenance(), **model_provenance(run_dir), "synth_version": trained.synth_version,
        "precision_used": "fp32",  # evaluation always runs in fp32: metrics must not depend on the machine
        "tta_symmetries": symmetries,  # 1: none
        **classification_metrics(task.targets[indices], probabilities, trained.class_map.names),
    }
    if trained.class_map.is_phenotype:
        metrics["phenotype"] = phenotype_report(task, indices, probabilities)
    if cfg.abstain:
        metrics["abstention"] = abstention_metrics(task.targets[indices], probabilities, cfg.abstain)
    with locked_folder(run_dir, RUN_LOCK):  # not while a training writes this folder
        write_json(run_dir / METRICS, metrics)
        write_predictions(run_dir / PREDICTIONS, task, indices, probabilities)
    return metrics


def is_task_of(task: Task, trained: TrainedModel) -> bool:
    """Whether a loaded task is the trained run's own data, channels and classes."""
    return (Path(task.source_path).resolve() == Path(trained.config.data).resolve()
            and tuple(task.channels) == tuple(trained.channels) and task.class_map == trained.class_map)


def phenotype_report(task: Task, indices: np.ndarray, probabilities: np.ndarray, seed: int = 0) -> dict:
    """metrics.phenotype_metrics on a phenotype task's test lesions (class 1 is the unclassifiable gate)."""
    class_map = task.class_map
    volumes = task.volumes[indices] if task.volumes is not None else None
    return phenotype_metrics(task.targets[indices], probabilities, class_map.names, task.patients[indices],
                             gate_class=class_map.class_of(1)[0], remyelinating=class_map.class_of(2, 6),
                             demyelinating=class_map.class_of(3, 5), volumes=volumes, seed=seed)


def interval(value: dict | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def metrics_table(metrics: dict, title: str = "Test metrics"):
    """A rich table of the headline metrics."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("lesions", str(metrics["n"]) + "  (" + ", ".join(
        f"{k} {v}" for k, v in metrics["n_per_class"].items()) + ")")
    table.add_row("accuracy", f"{metrics['accuracy']:.2%}")
    table.add_row("balanced accuracy", f"{metrics['balanced_accuracy']:.2%}")
    for name, value in metrics["true_positive_rate"].items():
        table.add_row(f"TPR {name}", f"{value:.2%}")
    table.add_row("ROC AUC", f"{metrics['roc_auc']:.3f}")
    table.add_row("majority baseline", f"{metrics['majority_baseline_accuracy']:.2%}")
    table.add_row("confusion matrix", str(metrics["confusion_matrix"]))
    if "phenotype" in metrics:
        p = metrics["phenotype"]
        for name, value in p["true_positive_rate"].items():
            table.add_row(f"TPR {name} [95% CI]", interval(value))
        for key in ("gate_roc_auc", "gate_pr_auc", "gate_roc_auc_volume_matched", "derived_binary_roc_auc"):
            if key in p:
                table.add_row(key.replace("_", " "), interval(p[key]))
    if "abstention" in metrics:
        a = metrics["abstention"]
        table.add_row(f"abstain < {a['threshold']:.2f}", f"coverage {a['coverage']:.2%}, "
                      f"accuracy on covered {a['covered_accuracy']:.2%}")
    return table
