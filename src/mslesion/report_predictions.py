"""`mslesion report PREDICT_DIR`: one self-contained HTML file for a prediction folder (mslesion predict).

Per subject: the burden table (lesions and volume per call, PRLs, flags), axial overview slices with the label
map over FLAIR (or QSM), and a card per lesion (mid slices of each channel as the model saw them, its call,
probabilities and flags); then a cohort table across subjects.

The images are read from the input files predict recorded in each subject's summary (`inputs`), and the lesions
are cut again by the same code (`extract_subject`) with the folder's recorded settings, so a card shows exactly
the patch the model classified. Predict keeps no copy of the images: a derivative that duplicated its inputs
would double a study's size, and the overview needs whole volumes anyway. When an input has moved, that subject's
tables are still shown, with a note naming the missing file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from mslesion.atomic import atomic_path, check_file_output
from mslesion.bids import SESSION_COLUMN, SUBJECT_COLUMN, legend_rows, read_tsv, task_name
from mslesion.config import LesionFinding, PredictConfig, from_dict
from mslesion.data.subjects import Subject
from mslesion.data.task import ClassMap
from mslesion.errors import InputError
from mslesion.progress import progress_bar
from mslesion.report import STYLE, png_tag, table_html
from mslesion.runs import (
    DATASET_DESCRIPTION,
    PREDICT_CONFIG,
    PREDICTION_SUMMARY,
    is_prediction_folder,
    label_map_name,
    legend_name,
    lesion_table_name,
    read_json,
    subject_summaries,
)

OVERVIEW_SLICES = 6
LESION_STYLE = """.lesions{display:flex;flex-wrap:wrap;gap:6px}
.lesion{border:1px solid #ddd;padding:3px;font-size:.72em;
width:236px}.lesion img{width:230px;image-rendering:pixelated}.call{display:inline-block;width:.8em;height:.8em;
border:1px solid #444;margin-right:.3em;vertical-align:middle}.flag{color:#b00}.subject{margin-top:2em}
details summary{cursor:pointer;font-weight:600}"""


class PredictionFolder:
    """What a prediction folder holds: settings, class map, legend and each subject's summary and lesions."""

    def __init__(self, folder: Path) -> None:
        if not is_prediction_folder(folder) or not (folder / DATASET_DESCRIPTION).exists():
            raise InputError("not a prediction folder of this version (no dataset_description.json or "
                             "predict_config.json); run mslesion predict on NIfTI subjects", folder)
        self.folder = folder
        self.record = read_json(folder / PREDICT_CONFIG)
        self.class_map = ClassMap.parse(self.record["classes"])
        self.task = task_name(self.class_map)
        self.legend = {int(r["index"]): r for r in legend_rows(self.class_map)}
        self.summaries = [read_json(p) for p in subject_summaries(folder)
                          if p.name.endswith(f"_desc-{self.task}_summary.json")]
        if not self.summaries:
            raise InputError("holds no subjects (a prediction of a patch file has no images to show)", folder)

    def prefix(self, summary: dict) -> str:
        return "_".join(filter(None, (summary[SUBJECT_COLUMN], summary.get(SESSION_COLUMN))))

    def anat(self, summary: dict) -> Path:
        session = summary.get(SESSION_COLUMN) or ""
        return self.folder / summary[SUBJECT_COLUMN] / session / "anat"

    def lesions(self, summary: dict) -> list[dict]:
        return read_tsv(self.anat(summary) / lesion_table_name(self.prefix(summary), self.task))

    def label_map(self, summary: dict) -> Path:
        return self.anat(summary) / label_map_name(self.prefix(summary), self.task)

    def colour(self, call: str) -> str:
        return next((str(r["color"]) for r in self.legend.values() if r["name"] == call), "#888888")


def write_prediction_report(folder: str | Path, out: str | Path, overwrite: bool = False,
                            show_progress: bool = True) -> Path:
    check_file_output(out, overwrite)
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found", folder)
    predictions = PredictionFolder(folder)
    parts = []
    with progress_bar(show_progress) as bars:
        bar = bars.task("subjects", total=len(predictions.summaries))
        for summary in predictions.summaries:
            parts.append(subject_html(predictions, summary))
            bar.advance()
    text = render_page(predictions, parts)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(out)


# --- tables ------------------------------------------------------------------------------------------------------


def calls_of(predictions: PredictionFolder) -> list[str]:
    return [r["name"] for index, r in sorted(predictions.legend.items()) if index]


def burden_rows(predictions: PredictionFolder, summary: dict) -> list[tuple[str, ...]]:
    rows = []
    for call in calls_of(predictions):
        n = summary.get(f"n_{call}", 0)
        if n:
            rows.append((call, str(n), f"{summary.get(f'volume_{call}_mm3', 0):,.1f}"))
    rows.append(("all lesions", str(summary["lesions"]),
                 f"{sum(summary.get(f'volume_{c}_mm3', 0) for c in calls_of(predictions)):,.1f}"))
    return rows


def prl_text(summary: dict, prl_count: int) -> str:
    if summary.get("n_prl_like", "") == "":
        return "PRL count: – (this model has no PRL class)"
    reached = summary.get(f"prl_{prl_count}_or_more")
    return (f"PRL count: <b>{summary['n_prl_like']}</b>" + (f" (≥ {prl_count}: associated in the literature with "
                                                            "more severe disease)" if reached else ""))


def cohort_html(predictions: PredictionFolder) -> str:
    rows = read_csv_rows(predictions.folder / PREDICTION_SUMMARY)
    calls = [c for c in calls_of(predictions) if any(r.get(f"n_{c}", "0") not in ("0", "") for r in rows)]
    flags = [k for k in (rows[0] if rows else {}) if k.startswith("n_") and k[2:] not in calls_of(predictions)
             and k != "n_prl_like" and any(r[k] not in ("0", "") for r in rows)]
    header = ["subject", "session", "lesions", *(f"{c} (n / mm³)" for c in calls), "PRL", *(f[2:] for f in flags)]
    body = []
    for r in rows:
        volume = [f"{r[f'n_{c}']} / {float(r.get(f'volume_{c}_mm3') or 0):,.0f}" for c in calls]
        body.append((r[SUBJECT_COLUMN], r.get(SESSION_COLUMN) or "", r["lesions"], *volume,
                     r.get("n_prl_like") or "–", *(r[f] for f in flags)))
    return table_html(header, body) + "<p>Calls as in the label maps; flags count lesions with each warning.</p>"


def read_csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- images --------------------------------------------------------------------------------------------------------


def subject_html(predictions: PredictionFolder, summary: dict) -> str:
    name = predictions.prefix(summary)
    rows = predictions.lesions(summary)
    prl_count = int(predictions.record["config"].get("prl_count", 4))
    source = summary.get("source_id", name)
    parts = [f'<section class="subject" id="{html.escape(name)}"><h2>{html.escape(name)}'
             + (f" <small>({html.escape(source)})</small>" if source != name else "") + "</h2>",
             table_html(["call", "lesions", "volume mm³"], burden_rows(predictions, summary)),
             f"<p>{prl_text(summary, prl_count)}</p>"]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in summary.get("notes", [])]
    inputs = {role: Path(path) for role, path in summary.get("inputs", {}).items()}
    missing = [str(p) for p in inputs.values() if not p.exists()]
    if missing or "mask" not in inputs:
        parts.append("<p class='note'>Images unavailable (input moved?): " + html.escape(", ".join(missing)
                     or "no inputs recorded") + "; only the tables are shown.</p></section>")
        return "\n".join(parts)
    try:
        parts.append(overview_html(predictions, summary, inputs))
        parts.append(lesions_html(predictions, summary, rows, inputs))
    except InputError as exc:
        parts.append(f"<p class='note'>Images unavailable: {html.escape(str(exc))}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def overview_html(predictions: PredictionFolder, summary: dict, inputs: dict[str, Path]) -> str:
    import nibabel as nib

    from mslesion.data.nifti import load_image, resample_onto
    from mslesion.report_figures import overview_figure

    label_img = load_image(predictions.label_map(summary))
    background_role = next((r for r in ("flair", "qsm") if r in inputs), "mask")
    background_img = load_image(inputs[background_role])
    if background_img.shape[:3] != label_img.shape[:3] or not np.allclose(background_img.affine, label_img.affine,
                                                                          atol=1e-3):
        background_img = resample_onto(background_img, label_img, is_label=False)  # predict ran with --resample
    labels = np.asarray(nib.as_closest_canonical(label_img).dataobj).astype(np.int64)
    background = np.asarray(nib.as_closest_canonical(background_img).dataobj, dtype=np.float32)
    colours = {index: str(r["color"]) for index, r in predictions.legend.items()}
    names = {index: str(r["name"]) for index, r in predictions.legend.items()}
    figure = overview_figure(background, labels, overview_slices(labels), colours, names, background_role.upper())
    return png_tag(figure, f"axial overview of {predictions.prefix(summary)}")


def overview_slices(labels: np.ndarray, n: int = OVERVIEW_SLICES) -> list[int]:
    """Axial slices through the lesion load: quantiles of the lesion voxels' heights (the middle when none)."""
    heights = np.nonzero(labels)[2]
    if not len(heights):
        return [labels.shape[2] // 2]
    chosen = np.quantile(heights, np.linspace(0.05, 0.95, n)).round().astype(int)
    return sorted(set(chosen.tolist()))


def lesion_patches(predictions: PredictionFolder, summary: dict, inputs: dict[str, Path]):
    """The patches the model classified: the subject's lesions cut again with the folder's recorded settings."""
    from mslesion.data.extract import extract_subject

    cfg = from_dict(PredictConfig, predictions.record["config"])
    if not isinstance(cfg.finding, LesionFinding):
        raise InputError("predict_config.json holds no lesion-finding settings", predictions.folder / PREDICT_CONFIG)
    channels = tuple(predictions.record["channels"])
    subject = Subject(summary.get("source_id", ""), inputs["mask"], inputs.get("flair"), inputs.get("qsm"),
                      inputs.get("phenotype"))
    return extract_subject(subject, cfg.extract_config(int(predictions.record["patch_size"]), channels), channels)


def lesions_html(predictions: PredictionFolder, summary: dict, rows: list[dict], inputs: dict[str, Path]) -> str:
    if not rows:
        return "<p>No lesions.</p>"
    lesions = lesion_patches(predictions, summary, inputs)
    key = [(int(r["lesion"]), int(r["part"])) for r in rows]
    if key != list(zip(lesions.lesion_ids.tolist(), lesions.parts.tolist(), strict=True)):
        raise InputError("the lesions found in the inputs now differ from the predicted ones (inputs changed "
                         "since predict?)", inputs["mask"])
    names = predictions.class_map.names
    cards = [lesion_card(predictions, row, patch, tuple(predictions.record["channels"]), names)
             for row, patch in zip(rows, lesions.patches, strict=True)]
    channels = " | ".join(predictions.record["channels"])
    return (f"<details open><summary>{len(rows)} lesions: mid axial slice of each channel ({html.escape(channels)}; "
            "mask on a fixed 0–1 scale), as the model saw them</summary><div class='lesions'>"
            + "".join(cards) + "</div></details>")


def lesion_card(predictions: PredictionFolder, row: dict, patch: np.ndarray, channels: tuple[str, ...],
                names: tuple[str, ...]) -> str:
    import matplotlib.image

    from mslesion.report_figures import mid_slices

    image = mid_slices(patch, channels)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, np.kron(image, np.ones((3, 3))), cmap="gray", vmin=0, vmax=1, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    probabilities = sorted(((float(row[f"p_{n}"]), n) for n in names), reverse=True)[:3]
    lesion = row["lesion"] + (f".{row['part']}" if row["part"] not in ("0", "") else "")
    flags = row.get("flags", "")
    return (f"<div class='lesion'><img alt='lesion {html.escape(lesion)}' src='data:image/png;base64,{data}'><br>"
            f"<span class='call' style='background:{predictions.colour(row['call'])}'></span>"
            f"<b>{html.escape(row['call'])}</b> · lesion {html.escape(lesion)} · {float(row['volume_mm3']):,.0f} mm³"
            "<br>" + " · ".join(f"{html.escape(n)} {p:.2f}" for p, n in probabilities)
            + (f"<br><span class='flag'>⚑ {html.escape(flags.replace(';', ', '))}</span>" if flags else "")
            + "</div>")


# --- page ----------------------------------------------------------------------------------------------------------


def render_page(predictions: PredictionFolder, subjects: list[str]) -> str:
    title = f"Predictions {predictions.folder.name}"
    present = {k[2:] for summary in predictions.summaries for k, v in summary.items() if k.startswith("n_") and v}
    legend = "".join(f"<span class='call' style='background:{r['color']}'></span>{html.escape(str(r['name']))} "
                     f"({r['index']})&nbsp; " for index, r in sorted(predictions.legend.items())
                     if index and r["name"] in present)
    nav = "".join(f'<a href="#{html.escape(predictions.prefix(s))}">{html.escape(predictions.prefix(s))}</a>'
                  for s in predictions.summaries)
    settings = json.dumps({k: predictions.record.get(k) for k in ("mslesion_version", "model_sha256", "channels",
                                                                    "classes", "temperature", "config")}, indent=2)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}{LESION_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(predictions.summaries)} subject(s), model task <b>{predictions.task}</b>. "
            f"Calls (label map value): {legend} (full legend: {html.escape(legend_name(predictions.task))})</p>"
            f"<nav>{nav}</nav>\n"
            f'<section id="cohort"><h2>Cohort</h2>{cohort_html(predictions)}</section>\n'
            + "\n".join(subjects)
            + f'\n<section id="configuration"><h2>Prediction settings</h2><pre>{html.escape(settings)}</pre></section>'
            "\n<p><small>mslesion report; self-contained, no external resources.</small></p></body></html>\n")
