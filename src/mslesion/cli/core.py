"""Core commands: synth, train, evaluate, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, joined, option, parse_ints
from mslesion.config import DemoConfig, EvaluateConfig, SynthConfig, TrainConfig

TRAIN, EVALUATE, DEMO, SYNTH = TrainConfig(), EvaluateConfig(), DemoConfig(), SynthConfig()


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Patch file to write (HDF5).")] = Path("cohort.h5"),
    patients: Annotated[int, option(SynthConfig, "patients")] = SYNTH.patients,
    lesions_scale: Annotated[float, option(SynthConfig, "lesions_scale")] = SYNTH.lesions_scale,
    labelled_only: Annotated[bool, option(SynthConfig, "labelled_only")] = SYNTH.labelled_only,
    seed: Annotated[int, option(SynthConfig, "seed")] = SYNTH.seed,
    volumes: Annotated[int, typer.Option(help="Instead of patches, write this many whole-subject NIfTI "
                                              "volumes in a BIDS-style folder at --out.")] = 0,
    lesions_per_subject: Annotated[float, typer.Option(
        help="With --volumes: mean lesions per subject (0 = the paper's rate × --lesions-scale).")] = 0.0,
    voxel_size: Annotated[float, typer.Option(help="With --volumes: isotropic voxel size in mm.")] = 1.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file (or folder with --volumes).")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Generate the synthetic cohort (physically simulated QSM, FLAIR and lesion masks)."""
    from mslesion.atomic import check_file_output
    from mslesion.data.synth import write_cohort

    cfg = SynthConfig(patients=patients, lesions_scale=lesions_scale, labelled_only=labelled_only, seed=seed)
    if volumes:
        write_volumes(cfg, out, volumes, lesions_per_subject or None, voxel_size, quiet, overwrite)
        return
    check_file_output(out, overwrite)
    patches = write_cohort(cfg, out)
    counts = {int(c): int((patches.labels == c).sum()) for c in sorted(set(patches.labels.tolist()))}
    console.print(f"wrote {len(patches)} lesion patches of {len(set(patches.patients))} patients to {out}; "
                  f"per class: {counts}")


def write_volumes(cfg, out: Path, n_subjects: int, lesions_per_subject: float | None, voxel_size: float,
                  quiet: bool, overwrite: bool) -> None:
    """`synth --volumes`: whole-subject scans; the brain keeps its size in mm whatever the voxel size."""
    from mslesion.atomic import check_folder_output, staged_folder
    from mslesion.data.synth import generate_subject_volumes, subject_shape
    from mslesion.errors import InputError
    from mslesion.progress import progress_bar

    if lesions_per_subject is not None and lesions_per_subject < 0:
        raise InputError(f"--lesions-per-subject must be >= 0, got {lesions_per_subject}")
    shape = subject_shape(voxel_size)
    check_folder_output(out, overwrite)
    with progress_bar(not quiet) as bars, staged_folder(out) as tmp:  # complete subjects, or the old folder
        bar = bars.task("subjects", n_subjects)
        folders = generate_subject_volumes(cfg, tmp, n_subjects, shape, voxel_size, lesions_per_subject,
                                           progress=lambda done, total: bar.advance())
        lesions = sum(len((folder / "lesions.csv").read_text().splitlines()) - 1 for folder in folders)
    console.print(f"wrote {n_subjects} subjects ({lesions} lesions, {shape[0]}×{shape[1]}×{shape[2]} voxels of "
                  f"{voxel_size:g} mm) to {out}")


@app.command("train")
def train_command(
    data: Annotated[Path, typer.Argument(help="Patch file (HDF5).")],
    out: Annotated[Path, option(TrainConfig, "out", "--out", "-o")] = Path(TRAIN.out),
    channels: Annotated[str, option(TrainConfig, "channels")] = joined(TRAIN.channels),
    classes: Annotated[str, option(TrainConfig, "classes")] = TRAIN.classes,
    task: Annotated[str, option(TrainConfig, "task")] = TRAIN.task,
    class_weights: Annotated[str, option(TrainConfig, "class_weights")] = TRAIN.class_weights,
    arch: Annotated[str, option(TrainConfig, "arch")] = TRAIN.arch,
    init: Annotated[str, option(TrainConfig, "init")] = TRAIN.init,
    init_norm: Annotated[str, option(TrainConfig, "init_norm")] = TRAIN.init_norm,
    split: Annotated[str, option(TrainConfig, "split")] = TRAIN.split,
    train_fraction: Annotated[float, option(TrainConfig, "train_fraction")] = TRAIN.train_fraction,
    augment: Annotated[str, option(TrainConfig, "augment")] = TRAIN.augment,
    input_norm: Annotated[str, option(TrainConfig, "input_norm")] = TRAIN.input_norm,
    epochs: Annotated[int, option(TrainConfig, "epochs")] = TRAIN.epochs,
    batch_size: Annotated[int, option(TrainConfig, "batch_size")] = TRAIN.batch_size,
    lr: Annotated[float, option(TrainConfig, "lr")] = TRAIN.lr,
    lr_milestones: Annotated[str, option(TrainConfig, "lr_milestones")] = joined(TRAIN.lr_milestones),
    oversample: Annotated[str, option(TrainConfig, "oversample")] = joined(TRAIN.oversample),
    val_fraction: Annotated[float, option(TrainConfig, "val_fraction")] = TRAIN.val_fraction,
    val_every: Annotated[int, option(TrainConfig, "val_every")] = TRAIN.val_every,
    select: Annotated[str, option(TrainConfig, "select")] = TRAIN.select,
    cv: Annotated[int, option(TrainConfig, "cv_folds", "--cv")] = TRAIN.cv_folds,
    fold: Annotated[int, typer.Option(help="With --cv: the fold used as test set.")] = 0,
    seed: Annotated[int, option(TrainConfig, "seed")] = TRAIN.seed,
    device: Annotated[str, option(TrainConfig, "device")] = TRAIN.device,
    precision: Annotated[str, option(TrainConfig, "precision")] = TRAIN.precision,
    threads: Annotated[int, option(TrainConfig, "threads")] = TRAIN.threads,
    in_memory: Annotated[str, option(TrainConfig, "in_memory")] = TRAIN.in_memory,
    shuffle_window: Annotated[int, option(TrainConfig, "shuffle_window")] = TRAIN.shuffle_window,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier run in --out (kept until the new model is "
                                                 "complete).")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train the paper's 3D CNN on a patch file and evaluate it on the held-out test split."""
    from mslesion.config import parse_channels
    from mslesion.distributed import is_main_process
    from mslesion.evaluate import evaluate, metrics_table
    from mslesion.train import train

    cfg = TrainConfig(
        data=str(data.resolve()), out=str(out), channels=parse_channels(channels), classes=classes, task=task,
        class_weights=class_weights, arch=arch, init=init, init_norm=init_norm, split=split,
        train_fraction=train_fraction, augment=augment, input_norm=input_norm, epochs=epochs, batch_size=batch_size,
        lr=lr, lr_milestones=parse_ints(lr_milestones, "--lr-milestones"),
        oversample=parse_ints(oversample, "--oversample"),
        val_fraction=val_fraction, val_every=val_every, select=select, cv_folds=cv, fold=fold if cv > 1 else -1,
        seed=seed, device=device, precision=precision, threads=threads, in_memory=in_memory,
        shuffle_window=shuffle_window,
    )
    run_dir = train(cfg, resume=resume, show_progress=not quiet, overwrite=overwrite)
    if not is_main_process():  # under torchrun only rank 0 evaluates and writes
        return
    metrics = evaluate(EvaluateConfig(run=str(run_dir), device=device, in_memory=in_memory))
    console.print(metrics_table(metrics, f"{run_dir}: test metrics"))


@app.command("evaluate")
def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `mslesion train`.")],
    data: Annotated[Path | None, typer.Argument(help="Patch file; default: the run's data, test split.")] = None,
    device: Annotated[str, option(EvaluateConfig, "device")] = EVALUATE.device,
    abstain: Annotated[float, option(EvaluateConfig, "abstain")] = EVALUATE.abstain,
    in_memory: Annotated[str, option(EvaluateConfig, "in_memory")] = EVALUATE.in_memory,
    tta: Annotated[bool, option(EvaluateConfig, "tta")] = EVALUATE.tta,
) -> None:
    """Evaluate a trained run: metrics.json and predictions.csv in the run folder, and a table."""
    from mslesion.evaluate import evaluate, metrics_table

    metrics = evaluate(EvaluateConfig(run=str(run), data=str(data or ""), device=device, abstain=abstain,
                                      in_memory=in_memory, tta=tta))
    console.print(metrics_table(metrics, f"{run}: {'test' if data is None else data} metrics"))


@app.command("demo")
def demo_command(
    out: Annotated[Path, option(DemoConfig, "out", "--out", "-o")] = Path(DEMO.out),
    full: Annotated[bool, option(DemoConfig, "full")] = DEMO.full,
    device: Annotated[str, option(DemoConfig, "device")] = DEMO.device,
    seed: Annotated[int, option(DemoConfig, "seed")] = DEMO.seed,
) -> None:
    """Generate a synthetic cohort, train all 7 channel combinations and print a Table-3-style result."""
    from mslesion.demo import run_demo

    run_demo(DemoConfig(out=str(out), full=full, device=device, seed=seed), console=console)


@app.command("models")
def models_command() -> None:
    """List the built-in starter models (use one as `predict builtin:<name>` or `train --init builtin:<name>`)."""
    from rich.table import Table

    from mslesion.runs import builtin_models

    table = Table(title="Built-in starter models: trained on simulated data only, never validated on real QSM")
    for column in ("name", "channels", "task", "classes", "trained on", "test figures"):
        table.add_column(column)
    for card in builtin_models():
        table.add_row(card["name"], card["channels"], card["task"], card["classes"], card["training_data"],
                      card["test"])
    console.print(table)
