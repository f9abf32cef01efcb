"""Core commands: synth, train, evaluate, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, parse_ints
from mslesion.paper import (
    PAPER_CLASSES,
    PAPER_TABLE3,  # noqa: F401  (re-exported for other commands)
)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Patch file to write (HDF5).")] = Path("cohort.h5"),
    patients: Annotated[int, typer.Option(help="Number of synthetic patients.")] = 115,
    lesions_scale: Annotated[float, typer.Option(help="Scale of the Table 1 lesion counts (1.0 ≈ 5,269).")] = 1.0,
    labelled_only: Annotated[bool, typer.Option(help="Skip classes 1 and 4 (never trained on).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed; same seed ⇒ identical file contents.")] = 0,
    volumes: Annotated[int, typer.Option(help="Instead of patches, write this many whole-subject NIfTI "
                                              "volumes in a BIDS-style folder at --out.")] = 0,
    lesions_per_subject: Annotated[float, typer.Option(
        help="With --volumes: mean lesions per subject (0 = the paper's rate × --lesions-scale).")] = 0.0,
    voxel_size: Annotated[float, typer.Option(help="With --volumes: isotropic voxel size in mm.")] = 1.0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Generate the synthetic cohort (physically simulated QSM, FLAIR and lesion masks)."""
    from mslesion.data.synth.cohort import SynthConfig, write_cohort

    cfg = SynthConfig(patients=patients, lesions_scale=lesions_scale, labelled_only=labelled_only, seed=seed)
    if volumes:
        write_volumes(cfg, out, volumes, lesions_per_subject or None, voxel_size, quiet)
        return
    patches = write_cohort(cfg, out)
    counts = {int(c): int((patches.labels == c).sum()) for c in sorted(set(patches.labels.tolist()))}
    console.print(f"wrote {len(patches)} lesion patches of {len(set(patches.patients))} patients to {out}; "
                  f"per class: {counts}")


def write_volumes(cfg, out: Path, n_subjects: int, lesions_per_subject: float | None, voxel_size: float,
                  quiet: bool) -> None:
    """`synth --volumes`: whole-subject scans; the brain keeps its size in mm whatever the voxel size."""
    from mslesion.data.synth.volumes import generate_subject_volumes, subject_shape
    from mslesion.errors import InputError
    from mslesion.progress import progress_bar

    if lesions_per_subject is not None and lesions_per_subject < 0:
        raise InputError(f"--lesions-per-subject must be >= 0, got {lesions_per_subject}")
    shape = subject_shape(voxel_size)
    with progress_bar(not quiet) as bars:
        bar = bars.task("subjects", n_subjects)
        folders = generate_subject_volumes(cfg, out, n_subjects, shape, voxel_size, lesions_per_subject,
                                           progress=lambda done, total: bar.advance())
    lesions = sum(len((folder / "lesions.csv").read_text().splitlines()) - 1 for folder in folders)
    console.print(f"wrote {n_subjects} subjects ({lesions} lesions, {shape[0]}×{shape[1]}×{shape[2]} voxels of "
                  f"{voxel_size:g} mm) to {out}")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Patch file (HDF5).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/train"),
    channels: Annotated[str, typer.Option(help="Comma-separated channel names, in order.")] = "flair,qsm,mask",
    classes: Annotated[str, typer.Option(help="Class map 'name=codes;name=codes'.")] = PAPER_CLASSES,
    split: Annotated[str, typer.Option(help="paper | patient | predefined.")] = "paper",
    augment: Annotated[str, typer.Option(help="full (48 symmetries, paper) | random | none.")] = "full",
    input_norm: Annotated[str, typer.Option(help="zscore (per-channel scale) | zerocenter (the paper).")] = "zscore",
    epochs: Annotated[int, typer.Option()] = 15,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option(help="Initial learning rate.")] = 0.01,
    lr_milestones: Annotated[str, typer.Option(help="Epochs at which the rate is multiplied by 0.316.")] = "6,10",
    oversample: Annotated[str, typer.Option(help="Copies per class in training, in class-map order.")] = "2,1",
    val_fraction: Annotated[float, typer.Option(help="Part of the training set held out for validation.")] = 0.0,
    val_every: Annotated[int, typer.Option(help="Validate every N epochs (and after the last).")] = 1,
    select: Annotated[str, typer.Option(help="Weights kept: last | val_auc | val_accuracy | val_loss.")] = "last",
    cv: Annotated[int, typer.Option(help="Patient-grouped stratified folds (0 = use --split).")] = 0,
    fold: Annotated[int, typer.Option(help="With --cv: the fold used as test set.")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto | bf16 | fp32.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads (0 = torch default).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train the paper's 3D CNN on a patch file and evaluate it on the held-out test split."""
    from mslesion.config import TrainConfig
    from mslesion.data.task import parse_channels
    from mslesion.evaluate import metrics_table
    from mslesion.train import train as run_training

    cfg = TrainConfig(
        data=str(data.resolve()), out=str(out), channels=parse_channels(channels), classes=classes, split=split,
        augment=augment, input_norm=input_norm, epochs=epochs, batch_size=batch_size, lr=lr,
        lr_milestones=parse_ints(lr_milestones, "--lr-milestones"),
        oversample=parse_ints(oversample, "--oversample"),
        val_fraction=val_fraction, val_every=val_every, select=select, cv_folds=cv, fold=fold if cv > 1 else -1,
        seed=seed, device=device, precision=precision, threads=threads,
    )
    run_dir = run_training(cfg, resume=resume, show_progress=not quiet)
    from mslesion.distributed import is_main_process

    if not is_main_process():  # under torchrun only rank 0 evaluates and writes
        return
    metrics = _evaluate(run_dir, None, device)
    console.print(metrics_table(metrics, f"{run_dir}: test metrics"))


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `mslesion train`.")],
    data: Annotated[Path | None, typer.Argument(help="Patch file; default: the run's data, test split.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    abstain: Annotated[float, typer.Option(help="Confidence below which a prediction is 'uncertain' (0 = never).")]
    = 0.0,
) -> None:
    """Evaluate a trained run: metrics.json and predictions.csv in the run folder, and a table."""
    from mslesion.evaluate import metrics_table

    metrics = _evaluate(run, data, device, abstain)
    console.print(metrics_table(metrics, f"{run}: {'test' if data is None else data} metrics"))


def _evaluate(run: Path, data: Path | None, device: str, abstain: float = 0.0) -> dict:
    from mslesion.config import EvaluateConfig
    from mslesion.evaluate import evaluate as run_evaluation

    return run_evaluation(EvaluateConfig(run=str(run), data=str(data or ""), device=device, abstain=abstain))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the cohort and the runs.")] = Path("demo_runs"),
    full: Annotated[bool, typer.Option(help="The paper protocol: full cohort, 48 symmetries, 15 epochs (hours on "
                                            "a CPU; minutes on a GPU).")] = False,
    device: Annotated[str, typer.Option()] = "cpu",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate a synthetic cohort, train all 7 channel combinations and print a Table-3-style result."""
    from mslesion.demo import run_demo

    run_demo(out, full=full, device=device, seed=seed, console=console)
