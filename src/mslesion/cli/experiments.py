"""Commands: ablate and report (channel ablation with CIs, HTML report)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, joined, option, parse_ints
from mslesion.config import AblationConfig, ReportConfig, TrainConfig
from mslesion.paper import PAPER_CLASS_NAMES, table3_accuracy

ABLATION, REPORT = AblationConfig(), ReportConfig()
TEMPLATE = ABLATION.train  # the training settings every run of an ablation shares


@app.command("ablate")
def ablate_command(
    data: Annotated[Path, typer.Argument(help="Patch file (HDF5).")],
    out: Annotated[Path, option(AblationConfig, "out", "--out", "-o")] = Path(ABLATION.out),
    channel_sets: Annotated[str, typer.Option(help="Channel sets separated by ';', channels by ','.")] = joined(
        ABLATION.channel_sets, ";"),
    cv: Annotated[int, option(AblationConfig, "cv_folds", "--cv")] = ABLATION.cv_folds,
    split: Annotated[str, option(AblationConfig, "scheme", "--split")] = ABLATION.scheme,
    seeds: Annotated[int, option(AblationConfig, "seeds")] = ABLATION.seeds,
    reference: Annotated[str, option(AblationConfig, "reference")] = ABLATION.reference,
    classes: Annotated[str, option(TrainConfig, "classes")] = TEMPLATE.classes,
    task: Annotated[str, option(TrainConfig, "task")] = TEMPLATE.task,
    class_weights: Annotated[str, option(TrainConfig, "class_weights")] = TEMPLATE.class_weights,
    arch: Annotated[str, option(TrainConfig, "arch")] = TEMPLATE.arch,
    augment: Annotated[str, option(TrainConfig, "augment")] = TEMPLATE.augment,
    epochs: Annotated[int, option(TrainConfig, "epochs")] = TEMPLATE.epochs,
    batch_size: Annotated[int, option(TrainConfig, "batch_size")] = TEMPLATE.batch_size,
    lr: Annotated[float, option(TrainConfig, "lr")] = TEMPLATE.lr,
    lr_milestones: Annotated[str, option(TrainConfig, "lr_milestones")] = joined(TEMPLATE.lr_milestones),
    select: Annotated[str, option(TrainConfig, "select")] = TEMPLATE.select,
    val_fraction: Annotated[float, option(TrainConfig, "val_fraction")] = TEMPLATE.val_fraction,
    oversample: Annotated[str, option(TrainConfig, "oversample")] = joined(TEMPLATE.oversample),
    bootstrap: Annotated[int, option(AblationConfig, "n_bootstrap", "--bootstrap")] = ABLATION.n_bootstrap,
    device: Annotated[str, option(TrainConfig, "device")] = TEMPLATE.device,
    precision: Annotated[str, option(TrainConfig, "precision")] = TEMPLATE.precision,
    threads: Annotated[int, option(TrainConfig, "threads")] = TEMPLATE.threads,
    in_memory: Annotated[str, option(TrainConfig, "in_memory")] = TEMPLATE.in_memory,
    shuffle_window: Annotated[int, option(TrainConfig, "shuffle_window")] = TEMPLATE.shuffle_window,
    shard: Annotated[str, typer.Option(help="Run only the I-th of N slices of the grid, e.g. 2/8 (one job of a "
                                            "scheduler's array); the job finishing the last run writes the "
                                            "results.")] = "1/1",
    collect: Annotated[bool, typer.Option(help="Only gather the results of a finished grid.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train and evaluate every channel combination; results with patient-bootstrap CIs and paired tests."""
    from mslesion.ablate import ablate

    template = dataclasses.replace(
        TEMPLATE, classes=classes, task=task, class_weights=class_weights, arch=arch,
        augment=augment, epochs=epochs, batch_size=batch_size, lr=lr,
        lr_milestones=parse_ints(lr_milestones, "--lr-milestones"), select=select,
        val_fraction=val_fraction, oversample=parse_ints(oversample, "--oversample"), device=device,
        precision=precision, threads=threads, in_memory=in_memory, shuffle_window=shuffle_window,
    )
    cfg = AblationConfig(
        data=str(data.resolve()), out=str(out),
        channel_sets=tuple(s.strip() for s in channel_sets.split(";") if s.strip()),
        scheme=split, cv_folds=cv, seeds=seeds, reference=reference, n_bootstrap=bootstrap, train=template,
    )
    index, count = parse_shard(shard)
    results = ablate(cfg, show_progress=not quiet, console=console, shard=(index, count), collect=collect)
    if "pending" in results:
        console.print(f"{len(results['pending'])} run(s) are being trained by other processes; the one that finishes "
                      "last writes the results (or rerun this command then)")
        return
    console.print(results_table(results))
    took = f"grid finished in {results['grid_seconds']:.0f} s; " if "grid_seconds" in results else ""
    console.print(f"{took}full table with per-class TPR and paired tests in {out / 'results.md'}")


@app.command("report")
def report_command(
    folder: Annotated[Path, typer.Argument(help="Run folder (mslesion train), ablation folder (mslesion ablate) or "
                                                "prediction folder (mslesion predict).")],
    out: Annotated[Path, option(ReportConfig, "out", "--out", "-o")] = Path(REPORT.out),
    abstain: Annotated[float, option(ReportConfig, "abstain")] = REPORT.abstain,
    examples: Annotated[int, option(ReportConfig, "examples")] = REPORT.examples,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report file.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Write a self-contained HTML report. A run or ablation: metrics with CIs, curves, confusion matrix, ROC,
    calibration, lesions, saliency. A prediction folder: per subject the lesion burden, overview slices with the
    label map and every lesion; a cohort table."""
    from mslesion.report import write_report
    from mslesion.runs import is_prediction_folder

    if is_prediction_folder(folder):
        from mslesion.report_predictions import write_prediction_report

        path = write_prediction_report(folder, out, overwrite, show_progress=not quiet)
    else:
        path = write_report(ReportConfig(folder=str(folder), out=str(out), abstain=abstain, examples=examples),
                            overwrite, show_progress=not quiet)
    console.print(f"wrote {path}")


def parse_shard(text: str) -> tuple[int, int]:
    from mslesion.errors import InputError

    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()):
        raise InputError(f"--shard must be I/N (e.g. 2/8), got {text!r}")
    return int(index), int(count)


def results_table(results: dict):
    """The headline columns of results.md as a rich table (the full table is too wide for a terminal)."""
    from rich.table import Table

    def ci(row: dict, key: str) -> str:
        return f"{row[key]:.3f} [{row[key + '_low']:.3f}, {row[key + '_high']:.3f}]"

    table = Table(title="channel ablation: estimate [95% CI over patients]")
    papers = [table3_accuracy(row["channels"], row.get("class_names", PAPER_CLASS_NAMES)) for row in results["rows"]]
    paper_task = any(p is not None for p in papers)
    columns = ("channels", "accuracy", "balanced acc.", "ROC AUC", "PR AUC")
    for column in columns + (("paper acc.",) if paper_task else ()):
        table.add_column(column, justify="left" if column == "channels" else "right")
    for row, paper in zip(results["rows"], papers, strict=True):
        cells = [row["channels"], ci(row, "accuracy"), ci(row, "balanced_accuracy"), ci(row, "roc_auc"),
                 ci(row, "pr_auc")]
        table.add_row(*cells, *([f"{paper / 100:.3f}" if paper is not None else "–"] if paper_task else []))
    return table
