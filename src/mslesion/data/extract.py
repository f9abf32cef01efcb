"""NIfTI subjects → lesions → 35³ patches: the one code path shared by `extract` and `predict`.

Lesions are the 3D connected components of a binary mask (or the integer ids of an instance map), minus
those under a minimum volume. Each patch is centred on its lesion's centre of mass (moved to the nearest
lesion voxel when the centre falls outside a non-convex lesion) and padded with zeros at the volume edge.
The mask channel marks the centred lesion only, as in the paper's patches: neighbours show in FLAIR and
QSM but the label belongs to the lesion in the mask.

With `split_confluent` each kept component is split into its lesions (`data.lesions.split_confluent`); every
part is then a lesion of its own here (patch, row, label-map id), named by (component id, part number).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
from scipy import ndimage

from mslesion import __version__
from mslesion.atomic import atomic_path, check_file_output, csv_text, write_atomic
from mslesion.config import ExtractConfig, LesionFinding, to_dict
from mslesion.data.intensity import NORMALISATION, normalised
from mslesion.data.lesions import split_confluent
from mslesion.data.nifti import ImageGrid, load_aligned
from mslesion.data.patches import PatchSet, write_patches
from mslesion.data.subjects import Subject
from mslesion.errors import InputError
from mslesion.paper import MS_CHANNELS
from mslesion.progress import progress_bar

LESION_COLUMNS = ("subject", "lesion", "part", "voxels", "volume_mm3", "centre_i", "centre_j", "centre_k",
                  "x_mm", "y_mm", "z_mm", "label", "flags")
# The table a rater fills in (one row per lesion, `label` empty) and gives back as the labels CSV (--labels)
LABELS_TEMPLATE_COLUMNS = ("subject", "lesion", "part", "x_mm", "y_mm", "z_mm", "centre_i", "centre_j", "centre_k",
                           "volume_mm3", "label")
# Per-lesion warnings, in the `flags` column (names joined by ';'). The patch stays centred on the lesion.
LARGER_THAN_PATCH = "larger_than_patch"  # part of the lesion lies outside its patch
TOUCHES_EDGE = "touches_edge"  # the lesion touches the volume's border: it may continue outside the scan
FLAGS = (LARGER_THAN_PATCH, TOUCHES_EDGE)


@dataclass
class SubjectLesions:
    """The lesions of one subject: patches, labels, a per-lesion table and the map they came from."""

    subject: str
    grid: ImageGrid
    lesion_map: np.ndarray  # int32 canonical array: map id per voxel (0 elsewhere); see LesionMap
    map_ids: np.ndarray  # int64 [n] each kept lesion's id in lesion_map
    lesion_ids: np.ndarray  # int64 [n] connected component (or instance) id of each kept lesion
    parts: np.ndarray  # int64 [n] part number within its component, 0 when not split
    patches: np.ndarray  # float32 [n, C, p, p, p]
    labels: np.ndarray  # int64 [n] Table 1 code, 0 = unknown
    records: list[dict]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lesion_ids)


def resolve_channels(cfg: ExtractConfig, subjects: list[Subject]) -> tuple[str, ...]:
    """The configured channels, or those all subjects have (in the paper's order)."""
    if cfg.channels:
        return cfg.channels
    return tuple(c for c in MS_CHANNELS if all(c in s.available_channels for s in subjects))


@dataclass
class LesionMap:
    """The lesions to cut: a map with one id per lesion, and each kept lesion's component and part.

    Without splitting the map is the component map itself (small, dropped components included, so that the
    label map shows them as background only where they were dropped); with splitting it holds the parts of the
    kept components, numbered 1..n."""

    map: np.ndarray  # int32
    map_ids: np.ndarray  # int64 [n]
    lesion_ids: np.ndarray  # int64 [n]
    parts: np.ndarray  # int64 [n]


def extract_subject(subject: Subject, cfg: ExtractConfig, channels: tuple[str, ...]) -> SubjectLesions:
    """Load, check and normalise one subject's images and cut one patch per lesion."""
    for channel in channels:
        if subject.image(channel) is None:
            raise InputError(f"subject {subject.id} has no {channel.upper()} image, which channel "
                             f"'{channel}' needs", subject.mask)
    paths = {role: subject.image(role) for role in ("flair", "qsm") if role in channels}
    paths["mask"] = subject.mask
    labels_csv = None
    notes: list[str] = []
    if subject.phenotype is not None and subject.phenotype.suffix.lower() == ".csv":
        labels_csv = read_lesion_labels(subject.phenotype, subject.id, notes)
    elif subject.phenotype is not None:
        paths["phenotype"] = subject.phenotype
    reference = next(r for r in ("qsm", "flair", "mask") if r in paths)
    grid, arrays = load_aligned(paths, reference, cfg.finding.resample, cfg.finding.target_voxel_size)
    components = lesion_components(arrays["mask"], cfg.finding, subject.mask, notes)
    if labels_csv is not None:
        check_csv_ids(labels_csv, components, subject)
    ids, _ = kept_lesions(components, grid.voxel_volume_mm3, cfg.finding.min_volume_mm3)
    check_patch_fits(cfg.patch_size, grid.shape, subject.mask)
    images = {c: normalised(c, arrays[c], components > 0, notes, subject.image(c)) for c in channels if c != "mask"}
    lesions = lesion_map(components, ids, grid, cfg.finding.split_confluent)
    if labels_csv is not None:
        check_csv_parts(labels_csv, lesions, subject)
    objects = ndimage.find_objects(lesions.map)
    boxes = [objects[i - 1] for i in lesions.map_ids]
    centres = np.array([lesion_centre(lesions.map, box, i, grid) for box, i in zip(boxes, lesions.map_ids,
                                                                                   strict=True)], dtype=np.int64)
    labels = lesion_labels(lesions, boxes, arrays.get("phenotype"), labels_csv, subject,
                           mixed_is_unclassified=not cfg.finding.split_confluent)
    patches = cut_patches(lesions.map, lesions.map_ids, centres, images, channels, cfg.patch_size)
    flags = lesion_flags(boxes, centres, cfg.patch_size, grid.shape)
    sizes = np.bincount(lesions.map.ravel())[lesions.map_ids] if len(lesions.map_ids) else np.zeros(0, np.int64)
    records = lesion_records(subject.id, lesions, sizes, centres, labels, flags, grid)
    return SubjectLesions(subject.id, grid, lesions.map, lesions.map_ids, lesions.lesion_ids, lesions.parts, patches,
                          labels, records, notes)


def lesion_map(components: np.ndarray, ids: np.ndarray, grid: ImageGrid, split: bool) -> LesionMap:
    """The kept components as they are, or split into their lesions (parts)."""
    if not split:
        return LesionMap(components, ids, ids, np.zeros(len(ids), np.int64))
    parts_map, owners = split_confluent(components, ids, grid.voxel_size_mm)
    owner = np.array(owners, dtype=np.int64).reshape(-1, 2)
    return LesionMap(parts_map, np.arange(1, len(owners) + 1, dtype=np.int64), owner[:, 0], owner[:, 1])


def lesion_flags(boxes: list[tuple[slice, ...]], centres: np.ndarray, size: int,
                 shape: tuple[int, ...]) -> list[tuple[str, ...]]:
    """Per lesion, the FLAGS that apply: its bounding box leaves its patch, or reaches the volume's border."""
    flags = []
    for box, centre in zip(boxes, centres, strict=True):
        start = centre - size // 2  # as crop_patch cuts it
        outside = any(b.start < lo or b.stop > lo + size for b, lo in zip(box, start, strict=True))
        edge = any(b.start == 0 or b.stop == n for b, n in zip(box, shape, strict=True))
        flags.append(tuple(name for name, on in ((LARGER_THAN_PATCH, outside), (TOUCHES_EDGE, edge)) if on))
    return flags


def cut_patches(lesion_map: np.ndarray, ids: np.ndarray, centres: np.ndarray, images: dict[str, np.ndarray],
                channels: tuple[str, ...], size: int) -> np.ndarray:
    """float32 [n, C, size³]: the channels around each centre; the mask channel shows that lesion only."""
    patches = np.zeros((len(ids), len(channels), size, size, size), np.float32)
    for n, (lesion, centre) in enumerate(zip(ids, centres, strict=True)):
        for c, channel in enumerate(channels):
            if channel == "mask":
                patches[n, c] = crop_patch(lesion_map, centre, size) == lesion
            else:
                patches[n, c] = crop_patch(images[channel], centre, size)
    return patches


def lesion_components(mask: np.ndarray, cfg: LesionFinding, path: Path, notes: list[str] | None = None) -> np.ndarray:
    """Lesion id per voxel: connected components of a binary mask, or the values of an instance map."""
    notes = [] if notes is None else notes
    if not np.isfinite(mask).all():
        raise InputError("the lesion mask contains NaN or infinite values", path)
    structure = ndimage.generate_binary_structure(3, 1 if cfg.connectivity == 6 else 3)
    if cfg.instances:
        if mask.min() < 0 or not np.array_equal(mask, np.round(mask)):
            raise InputError("an instance map must hold non-negative integers (one id per lesion)", path)
        if mask.max() > np.iinfo(np.int32).max:
            raise InputError(f"lesion id {int(mask.max())} is too large", path)
        instances = mask.astype(np.int32)
        warn_split_instances(instances, structure, notes)
        return instances
    labelled, _ = ndimage.label(binary_lesions(mask, path, notes), structure=structure)
    return labelled.astype(np.int32, copy=False)


def binary_lesions(mask: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Lesion voxels of a binary mask: 0/1 (within round-off), or any two values such as 0/255 (with a note)."""
    # Float masks written by other tools may hold 0.99999 for 1 (scaling round-off), not 0.5 (interpolation).
    binary, background = np.abs(mask - 1) <= 1e-3, np.abs(mask) <= 1e-3
    if (binary | background).all():
        return binary
    values = np.unique(mask[~background])
    if len(values) == 1 and values[0] > 0:  # one foreground value: 0/255 and the like
        notes.append(f"mask: values 0 and {values[0]:g} read as a binary mask")
        return ~background
    shown = ", ".join(f"{v:g}" for v in values[:5])
    raise InputError(f"a binary lesion mask must hold only 0 and one lesion value, found {shown} (an instance map "
                     "with one integer per lesion? use --instances)", path)


def warn_split_instances(instances: np.ndarray, structure: np.ndarray, notes: list[str]) -> None:
    """An instance id covering several disconnected blobs is most likely a binary mask passed with --instances."""
    objects = ndimage.find_objects(instances)
    split = []
    for lesion, box in enumerate(objects, start=1):
        if box is not None and ndimage.label(instances[box] == lesion, structure=structure)[1] > 1:
            split.append(lesion)
    if split:
        notes.append(f"mask: instance id(s) {', '.join(map(str, split[:5]))} cover several disconnected blobs, each "
                     "classified as one lesion (a binary mask? then leave out --instances)")


def kept_lesions(lesion_map: np.ndarray, voxel_volume_mm3: float, min_volume_mm3: float):
    """Ids and voxel counts of the lesions at least `min_volume_mm3` large, in id order."""
    sizes = np.bincount(lesion_map.ravel())
    sizes[0] = 0
    # A small tolerance so that e.g. 10 voxels of 1 mm³ stored as 0.99999 mm³ are not dropped at 10 mm³.
    keep = (sizes > 0) & (sizes * voxel_volume_mm3 >= min_volume_mm3 * (1 - 1e-6))
    ids = np.flatnonzero(keep).astype(np.int64)
    return ids, sizes[ids].astype(np.int64)


def check_patch_fits(patch_size: int, shape: tuple[int, ...], path: Path) -> None:
    if any(patch_size > s for s in shape):
        raise InputError(f"patch size {patch_size} is larger than the volume {'×'.join(map(str, shape))}", path)


def lesion_centre(lesion_map: np.ndarray, box: tuple[slice, ...], lesion: int, grid: ImageGrid) -> np.ndarray:
    """Centre of mass rounded to a voxel; the nearest lesion voxel (in mm) if that falls outside the lesion."""
    inside = lesion_map[box] == lesion
    coords = np.argwhere(inside)
    centre = np.rint(coords.mean(axis=0)).astype(np.int64)
    if not inside[tuple(centre)]:
        spacing = np.asarray(grid.voxel_size_mm)
        centre = coords[np.argmin((((coords - centre) * spacing) ** 2).sum(axis=1))]
    return centre + np.array([s.start for s in box])


def crop_patch(volume: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """The size³ cube around `centre` (at index size // 2), zero-padded where it leaves the volume."""
    start = np.asarray(centre) - size // 2
    out = np.zeros((size, size, size), volume.dtype)
    src, dst = [], []
    for axis in range(3):
        lo, hi = max(start[axis], 0), min(start[axis] + size, volume.shape[axis])
        src.append(slice(lo, hi))
        dst.append(slice(lo - start[axis], hi - start[axis]))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def check_csv_ids(labels_csv: dict[tuple[int, int], int], components: np.ndarray, subject: Subject) -> None:
    """A `lesion,label` CSV names components (the ids of the extract CSV): every id must exist."""
    missing = sorted({lesion for lesion, _ in labels_csv} - set(np.unique(components).tolist()))
    if missing:
        raise InputError(f"lesion ids {missing[:5]} are not in the lesion mask {subject.mask.name}", subject.phenotype)


def check_csv_parts(labels_csv: dict[tuple[int, int], int], lesions: LesionMap, subject: Subject) -> None:
    """A row for part N > 0 labels one lesion of a split union: this extraction must have cut that part (a
    template written with --split-confluent is read back with --split-confluent)."""
    cut = set(zip(lesions.lesion_ids.tolist(), lesions.parts.tolist(), strict=True))
    unknown = sorted(key for key in labels_csv if key[1] > 0 and key not in cut)
    if unknown:
        shown = ", ".join(f"lesion {lesion} part {part}" for lesion, part in unknown[:3])
        raise InputError(f"{shown}: no such part in this extraction (labels written with --split-confluent are "
                         "read back with --split-confluent)", subject.phenotype)


def lesion_labels(
    lesions: LesionMap, boxes: list[tuple[slice, ...]], phenotype: np.ndarray | None,
    labels_csv: dict[tuple[int, int], int] | None, subject: Subject, mixed_is_unclassified: bool = True,
) -> np.ndarray:
    """Table 1 code per lesion: the phenotype code inside it, or its component's CSV label; 0 = unknown.

    A lesion holding several non-zero codes is 1 (unclassified) when `mixed_is_unclassified`: the paper's class 1
    includes lesions "formed by multiple lesions from classes 2 to 6 merging together", so an unsplit confluent
    union of different types is not given the type of its largest part. A split part takes its majority code
    (a watershed boundary need not follow the phenotype map's to the voxel)."""
    if labels_csv is not None:  # a part's own row, else its component's (part 0: the whole union)
        return np.array([labels_csv.get((int(i), int(part)), labels_csv.get((int(i), 0), 0))
                         for i, part in zip(lesions.lesion_ids, lesions.parts, strict=True)], dtype=np.int64)
    if phenotype is None:
        return np.zeros(len(lesions.map_ids), np.int64)
    if phenotype.min() < 0 or not np.array_equal(phenotype, np.round(phenotype)):
        raise InputError("a phenotype map must hold non-negative integer codes", subject.phenotype)
    codes = np.zeros(len(lesions.map_ids), np.int64)
    for n, (lesion, box) in enumerate(zip(lesions.map_ids, boxes, strict=True)):
        codes[n] = lesion_code(phenotype[box][lesions.map[box] == lesion], mixed_is_unclassified)
    return codes


def lesion_code(values: np.ndarray, mixed_is_unclassified: bool = True) -> int:
    """The non-zero code among a lesion's phenotype values (0 when none); when they differ, 1 (unclassified) or
    the most frequent one."""
    codes = values[values > 0].astype(np.int64)
    if not len(codes):
        return 0
    counts = np.bincount(codes)
    if mixed_is_unclassified and np.count_nonzero(counts) > 1:
        return 1
    return int(np.argmax(counts))


def read_lesion_labels(path: Path, subject: str | None = None, notes: list[str] | None = None,
                       ) -> dict[tuple[int, int], int]:
    """A labels CSV: {(lesion id, part): Table 1 code}. Columns lesion,label (lesion id as in the mask or the extract
    CSV); optional `part` (a lesion of a union split by --split-confluent; 0 or absent = the whole component) and
    `subject` (the rows of other subjects are skipped, so one filled-in labels template serves every subject). An
    empty label is a lesion the rater left unlabelled (0); other columns (centres, volumes) are ignored."""
    if not path.exists():
        raise InputError("file not found", path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = {h.strip() for h in reader.fieldnames or ()}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"not a readable CSV ({exc})", path) from None
    if not {"lesion", "label"} <= fields:
        raise InputError("a lesion label CSV needs the columns lesion,label", path)
    by_subject = subject is not None and "subject" in fields
    labels: dict[tuple[int, int], int] = {}
    matched = False
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
        if by_subject and row["subject"] != subject:
            continue
        matched = True
        if not row["label"]:
            continue
        try:
            key, code = (int(row["lesion"]), int(row.get("part") or 0)), int(row["label"])
        except ValueError:
            raise InputError(f"line {line}: lesion, part and label must be integers", path) from None
        if code < 0 or key[1] < 0:
            raise InputError(f"line {line}: part and label must be ≥ 0 (label: a Table 1 code, 0 = unknown)", path)
        if labels.get(key, code) != code:
            raise InputError(f"line {line}: lesion {key[0]} part {key[1]} is labelled twice, differently", path)
        labels[key] = code
    if by_subject and not matched and notes is not None:
        notes.append(f"labels: {path.name} has no row for {subject}; its lesions are unlabelled")
    return labels


def lesion_records(subject: str, lesions: LesionMap, sizes: np.ndarray, centres: np.ndarray, labels: np.ndarray,
                   flags: list[tuple[str, ...]], grid: ImageGrid) -> list[dict]:
    """Per-lesion rows; voxel centres are indices in the input image's own orientation."""
    rows = []
    homogeneous = np.c_[centres, np.ones(len(centres))] if len(centres) else np.zeros((0, 4))
    world = homogeneous @ grid.affine.T
    original = world @ np.linalg.inv(grid.original_affine).T
    for n, lesion in enumerate(lesions.lesion_ids):
        i, j, k = (int(round(v)) for v in original[n, :3])
        x, y, z = (round(float(v), 2) for v in world[n, :3])
        rows.append({"subject": subject, "lesion": int(lesion), "part": int(lesions.parts[n]), "voxels": int(sizes[n]),
                     "volume_mm3": round(float(sizes[n]) * grid.voxel_volume_mm3, 3), "centre_i": i, "centre_j": j,
                     "centre_k": k, "x_mm": x, "y_mm": y, "z_mm": z, "label": int(labels[n]),
                     "flags": ";".join(flags[n])})
    return rows


def extract_subjects(
    subjects: list[Subject], cfg: ExtractConfig, channels: tuple[str, ...], show_progress: bool = True,
    continue_on_error: bool = False, jobs: int = 1,
) -> tuple[list[SubjectLesions], list[dict]]:
    """Every subject's lesions, and (with continue_on_error) the subjects that could not be read, with why.

    With jobs > 1 the subjects are extracted in that many processes; results are taken in the subjects' order,
    so the output (and the first error reported without continue_on_error) is the same for any number of jobs."""
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    results, failures = [], []
    with progress_bar(show_progress) as bars, subject_outcomes(subjects, cfg, channels, jobs) as outcomes:
        bar = bars.task("subjects", total=len(subjects))
        for subject, outcome in zip(subjects, outcomes, strict=True):
            if isinstance(outcome, InputError):
                if not continue_on_error:
                    raise outcome
                failures.append({"subject": subject.id, "error": str(outcome)})
            else:
                results.append(outcome)
            bar.advance()
    return results, failures


@contextmanager
def subject_outcomes(subjects: list[Subject], cfg: ExtractConfig, channels: tuple[str, ...], jobs: int):
    """Each subject's lesions or its InputError, in the subjects' order: here, or in `jobs` worker processes."""
    if jobs == 1 or len(subjects) < 2:
        yield (_extract_or_error(subject, cfg, channels) for subject in subjects)
        return
    # spawn, not fork: the parent may hold threads (the progress bar's) that a forked child would inherit locked
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(subjects)), mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool.map(_extract_or_error, subjects, repeat(cfg), repeat(channels))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, the subjects not yet started are dropped


def _extract_or_error(subject: Subject, cfg: ExtractConfig, channels: tuple[str, ...]) -> SubjectLesions | InputError:
    """An input error is a result, not an exception, so that every subject's outcome arrives in order."""
    try:
        return extract_subject(subject, cfg, channels)
    except InputError as exc:
        return exc


def sidecar_paths(out: Path) -> tuple[Path, Path]:
    """The per-lesion CSV and the config JSON written beside a patch file (patches_lesions.csv, ...).

    Suffixed names, so that `extract subjects.csv --out subjects.h5` cannot overwrite the manifest."""
    return out.with_name(f"{out.stem}_lesions.csv"), out.with_name(f"{out.stem}_extract.json")


def labels_template_path(out: Path) -> Path:
    """NAME_labels_template.csv: the lesions of the extraction with an empty label column, for a rater."""
    return out.with_name(f"{out.stem}_labels_template.csv")


def errors_path(out: Path) -> Path:
    """With --continue-on-error: the subjects that failed and why (NAME_errors.csv)."""
    return out.with_name(f"{out.stem}_errors.csv")


def check_outputs(out: Path, overwrite: bool) -> None:
    """The patch file and its companions are new, or replaced together with --overwrite."""
    for path in (out, *sidecar_paths(out), labels_template_path(out), errors_path(out)):
        check_file_output(path, overwrite)


def run_extract(subjects: list[Subject], cfg: ExtractConfig, show_progress: bool = True, overwrite: bool = False,
                continue_on_error: bool = False, jobs: int = 1) -> tuple[list[SubjectLesions], list[dict]]:
    """`mslesion extract`: every subject's lesion patches into one patch file, plus the per-lesion CSV.

    Nothing is written until every subject has been read, so a bad input leaves no partial output (with
    continue_on_error, the readable subjects are written and the others listed in NAME_errors.csv).
    """
    check_outputs(Path(cfg.out), overwrite)
    channels = resolve_channels(cfg, subjects)
    if not channels:
        raise InputError("no channel is available in every subject")
    results, failures = extract_subjects(subjects, cfg, channels, show_progress, continue_on_error, jobs)
    write_extraction(Path(cfg.out), results, cfg, channels, failures)
    return results, failures


def write_extraction(out: Path, results: list[SubjectLesions], cfg: ExtractConfig, channels: tuple[str, ...],
                     failures: list[dict] | None = None) -> None:
    """The patch file, its lesion table and its config JSON (and errors table), published together."""
    p = cfg.patch_size
    images = np.concatenate([r.patches for r in results]) if results else np.zeros((0, len(channels), p, p, p))
    voxel_sizes = {r.grid.voxel_size_mm for r in results}
    first = results[0].grid.voxel_size_mm if results else (1.0, 1.0, 1.0)
    patches = PatchSet(
        images=images.astype(np.float32, copy=False),
        labels=np.concatenate([r.labels for r in results]) if results else np.zeros(0, np.int64),
        patients=np.asarray([r.subject for r in results for _ in range(len(r))], dtype=object),
        lesions=np.concatenate([r.lesion_ids for r in results]) if results else np.zeros(0, np.int64),
        volume_mm3=np.array([row["volume_mm3"] for r in results for row in r.records], dtype=np.float64),
        parts=np.concatenate([r.parts for r in results]) if results else np.zeros(0, np.int64),
        channels=channels,
        voxel_size_mm=tuple(round(v, 4) for v in first),  # type: ignore[arg-type]
        source="mslesion extract",
        attrs={
            "normalisation": json.dumps(NORMALISATION),
            "subject_notes": json.dumps({r.subject: r.notes for r in results if r.notes}),
            "extract_config": json.dumps(to_dict(cfg)),
            "voxel_sizes_differ": len(voxel_sizes) > 1,
        },
    )
    csv_path, json_path = sidecar_paths(out)
    rows = [row for r in results for row in r.records]
    record = {"mslesion_version": __version__, "config": to_dict(cfg), "channels": list(channels),
              "normalisation": NORMALISATION, "failed_subjects": failures or [],
              "subjects": {r.subject: {"lesions": len(r), "notes": r.notes} for r in results}}
    template = [{**{k: row[k] for k in LABELS_TEMPLATE_COLUMNS}, "label": ""} for row in rows]
    with atomic_path(csv_path) as tmp_csv, atomic_path(json_path) as tmp_json, \
            atomic_path(labels_template_path(out)) as tmp_template:
        tmp_csv.write_text(csv_text(rows, LESION_COLUMNS))
        tmp_template.write_text(csv_text(template, LABELS_TEMPLATE_COLUMNS))
        tmp_json.write_text(json.dumps(record, indent=2) + "\n")
        if len(patches):  # an HDF5 file of zero patches would only fail later, in train
            write_patches(out, patches, float16=cfg.float16)
        else:  # an earlier patch file must not stand beside the new, empty table
            out.unlink(missing_ok=True)
        if failures:
            write_atomic(errors_path(out), lambda tmp: tmp.write_text(csv_text(failures, ("subject", "error"))))
        else:
            errors_path(out).unlink(missing_ok=True)
