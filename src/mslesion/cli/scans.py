"""Commands: extract and predict (NIfTI/BIDS subjects in, lesion patches and per-lesion predictions out)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, err_console

SOURCE_HELP = "A BIDS-style folder or a CSV manifest (subject,flair,qsm,mask,phenotype); or use --mask etc."
Flair = Annotated[Path | None, typer.Option(help="FLAIR image (one subject).")]
Qsm = Annotated[Path | None, typer.Option(help="QSM image, ppm or ppb (one subject).")]
Mask = Annotated[Path | None, typer.Option(help="Lesion mask: binary, or an instance map with --instances.")]
Phenotype = Annotated[Path | None, typer.Option(
    help="Labels: phenotype map (voxels = Table 1 codes) or a CSV with columns lesion,label.")]
SubjectId = Annotated[str | None, typer.Option("--subject", help="Subject id (default: from the mask's name).")]
MinVolume = Annotated[float, typer.Option("--min-volume", help="Drop lesions smaller than this (mm³).")]
Connectivity = Annotated[int, typer.Option(help="6 or 26-connected components of a binary mask.")]
Instances = Annotated[bool, typer.Option(help="The mask is an instance map (one integer per lesion).")]
Resample = Annotated[bool, typer.Option(help="Resample images onto the QSM (else FLAIR) grid instead of failing "
                                              "when grids differ.")]
VoxelSize = Annotated[str, typer.Option(help="Resample to this voxel size in mm ('1' or '1,1,1.5').")]
Quiet = Annotated[bool, typer.Option(help="No progress bar.")]


def _voxel_size(text: str) -> tuple[float, ...]:
    from mslesion.errors import InputError

    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--voxel-size expects numbers in mm, got {text!r}") from None


def _print_notes(subject: str, notes: list[str]) -> None:
    for note in notes:
        err_console.print(f"[yellow]note[/] {subject}: {note}", highlight=False, soft_wrap=True)


@app.command()
def extract(
    source: Annotated[Path | None, typer.Argument(help=SOURCE_HELP)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Patch file to write (HDF5); NAME_lesions.csv (one row "
                                                          "per lesion) and NAME_extract.json go beside it.")] = Path(
        "patches.h5"),
    flair: Flair = None, qsm: Qsm = None, mask: Mask = None, phenotype: Phenotype = None, subject: SubjectId = None,
    channels: Annotated[str, typer.Option(help="Channels to extract, e.g. flair,qsm,mask (default: those every "
                                               "subject has).")] = "",
    patch_size: Annotated[int, typer.Option(help="Patch edge in voxels.")] = 35,
    min_volume: MinVolume = 10.0, connectivity: Connectivity = 6, instances: Instances = False,
    resample: Resample = False, voxel_size: VoxelSize = "", quiet: Quiet = False,
) -> None:
    """Cut one patch per lesion out of NIfTI subjects into a patch file (the format `train` reads)."""
    from mslesion.data.extract import ExtractConfig, run_extract, sidecar_paths
    from mslesion.data.subjects import discover
    from mslesion.data.task import parse_channels

    cfg = ExtractConfig(out=str(out), channels=parse_channels(channels) if channels else (), patch_size=patch_size,
                        min_volume_mm3=min_volume, connectivity=connectivity, instances=instances,
                        resample=resample, voxel_size_mm=_voxel_size(voxel_size))
    subjects = discover(source, mask, flair, qsm, phenotype, subject)
    results = run_extract(subjects, cfg, show_progress=not quiet)
    for result in results:
        _print_notes(result.subject, result.notes)
        if not len(result):
            console.print(f"{result.subject}: no lesions of at least {min_volume:g} mm³")
    total = sum(len(r) for r in results)
    csv_path, _ = sidecar_paths(out)
    if not total:
        console.print(f"no lesions found: wrote the (empty) lesion table {csv_path}, no patch file")
        return
    console.print(f"wrote {total} lesion patches of {len(results)} subject(s) to {out}; per lesion: {csv_path}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by `mslesion train`.")],
    source: Annotated[Path | None, typer.Argument(help=SOURCE_HELP + " Or a patch file (.h5).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("predictions"),
    flair: Flair = None, qsm: Qsm = None, mask: Mask = None, phenotype: Phenotype = None, subject: SubjectId = None,
    tta: Annotated[bool, typer.Option(help="Average over the 48 cube symmetries; report their spread.")] = False,
    abstain: Annotated[float, typer.Option(help="Call a lesion 'uncertain' when its top probability is below "
                                                "this (0 = never).")] = 0.0,
    min_volume: MinVolume = 10.0, connectivity: Connectivity = 6, instances: Instances = False,
    resample: Resample = False, voxel_size: VoxelSize = "",
    batch_size: Annotated[int, typer.Option(help="Lesions per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N.")] = "cpu",
    precision: Annotated[str, typer.Option(help="fp32 | bf16 | auto.")] = "fp32",
    threads: Annotated[int, typer.Option(help="CPU threads (0 = torch default).")] = 0,
    quiet: Quiet = False,
) -> None:
    """Classify every lesion of new subjects: per-lesion CSV, label and probability maps, summaries."""
    from mslesion.data.subjects import discover
    from mslesion.predict import PredictConfig, predict_patch_file, predict_subjects

    cfg = PredictConfig(run=str(run), out=str(out), tta=tta, abstain=abstain, batch_size=batch_size, device=device,
                        precision=precision, threads=threads, min_volume_mm3=min_volume, connectivity=connectivity,
                        instances=instances, resample=resample, voxel_size_mm=_voxel_size(voxel_size))
    if source is not None and source.suffix.lower() in (".h5", ".hdf5"):
        summaries = predict_patch_file(cfg, source, show_progress=not quiet)
    else:
        summaries = predict_subjects(cfg, discover(source, mask, flair, qsm, phenotype, subject), not quiet)
    for summary in summaries:
        _print_notes(summary["subject"], summary.get("notes", []))
        counts = ", ".join(f"{k[2:]} {v}" for k, v in summary.items() if k.startswith("n_") and v)
        message = f"{summary['lesions']} lesions" + (f" ({counts})" if counts else "")
        if not summary["lesions"]:
            message = f"no lesions of at least {min_volume:g} mm³"
        console.print(f"{summary['subject']}: {message}")
    console.print(f"wrote predictions to {out}")
