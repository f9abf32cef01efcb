"""Commands: ablate and report (channel ablation with CIs, HTML report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, parse_ints
from mslesion.paper import PAPER_CLASSES

DEFAULT_SETS = "flair;qsm;mask;flair,qsm;flair,mask;qsm,mask;flair,qsm,mask"


@app.command()
def ablate(
    data: Annotated[Path, typer.Argument(help="Patch file (HDF5).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ablation folder (rerun to resume).")] = Path(
        "runs/ablation"),
    channel_sets: Annotated[str, typer.Option(help="Channel sets separated by ';', channels by ','.")] = DEFAULT_SETS,
    cv: Annotated[int, typer.Option(help="Patient-grouped stratified folds.")] = 5,
    split: Annotated[str, typer.Option(help="cv (patient-grouped folds, --cv) | paper (the paper's single "
                                            "lesion-level 70/30 split).")] = "cv",
    seeds: Annotated[int, typer.Option(help="Repetitions (seeds 0..S-1).")] = 1,
    reference: Annotated[str, typer.Option(help="Channel set the others are compared to (paired test); "
                                                "default: the largest set.")] = "",
    classes: Annotated[str, typer.Option(help="Class map 'name=codes;name=codes'.")] = PAPER_CLASSES,
    augment: Annotated[str, typer.Option(help="full (48 symmetries, paper) | random | none.")] = "full",
    epochs: Annotated[int, typer.Option()] = 15,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option()] = 0.01,
    val_fraction: Annotated[float, typer.Option(help="Validation part of each training set (temperature).")] = 0.15,
    oversample: Annotated[str, typer.Option(help="Copies per class in training, in class-map order.")] = "2,1",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples / permutations.")] = 1000,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto | bf16 | fp32.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads (0 = torch default).")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train and evaluate every channel combination; results with patient-bootstrap CIs and paired tests."""
    from mslesion.ablate import AblationConfig
    from mslesion.ablate import ablate as run_ablation
    from mslesion.errors import InputError

    if split not in ("cv", "paper"):
        raise InputError(f"--split must be cv or paper, got {split!r}")
    cfg = AblationConfig(
        data=str(data.resolve()), out=str(out),
        channel_sets=tuple(s.strip() for s in channel_sets.split(";") if s.strip()),
        scheme=split, cv_folds=cv, seeds=seeds, reference=reference, classes=classes, augment=augment,
        epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
        oversample=parse_ints(oversample, "--oversample"), n_bootstrap=bootstrap, device=device,
        precision=precision, threads=threads,
    )
    results = run_ablation(cfg, show_progress=not quiet, console=console)
    console.print(results_table(results))
    console.print(f"grid finished in {results['grid_seconds']:.0f} s; full table with per-class TPR and paired "
                  f"tests in {out / 'results.md'}")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="Run folder (mslesion train) or ablation folder (mslesion ablate).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
    abstain: Annotated[float, typer.Option(help="Confidence below which a prediction counts as 'uncertain' "
                                                "(0 = never abstain).")] = 0.0,
    examples: Annotated[int, typer.Option(help="Lesions per montage row and saliency maps shown.")] = 4,
) -> None:
    """Write a self-contained HTML report: curves, confusion matrix, ROC, calibration, lesions, saliency."""
    from mslesion.report import ReportConfig, write_report

    path = write_report(ReportConfig(folder=str(folder), out=str(out), abstain=abstain, examples=examples))
    console.print(f"wrote {path}")


def results_table(results: dict):
    """The headline columns of results.md as a rich table (the full table is too wide for a terminal)."""
    from rich.table import Table

    from mslesion.cli.core import PAPER_TABLE3

    def ci(row: dict, key: str) -> str:
        return f"{row[key]:.3f} [{row[key + '_low']:.3f}, {row[key + '_high']:.3f}]"

    table = Table(title="channel ablation: estimate [95% CI over patients]")
    for column in ("channels", "accuracy", "balanced acc.", "ROC AUC", "PR AUC", "paper acc."):
        table.add_column(column, justify="left" if column == "channels" else "right")
    for row in results["rows"]:
        paper = PAPER_TABLE3.get(row["channels"])
        table.add_row(row["channels"], ci(row, "accuracy"), ci(row, "balanced_accuracy"), ci(row, "roc_auc"),
                      ci(row, "pr_auc"), f"{paper / 100:.3f}" if paper else "–")
    return table
