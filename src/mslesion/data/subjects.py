"""Which files belong to which subject: explicit paths, a CSV manifest, or a BIDS-style folder.

BIDS-style names (searched anywhere under the folder, `derivatives/` included):
  sub-<id>[_ses-<s>]_..._FLAIR.nii[.gz]                 FLAIR
  sub-<id>[_ses-<s>]_..._Chimap.nii[.gz]                QSM (susceptibility, ppm or ppb)
  sub-<id>[_ses-<s>]_..._label-lesion_mask.nii[.gz]     lesion mask (binary, or one integer per lesion)
  sub-<id>[_ses-<s>]_..._desc-phenotype_dseg.nii[.gz]   optional phenotype map (voxel values = Table 1 codes)
"""

from __future__ import annotations

import csv
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from mslesion.errors import InputError
from mslesion.paper import MS_CHANNELS

MANIFEST_COLUMNS = ("subject", "flair", "qsm", "mask", "phenotype")
_NIFTI = r"\.nii(?:\.gz)?$"
BIDS_ROLES = {
    "mask": re.compile(r"_label-lesion_mask" + _NIFTI),
    "phenotype": re.compile(r"_desc-phenotype_dseg" + _NIFTI),
    "qsm": re.compile(r"_Chimap" + _NIFTI),
    "flair": re.compile(r"_FLAIR" + _NIFTI),
}
_BIDS_KEY = re.compile(r"^(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)_")


@dataclass(frozen=True)
class Subject:
    """One subject's files. Only the mask is required; `phenotype` is a NIfTI map or a `lesion,label` CSV."""

    id: str
    mask: Path
    flair: Path | None = None
    qsm: Path | None = None
    phenotype: Path | None = None

    def image(self, channel: str) -> Path | None:
        return {"flair": self.flair, "qsm": self.qsm, "mask": self.mask}[channel]

    @property
    def available_channels(self) -> tuple[str, ...]:
        return tuple(c for c in MS_CHANNELS if self.image(c) is not None)


def subject_id_from_path(path: Path) -> str:
    name = path.name
    for ending in (".nii.gz", ".nii", ".csv"):
        if name.endswith(ending):
            name = name[: -len(ending)]
    match = _BIDS_KEY.match(name + "_")
    if match:
        return match.group(1)
    # patient07/lesion_mask.nii.gz → patient07; patient08_lesion_mask.nii.gz → patient08
    for generic in ("lesion_mask", "lesions", "mask"):
        name = name.removesuffix(generic).rstrip("_-.")
    return name or path.resolve().parent.name


def from_paths(
    mask: Path, flair: Path | None = None, qsm: Path | None = None, phenotype: Path | None = None,
    subject: str | None = None,
) -> list[Subject]:
    """One subject named on the command line; its id defaults to the mask's BIDS prefix or file name."""
    return [Subject(subject or subject_id_from_path(mask), mask, flair, qsm, phenotype)]


def reader_fields(rows: list[dict]) -> list[str]:
    """The header of a manifest; a row with more cells than the header is an error, not a crash."""
    for line, row in enumerate(rows, start=2):
        if None in row:  # csv.DictReader puts the extra cells under the key None
            raise csv.Error(f"line {line} has more cells than the header")
    return list(rows[0].keys()) if rows else []


def from_manifest(path: Path) -> list[Subject]:
    """Subjects from a CSV with columns subject,flair,qsm,mask,phenotype (relative paths: from the CSV's folder)."""
    if not path.exists():
        raise InputError("file not found", path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip().lower() for h in (reader_fields(rows))]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"not a readable CSV manifest ({exc})", path) from None
    if not rows:
        raise InputError(f"manifest has no subjects (expected columns {','.join(MANIFEST_COLUMNS)})", path)
    unknown = sorted(set(header) - set(MANIFEST_COLUMNS))
    if "subject" not in header or "mask" not in header or unknown:
        raise InputError(f"manifest columns must be {','.join(MANIFEST_COLUMNS)} (subject and mask required); "
                         f"got {','.join(header)}", path)
    subjects, seen = [], set()
    for line, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row["subject"] or not row["mask"]:
            raise InputError(f"line {line}: subject and mask are required", path)
        if row["subject"] in seen:
            raise InputError(f"line {line}: subject {row['subject']!r} listed twice", path)
        seen.add(row["subject"])
        resolve = _resolver(path.parent)
        subjects.append(Subject(row["subject"], resolve(row["mask"]), resolve(row.get("flair")),
                                resolve(row.get("qsm")), resolve(row.get("phenotype"))))
    return subjects


def _resolver(base: Path):
    def resolve(value: str | None) -> Path | None:
        if not value:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    return resolve


def from_bids(root: Path) -> list[Subject]:
    """Subjects of a BIDS-style folder (raw data and `derivatives/`), sorted by id."""
    if not root.is_dir():
        raise InputError("folder not found", root)
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("sub-*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        key = _BIDS_KEY.match(path.name)
        role = next((r for r, pattern in BIDS_ROLES.items() if pattern.search(path.name)), None)
        if key is None or role is None:
            continue
        files = found.setdefault(key.group(1), {})
        if role in files:
            raise InputError(f"two {role} files for {key.group(1)}: {files[role]} and {path}", root)
        files[role] = path
    if not found:
        raise InputError("no BIDS-style subjects found (expected sub-*/anat/sub-*_label-lesion_mask.nii.gz "
                         "and sub-*_FLAIR.nii.gz / sub-*_Chimap.nii.gz)", root)
    subjects = []
    for key in sorted(found):
        files = found[key]
        if "mask" not in files:
            raise InputError(f"{key} has no lesion mask (*_label-lesion_mask.nii.gz)", root)
        subjects.append(Subject(key, files["mask"], files.get("flair"), files.get("qsm"), files.get("phenotype")))
    return subjects


def discover(
    source: Path | None, mask: Path | None = None, flair: Path | None = None, qsm: Path | None = None,
    phenotype: Path | None = None, subject: str | None = None,
) -> list[Subject]:
    """Subjects from a BIDS folder, a manifest CSV, or explicit paths (exactly one of the three)."""
    explicit = any(p is not None for p in (mask, flair, qsm, phenotype))
    if source is not None and explicit:
        raise InputError("give either a folder/manifest or --mask/--flair/--qsm, not both", source)
    if source is not None:
        if source.is_dir():
            return from_bids(source)
        if source.suffix.lower() in (".csv", ".tsv"):
            return from_manifest(source)
        if not source.exists():
            raise InputError("file not found", source)
        raise InputError("expected a BIDS-style folder or a CSV manifest", source)
    if mask is None:
        raise InputError("no input: give a BIDS-style folder, a CSV manifest, or --mask (with --flair/--qsm)")
    return from_paths(mask, flair, qsm, phenotype, subject)


def with_labels(subjects: list[Subject], labels: Path) -> list[Subject]:
    """Every subject labelled by one labels CSV (a filled-in NAME_labels_template.csv; rows name their subject)."""
    if not labels.is_file():
        raise InputError("labels file not found", labels)
    if labels.suffix.lower() != ".csv":
        raise InputError("--labels expects a CSV (subject,lesion,part,label; e.g. a filled-in labels template)", labels)
    for subject in subjects:
        if subject.phenotype is not None:
            raise InputError(f"subject {subject.id} already has labels ({subject.phenotype}); give labels either "
                             "with --labels or per subject, not both", labels)
    return [dataclasses.replace(subject, phenotype=labels) for subject in subjects]


def unmatched_label_subjects(subjects: list[Subject], labels: Path) -> list[str]:
    """The subjects a labels CSV has rows for that are not among `subjects` (a typo in an id, or labels of subjects
    not extracted this time): their rows are ignored, which the user should hear about. Unreadable files: [] (the
    reader of the labels reports them)."""
    try:
        with labels.open(newline="") as f:
            named = {(row.get("subject") or "").strip() for row in csv.DictReader(f)}
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return sorted(named - {subject.id for subject in subjects} - {""})
