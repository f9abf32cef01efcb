"""The prediction folder as a BIDS derivative dataset: subject/session labels, entity values, the label map's
legend (BIDS dseg.tsv, ITK-SNAP, FSLeyes), dataset_description.json and the lesion table's column sidecar.

File names are `mslesion.runs`'; this module decides what goes in them. Entity values are alphanumeric (BIDS):
an id that is not `sub-<label>[_ses-<label>]` becomes `sub-<its letters and digits>` (patient_07 → sub-patient07),
and class names that are not alphanumeric get an abbreviation (hypointense_rim → HRL).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from mslesion import __version__
from mslesion.atomic import write_atomic
from mslesion.data.subjects import Subject
from mslesion.data.task import ClassMap
from mslesion.errors import InputError
from mslesion.paper import TABLE1_NAMES
from mslesion.runs import fsleyes_legend_name, itksnap_legend_name, legend_name

BIDS_VERSION = "1.10.0"
# The subject and session columns of the tables, as BIDS names them (participants.tsv, sessions.tsv); "subject"
# and "session" would be read as entities by BIDS tools (pybids refuses a sidecar describing them).
SUBJECT_COLUMN, SESSION_COLUMN = "participant_id", "session_id"
NOT_AVAILABLE = "n/a"  # BIDS tables: an empty cell
# Abbreviations (the legend's `abbreviation` column) and colours of the fixed calls (paper.CALL_LEGEND): PRL and
# hyperintense (demyelinating) warm, isointense and hypointense (remyelinating) cool, the refusals loud.
CALL_STYLE = {
    "background": ("BG", "#000000"),
    "unclassified": ("UNC", "#a6a6a6"),
    "isointense": ("ISO", "#4daf4a"),
    "PRL": ("PRL", "#e41a1c"),
    "hypointense_rim": ("HRL", "#984ea3"),
    "hyperintense": ("HYPER", "#ff7f00"),
    "hypointense": ("HYPO", "#377eb8"),
    "remyelinating": ("REMY", "#1b9e77"),
    "demyelinating": ("DEMY", "#d95f02"),
    "uncertain": ("UNCERT", "#ffff33"),
    "out_of_distribution": ("OOD", "#f781bf"),
}
CUSTOM_COLOURS = ("#a65628", "#66c2a5", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3")
_ID = re.compile(r"^sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?$")


def task_name(class_map: ClassMap) -> str:
    """The `desc` of the label map and tables: binary (the paper's task), phenotype, or custom."""
    return "phenotype" if class_map.is_phenotype else "binary" if class_map.is_binary else "custom"


def alphanumeric(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def bids_labels(subject_id: str) -> tuple[str, str]:
    """(subject label, session label or '') of an id: sub-01_ses-2 → (01, 2); patient_07 → (patient07, '')."""
    match = _ID.match(subject_id)
    if match:
        return match.group(1), match.group(2) or ""
    label = alphanumeric(subject_id.removeprefix("sub-"))
    if not label:
        raise InputError(f"subject id {subject_id!r} has no letters or digits to name a BIDS subject (sub-<label>)")
    return label, ""


def subject_labels(subjects: list[Subject]) -> dict[str, tuple[str, str]]:
    """Each subject's (subject, session) labels; two ids that become the same labels are an error."""
    labels: dict[str, tuple[str, str]] = {}
    seen: dict[tuple[str, str], str] = {}
    for subject in subjects:
        key = bids_labels(subject.id)
        if key in seen:
            name = f"sub-{key[0]}" + (f"_ses-{key[1]}" if key[1] else "")
            raise InputError(f"subjects {seen[key]!r} and {subject.id!r} would both be {name} in the BIDS output "
                             "(entity labels are letters and digits only); rename one", subject.mask)
        seen[key] = subject.id
        labels[subject.id] = key
    return labels


def entity_value(name: str) -> str:
    """A class or call name as a BIDS entity value: itself when alphanumeric, else its abbreviation or letters."""
    if alphanumeric(name) == name:
        return name
    return CALL_STYLE[name][0] if name in CALL_STYLE else alphanumeric(name)


def probability_labels(class_map: ClassMap) -> tuple[str, ...]:
    """The `label` entity of each class's probability map (distinct; `class<k>` where names would collide)."""
    values = [entity_value(n) for n in class_map.call_names()]
    return tuple(v if v and values.count(v) == 1 else f"class{k}" for k, v in enumerate(values))


def legend_rows(class_map: ClassMap) -> list[dict[str, str | int]]:
    """The label map's legend as BIDS dseg.tsv rows: index, name, abbreviation, color."""
    rows: list[dict[str, str | int]] = []
    for n, (index, name) in enumerate(sorted(class_map.legend().items())):
        abbreviation, colour = CALL_STYLE.get(name, (entity_value(name).upper(), CUSTOM_COLOURS[n % 8]))
        rows.append({"index": index, "name": name, "abbreviation": abbreviation, "color": colour})
    return rows


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def write_legends(folder: Path, class_map: ClassMap) -> None:
    """desc-TASK_dseg.tsv, and the same legend as an ITK-SNAP label description and an FSLeyes look-up table."""
    task, rows = task_name(class_map), legend_rows(class_map)
    tsv = tsv_text(rows, ("index", "name", "abbreviation", "color"))
    snap = ["# ITK-SnAP Label Description File (mslesion: the label map's calls)",
            "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL"]
    lut = []
    for row in rows:
        r, g, b = _rgb(str(row["color"]))
        visible = 0 if row["index"] == 0 else 1
        snap.append(f'{row["index"]:5d} {r:5d}{g:5d}{b:5d} {float(visible):5.2f} {visible:3d} {visible:3d}    '
                    f'"{row["name"]}"')
        if row["index"]:  # FSLeyes draws every entry of a LUT: background stays transparent by being absent
            lut.append(f'{row["index"]} {r / 255:.5f} {g / 255:.5f} {b / 255:.5f} {row["name"]}')
    for name, text in ((legend_name(task), tsv), (itksnap_legend_name(task), "\n".join(snap) + "\n"),
                       (fsleyes_legend_name(task), "\n".join(lut) + "\n")):
        write_atomic(folder / name, lambda tmp, text=text: tmp.write_text(text))


def dataset_description(previous: dict | None, command: str) -> dict:
    """A derivative's description; every predict run that wrote into the folder is one GeneratedBy entry."""
    generated = [g for g in (previous or {}).get("GeneratedBy", []) if isinstance(g, dict)]
    entry = {"Name": "mslesion", "Version": __version__, "Description": f"command line: {command}"}
    if entry not in generated:
        generated.append(entry)
    return {"Name": "mslesion lesion classification", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": generated}


def tsv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A BIDS TSV table: tab-separated, empty cells as n/a."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([NOT_AVAILABLE if row.get(c, "") in ("", None) else row[c] for c in columns])
    return buffer.getvalue()


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a BIDS TSV, n/a read back as an empty cell."""
    with open(path, newline="") as f:
        return [{k: ("" if v == NOT_AVAILABLE else v) for k, v in row.items()}
                for row in csv.DictReader(f, delimiter="\t")]


# --- the lesion table's sidecar ---------------------------------------------------------------------------------

_FIXED_COLUMNS = {
    SUBJECT_COLUMN: {"Description": "BIDS subject (sub-<label>)"},
    SESSION_COLUMN: {"Description": "BIDS session (ses-<label>); n/a when the subject has none"},
    "lesion": {"Description": "Lesion id: the connected component (or the mask's instance value) it belongs to"},
    "part": {"Description": "Part of a confluent lesion split by --split-confluent (0 = not split)"},
    "x_mm": {"Description": "Lesion centre, world x (the input's affine)", "Units": "mm"},
    "y_mm": {"Description": "Lesion centre, world y (the input's affine)", "Units": "mm"},
    "z_mm": {"Description": "Lesion centre, world z (the input's affine)", "Units": "mm"},
    "centre_i": {"Description": "Lesion centre, voxel index i of the input image (0-based)"},
    "centre_j": {"Description": "Lesion centre, voxel index j of the input image (0-based)"},
    "centre_k": {"Description": "Lesion centre, voxel index k of the input image (0-based)"},
    "voxels": {"Description": "Lesion size in voxels"},
    "volume_mm3": {"Description": "Lesion volume", "Units": "mm^3"},
    "label": {"Description": "Known Table 1 phenotype of the lesion (from --phenotype; 0 = not known)",
              "Levels": {"0": "not known", **{str(k): v for k, v in TABLE1_NAMES.items()}}},
    "ood_score": {"Description": "Distance of the lesion's network features from the training lesions' "
                                 "(Mahalanobis); large = unlike anything trained on"},
    "flags": {"Description": "Warnings, separated by ';' (n/a = none): larger_than_patch, touches_edge, and the "
                             "model's out-of-distribution flags (volume, intensity per channel, features)"},
    "predicted": {"Description": "The model's class (uncertain when the top probability is below --abstain)"},
    "call": {"Description": "The final call: out_of_distribution when a flag is raised (unless --keep-ood), else "
                            "uncertain, else the class; its value in the label map is given by the legend"},
}
_DERIVED = {"p_unclassified": "unclassified (Table 1 code 1)", "p_remyelinating": "remyelinating (codes 2, 6)",
            "p_demyelinating": "demyelinating (codes 3, 5)"}


def column_descriptions(columns: tuple[str, ...], class_map: ClassMap) -> dict[str, dict]:
    """The BIDS sidecar of a lesion table: every column described (Description, Units, Levels)."""
    classes = dict(zip(class_map.names, class_map.codes, strict=True))
    described: dict[str, dict] = {}
    for column in columns:
        name = column.split("_", 1)[1] if "_" in column else ""
        if column in _FIXED_COLUMNS:
            described[column] = dict(_FIXED_COLUMNS[column])
        elif column.startswith("p_") and name in classes:
            described[column] = {"Description": f"Probability of class {name} (codes {list(classes[name])}), after "
                                                "temperature scaling (with --tta, the mean over the model's symmetry "
                                                "group: the 48 cube symmetries, or the 8 axis flips of a "
                                                "flips-trained model)"}
        elif column.startswith("spread_") and name in classes:
            described[column] = {"Description": f"Standard deviation of p_{name} over the model's symmetry "
                                                "group (--tta)"}
        elif column in _DERIVED:
            described[column] = {"Description": f"Probability that the lesion is {_DERIVED[column]}: the sum of "
                                                "its classes' probabilities"}
        else:
            raise KeyError(f"no description for lesion table column {column!r}")
        if column == "call":
            described[column]["Levels"] = {name: f"label map value {value}" for value, name
                                           in sorted(class_map.legend().items()) if value}
    return described
