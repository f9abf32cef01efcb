"""Commands: extract and predict (NIfTI/BIDS subjects in, lesion patches and per-lesion predictions out)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, err_console, joined, option, parse_floats
from mslesion.config import ExtractConfig, LesionFinding, PredictConfig

EXTRACT, PREDICT, FINDING = ExtractConfig(), PredictConfig(), LesionFinding()
SOURCE_HELP = "A BIDS-style folder or a CSV manifest (subject,flair,qsm,mask,phenotype); or use --mask etc."
Flair = Annotated[Path | None, typer.Option(help="FLAIR image (one subject).")]
Qsm = Annotated[Path | None, typer.Option(help="QSM image, ppm or ppb (one subject).")]
Mask = Annotated[Path | None, typer.Option(help="Lesion mask: binary, or an instance map with --instances.")]
Phenotype = Annotated[Path | None, typer.Option(
    help="Labels: phenotype map (voxels = Table 1 codes) or a CSV with columns lesion,label.")]
SubjectId = Annotated[str | None, typer.Option("--subject", help="Subject id (default: from the mask's name).")]
MinVolume = Annotated[float, option(LesionFinding, "min_volume_mm3", "--min-volume")]
Connectivity = Annotated[int, option(LesionFinding, "connectivity")]
Instances = Annotated[bool, option(LesionFinding, "instances")]
Resample = Annotated[bool, option(LesionFinding, "resample")]
VoxelSize = Annotated[str, option(LesionFinding, "voxel_size_mm", "--voxel-size")]
SplitConfluent = Annotated[bool, option(LesionFinding, "split_confluent")]
Quiet = Annotated[bool, typer.Option(help="No progress bar.")]
Overwrite = Annotated[bool, typer.Option(help="Replace earlier results at --out (kept until the new ones are "
                                              "complete).")]
ContinueOnError = Annotated[bool, typer.Option(help="Skip subjects that cannot be read, list them with the reason "
                                                    "(errors.csv) and exit non-zero; default: stop at the first.")]


def lesion_finding(min_volume: float, connectivity: int, instances: bool, resample: bool,
                   voxel_size: str, split_confluent: bool) -> LesionFinding:
    return LesionFinding(min_volume_mm3=min_volume, connectivity=connectivity, instances=instances,
                         resample=resample, voxel_size_mm=parse_floats(voxel_size, "--voxel-size"),
                         split_confluent=split_confluent)


def _print_notes(subject: str, notes: list[str]) -> None:
    for note in notes:
        err_console.print(f"[yellow]note[/] {subject}: {note}", highlight=False, soft_wrap=True)


@app.command("extract")
def extract_command(
    source: Annotated[Path | None, typer.Argument(help=SOURCE_HELP)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Patch file to write (HDF5); NAME_lesions.csv (one row "
                                                          "per lesion), NAME_labels_template.csv (for a rater) and "
                                                          "NAME_extract.json go beside it.")] = Path(
        EXTRACT.out),
    flair: Flair = None, qsm: Qsm = None, mask: Mask = None, phenotype: Phenotype = None, subject: SubjectId = None,
    labels: Annotated[Path | None, typer.Option(
        help="One labels CSV for every subject: a filled-in NAME_labels_template.csv (subject,lesion,part,label; "
             "an empty label = unlabelled).")] = None,
    channels: Annotated[str, typer.Option(help="Channels to extract, e.g. flair,qsm,mask (default: those every "
                                               "subject has).")] = "",
    patch_size: Annotated[int, option(ExtractConfig, "patch_size")] = EXTRACT.patch_size,
    min_volume: MinVolume = FINDING.min_volume_mm3, connectivity: Connectivity = FINDING.connectivity,
    instances: Instances = FINDING.instances, resample: Resample = FINDING.resample,
    voxel_size: VoxelSize = joined(FINDING.voxel_size_mm), split_confluent: SplitConfluent = FINDING.split_confluent,
    float16: Annotated[bool, option(ExtractConfig, "float16")] = EXTRACT.float16,
    jobs: Annotated[int, typer.Option(help="Subjects extracted in parallel processes; the output is the same for "
                                           "any number.")] = 1,
    overwrite: Overwrite = False, continue_on_error: ContinueOnError = False, quiet: Quiet = False,
) -> None:
    """Cut one patch per lesion out of NIfTI subjects into a patch file (the format `train` reads)."""
    from mslesion.config import parse_channels
    from mslesion.data.extract import errors_path, labels_template_path, run_extract, sidecar_paths
    from mslesion.data.subjects import discover, unmatched_label_subjects, with_labels

    cfg = ExtractConfig(out=str(out), channels=parse_channels(channels) if channels else (), patch_size=patch_size,
                        finding=lesion_finding(min_volume, connectivity, instances, resample, voxel_size,
                                               split_confluent), float16=float16)
    subjects = discover(source, mask, flair, qsm, phenotype, subject)
    if labels is not None:
        subjects = with_labels(subjects, labels)
        unmatched = unmatched_label_subjects(subjects, labels)
        if unmatched:
            shown = ", ".join(unmatched[:5]) + (" …" if len(unmatched) > 5 else "")
            _print_notes(labels.name, [f"rows for subject(s) {shown} match no subject given (a typo in an id?); "
                                       "they are ignored"])
    results, failures = run_extract(subjects, cfg, not quiet, overwrite, continue_on_error, jobs)
    for result in results:
        _print_notes(result.subject, result.notes)
        if not len(result):
            console.print(f"{result.subject}: no lesions of at least {min_volume:g} mm³")
    total = sum(len(r) for r in results)
    csv_path, _ = sidecar_paths(out)
    if not total:
        console.print(f"no lesions found: wrote the (empty) lesion table {csv_path}, no patch file")
    else:
        console.print(f"wrote {total} lesion patches of {len(results)} subject(s) to {out}; per lesion: {csv_path}; "
                      f"for a rater to label: {labels_template_path(out)}", soft_wrap=True)  # paths stay whole
    report_failures(failures, len(results) + len(failures), errors_path(out))


@app.command("predict")
def predict_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `mslesion train`.")],
    source: Annotated[Path | None, typer.Argument(help=SOURCE_HELP + " Or a patch file (.h5).")] = None,
    out: Annotated[Path, option(PredictConfig, "out", "--out", "-o")] = Path(PREDICT.out),
    flair: Flair = None, qsm: Qsm = None, mask: Mask = None, phenotype: Phenotype = None, subject: SubjectId = None,
    tta: Annotated[bool, option(PredictConfig, "tta")] = PREDICT.tta,
    abstain: Annotated[float, option(PredictConfig, "abstain")] = PREDICT.abstain,
    keep_ood: Annotated[bool, option(PredictConfig, "keep_ood")] = PREDICT.keep_ood,
    prl_count: Annotated[int, option(PredictConfig, "prl_count")] = PREDICT.prl_count,
    min_volume: MinVolume = FINDING.min_volume_mm3, connectivity: Connectivity = FINDING.connectivity,
    instances: Instances = FINDING.instances, resample: Resample = FINDING.resample,
    voxel_size: VoxelSize = joined(FINDING.voxel_size_mm), split_confluent: SplitConfluent = FINDING.split_confluent,
    batch_size: Annotated[int, option(PredictConfig, "batch_size")] = PREDICT.batch_size,
    device: Annotated[str, option(PredictConfig, "device")] = PREDICT.device,
    precision: Annotated[str, option(PredictConfig, "precision")] = PREDICT.precision,
    threads: Annotated[int, option(PredictConfig, "threads")] = PREDICT.threads,
    in_memory: Annotated[str, option(PredictConfig, "in_memory")] = PREDICT.in_memory,
    overwrite: Overwrite = False, continue_on_error: ContinueOnError = False, quiet: Quiet = False,
) -> None:
    """Classify every lesion of new subjects into a BIDS derivative folder: label and probability maps, lesion
    tables, summaries (a patch file: tables only). Later runs add subjects; --overwrite replaces existing ones."""
    from mslesion.data.extract import FLAGS
    from mslesion.data.subjects import discover
    from mslesion.predict import predict_patch_file, predict_subjects
    from mslesion.runs import PREDICTION_ERRORS

    cfg = PredictConfig(run=str(run), out=str(out), tta=tta, abstain=abstain, batch_size=batch_size, device=device,
                        precision=precision, threads=threads, keep_ood=keep_ood, prl_count=prl_count,
                        in_memory=in_memory,
                        finding=lesion_finding(min_volume, connectivity, instances, resample, voxel_size,
                                               split_confluent))
    failures: list[dict] = []
    if source is not None and source.suffix.lower() in (".h5", ".hdf5"):
        summaries = predict_patch_file(cfg, source, show_progress=not quiet, overwrite=overwrite)
    else:
        subjects = discover(source, mask, flair, qsm, phenotype, subject)
        summaries, failures = predict_subjects(cfg, subjects, not quiet, overwrite, continue_on_error,
                                               command=command_line())
    for summary in summaries:
        name = "_".join(filter(None, (summary.get("participant_id") or summary.get("subject"),
                                      summary.get("session_id"))))
        _print_notes(name, summary.get("notes", []))
        counts = ", ".join(f"{k[2:]} {v}" for k, v in summary.items()
                           if k.startswith("n_") and k[2:] not in FLAGS and v)
        message = f"{summary['lesions']} lesions" + (f" ({counts})" if counts else "")
        if not summary["lesions"]:
            message = f"no lesions of at least {min_volume:g} mm³"
        console.print(f"{name}: {message}")
    console.print(f"wrote predictions to {out}")
    report_failures(failures, len(summaries) + len(failures), out / PREDICTION_ERRORS)


def command_line() -> str:
    """This command as typed (recorded in the prediction folder's dataset_description.json)."""
    import shlex
    import sys

    return shlex.join(["mslesion", *sys.argv[1:]])


def report_failures(failures: list[dict], total: int, table: Path) -> None:
    """--continue-on-error: each failed subject on a line, then the command fails (exit 2) naming the table."""
    from mslesion.errors import InputError

    for failure in failures:
        console.print(f"[red]failed[/] {failure['subject']}: {failure['error']}", highlight=False, soft_wrap=True)
    if failures:
        raise InputError(f"{len(failures)} of {total} subjects failed; the others were written (reasons in {table})")
