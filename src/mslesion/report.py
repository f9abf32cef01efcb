"""`mslesion report`: one self-contained HTML file (images embedded as base64 PNG) for a run or an ablation.

Sections: summary metrics (with abstention), ablation table and plot (ablation folders), learning curves,
confusion matrix, ROC curve, reliability diagram, coverage-vs-accuracy, lesion montage, saliency, configuration
and software versions. For an ablation, the curves and examples are those of the reference channel set's
pooled out-of-fold predictions (seed 0), each lesion explained by the fold model that predicted it.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from mslesion.atomic import atomic_path, check_file_output
from mslesion.config import ReportConfig, to_dict
from mslesion.errors import InputError
from mslesion.inference import input_saliency
from mslesion.metrics import abstention_metrics, classification_metrics, coverage_accuracy_curve
from mslesion.progress import progress_bar
from mslesion.runs import (
    ABLATION_CONFIG,
    ABLATION_PNG,
    CONFIG,
    HISTORY,
    MODEL,
    PREDICTIONS,
    RESULTS_MD,
    is_ablation,
    is_prediction_folder,
    load_ablation_config,
    read_json,
    read_predictions,
    run_folder,
)

SECTIONS = ("summary", "ablation", "learning-curves", "confusion-matrix", "roc", "reliability", "abstention",
            "montage", "saliency", "configuration")
PACKAGES = ("mslesion", "torch", "numpy", "scipy", "scikit-learn", "h5py", "matplotlib", "nibabel")


@dataclass
class Evidence:
    """Test predictions gathered from one or several run folders (each lesion with the run that predicted it)."""

    run_dirs: list[Path]
    run_of: np.ndarray  # per lesion: index into run_dirs
    index: np.ndarray  # per lesion: index into the run's task
    targets: np.ndarray
    probabilities: np.ndarray
    patients: np.ndarray
    names: tuple[str, ...]
    loaded: dict = field(default_factory=dict)
    """Tasks and models already read, by run index (several sections need the same ones)."""

    def task(self, run: int):
        from mslesion.data.task import load_task

        if ("task", run) not in self.loaded:
            config = read_json(self.run_dirs[run] / CONFIG)
            if not Path(config["data"]).exists():
                raise InputError("patch file of the run not found", config["data"])
            # only a few lesions are shown: leave a file larger than memory where it is
            self.loaded["task", run] = load_task(config["data"], tuple(config["channels"]), config["classes"], "auto")
        return self.loaded["task", run]

    def model(self, run: int):
        from mslesion.runs import load_trained

        if ("model", run) not in self.loaded:
            self.loaded["model", run] = load_trained(self.run_dirs[run])
        return self.loaded["model", run]


def gather_evidence(run_dirs: list[Path]) -> Evidence:
    parts = [read_predictions(d / PREDICTIONS) for d in run_dirs]
    return Evidence(run_dirs, np.concatenate([np.full(len(p.index), i) for i, p in enumerate(parts)]),
                    *(np.concatenate([getattr(p, k) for p in parts])
                      for k in ("index", "targets", "probabilities", "patients")), parts[0].names)


def write_report(cfg: ReportConfig, overwrite: bool = False, show_progress: bool = True) -> Path:
    check_file_output(cfg.out, overwrite)
    folder = Path(cfg.folder)
    if not folder.is_dir():
        raise InputError("folder not found", folder)
    if is_prediction_folder(folder):
        raise InputError("a prediction folder (mslesion predict): its report is "
                         "mslesion.report_predictions.write_prediction_report", folder)
    ablation = load_ablation_config(folder) if is_ablation(folder) else None
    if ablation is not None:
        reference = ablation.reference_set
        run_dirs = [run_folder(folder, reference, 0, f) for f in range(ablation.folds)]
        title = f"Channel ablation {folder.name} (curves and examples: {reference})"
    else:
        if not (folder / MODEL).exists() and not (folder / PREDICTIONS).exists():
            raise InputError("neither a run folder (model.pt, predictions.csv) nor an ablation folder", folder)
        run_dirs, title = [folder], f"Run {folder.name}"
    evidence = gather_evidence(run_dirs)
    with progress_bar(show_progress) as bars:
        sections = build_sections(cfg, folder, ablation, evidence, bars)
    text = render(title, sections)
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def png_tag(figure, alt: str) -> str:
    from mslesion.report_figures import png_bytes

    data = base64.b64encode(png_bytes(figure)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def build_sections(cfg: ReportConfig, folder: Path, ablation, ev: Evidence, bars=None) -> dict[str, str]:
    """HTML body of each section, keyed by SECTIONS; with bars, a bar over them (the lesion montage and saliency
    load the patch file and the models: seconds to minutes)."""
    from mslesion import report_figures as figures

    metrics = classification_metrics(ev.targets, ev.probabilities, ev.names)
    abstention = abstention_metrics(ev.targets, ev.probabilities, cfg.abstain) if cfg.abstain > 0 else None
    histories = [read_json(d / HISTORY) if (d / HISTORY).exists() else [] for d in ev.run_dirs]
    builders = {
        "summary": lambda: summary_html(metrics, abstention, ev),
        "ablation": lambda: ablation_html(folder) if ablation is not None else "",
        "learning-curves": lambda: png_tag(figures.learning_curves_figure(histories, [d.name for d in ev.run_dirs]),
                                           "learning curves"),
        "confusion-matrix": lambda: png_tag(figures.confusion_figure(np.asarray(metrics["confusion_matrix"]),
                                                                     ev.names), "confusion matrix"),
        "roc": lambda: png_tag(figures.roc_figure(ev.targets, ev.probabilities, ev.names, positive_index(metrics, ev)),
                               "ROC curve"),
        "reliability": lambda: png_tag(figures.reliability_figure(ev.targets, ev.probabilities),
                                       "reliability diagram")
        + f"<p>Probabilities after temperature scaling (T = {temperatures_text(ev)}).</p>",
        "abstention": lambda: png_tag(figures.coverage_figure(coverage_accuracy_curve(ev.targets, ev.probabilities),
                                                              abstention), "coverage versus accuracy")
        + abstention_table(ev),
        "lesions": lambda: lesion_sections(cfg, ev),  # montage and saliency
        "configuration": lambda: configuration_html(folder, ev)
        + f"<h3>report</h3><pre>{html.escape(json.dumps(to_dict(cfg), indent=2))}</pre>",
    }
    bar = bars.task("report sections", total=len(builders)) if bars is not None else None
    sections: dict[str, str] = {}
    for name, build in builders.items():
        body = build()
        sections.update(body if isinstance(body, dict) else {name: body})
        if bar is not None:
            bar.advance()
    return sections


def temperatures_text(ev: Evidence) -> str:
    return ", ".join(f"{ev.model(i).temperature:.2f}" for i in range(len(ev.run_dirs)))


def positive_index(metrics: dict, ev: Evidence) -> int | None:
    """The class the PR AUC and partial AUC take as positive (binary tasks), for the ROC figure to name too."""
    return ev.names.index(metrics["positive_class"]) if metrics["positive_class"] else None


def summary_intervals(ev: Evidence, n_resamples: int = 1000) -> dict[str, str]:
    """95% patient-bootstrap CIs of the summary metrics and TPRs (as ablate computes them), as text."""
    from mslesion.metrics import SUMMARY_METRICS, Predictions, patient_bootstrap

    if len(set(ev.patients)) < 2:
        return {}
    result = patient_bootstrap([Predictions(ev.targets, ev.probabilities, ev.patients)], n_resamples=n_resamples)
    keys = (*SUMMARY_METRICS, *(f"tpr_{n}" for n in ev.names))
    return {k: "–" if np.isnan(low) or np.isnan(high) else f"[{low:.3f}, {high:.3f}]"
            for k, low, high in zip(keys, result["low"], result["high"], strict=True)}


def summary_html(metrics: dict, abstention: dict | None, ev: Evidence) -> str:
    positive = (f"positive: {metrics['positive_class']}" if metrics["positive_class"]
                else "macro average, each class against the rest")
    ci = summary_intervals(ev)
    rows = [("lesions", f"{metrics['n']} (" + ", ".join(f"{k} {v}" for k, v in metrics["n_per_class"].items()) + ")",
             ""),
            ("patients", str(len(set(ev.patients))), ""),
            ("accuracy", f"{metrics['accuracy']:.3f}", ci.get("accuracy", "–")),
            ("balanced accuracy", f"{metrics['balanced_accuracy']:.3f}", ci.get("balanced_accuracy", "–")),
            ("ROC AUC", f"{metrics['roc_auc']:.3f}", ci.get("roc_auc", "–")),
            (f"PR AUC ({positive})", f"{metrics['pr_auc']:.3f}", ci.get("pr_auc", "–")),
            (f"partial ROC AUC, FPR < 0.1, McClish-standardised ({positive})", f"{metrics['partial_roc_auc']:.3f}",
             ci.get("partial_roc_auc", "–")),
            *((f"TPR {k}", f"{v:.3f}", ci.get(f"tpr_{k}", "–")) for k, v in metrics["true_positive_rate"].items()),
            ("majority baseline", f"{metrics['majority_baseline_accuracy']:.3f}", "")]
    if abstention is not None:
        rows += [(f"coverage at --abstain {abstention['threshold']:g}",
                  f"{abstention['coverage']:.1%} ({abstention['n_uncertain']} uncertain)", ""),
                 ("accuracy on covered lesions", "– (no prediction reaches the threshold)"
                  if np.isnan(abstention["covered_accuracy"]) else f"{abstention['covered_accuracy']:.1%}", "")]
    note = (f"<p>Test predictions of {len(ev.run_dirs)} run(s), pooled.</p>" if len(ev.run_dirs) > 1 else "")
    how = ("<p>95% CI: percentile bootstrap over patients (1,000 resamples; each resample draws patients with "
           "replacement and takes all their lesions).</p>" if ci else
           "<p>No confidence intervals: the test set holds one patient.</p>")
    return note + table_html(["metric", "estimate", "95% CI"], rows) + how


def abstention_table(ev: Evidence, thresholds: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)) -> str:
    """Coverage and covered accuracy at a few --abstain thresholds, to help choose one."""
    rows = []
    for threshold in thresholds:
        a = abstention_metrics(ev.targets, ev.probabilities, threshold)
        covered = "–" if np.isnan(a["covered_accuracy"]) else f"{a['covered_accuracy']:.1%}"
        rows.append((f"{threshold:g}", f"{a['coverage']:.1%}", covered))
    return ("<p>A prediction whose highest probability is below the threshold is reported as uncertain.</p>"
            + table_html(["--abstain", "coverage", "accuracy on covered"], rows))


def table_html(header: list[str], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ablation_html(folder: Path) -> str:
    """The results.md tables as HTML, and ablation.png."""
    parts, table = [], []
    for line in (folder / RESULTS_MD).read_text().splitlines() + [""]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            parts.append(table_html(table[0], [tuple(r) for r in table[2:]]))
            table = []
        if line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    png = folder / ABLATION_PNG
    if png.exists():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<img alt="ablation plot" src="data:image/png;base64,{data}">')
    return "\n".join(parts)


def configuration_html(folder: Path, ev: Evidence) -> str:
    configs = {str(d): read_json(d / CONFIG) for d in ev.run_dirs if (d / CONFIG).exists()}
    if is_ablation(folder):
        configs = {"ablation": read_json(folder / ABLATION_CONFIG), **configs}
    first = next(iter(configs.items()), ("", {}))
    shown = json.dumps(first[1], indent=2)
    versions = [("python", platform.python_version()), ("platform", platform.platform())]
    for package in PACKAGES:
        try:
            versions.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            versions.append((package, "not installed"))
    return (f"<h3>{html.escape(first[0])}</h3><pre>{html.escape(shown)}</pre>"
            + (f"<p>{len(configs) - 1} run configuration(s) in the folder's config.json files.</p>"
               if len(configs) > 1 else "")
            + "<h3>software</h3>" + table_html(["package", "version"], versions))


def lesion_sections(cfg: ReportConfig, ev: Evidence) -> dict[str, str]:
    try:
        return {"montage": montage_html(cfg, ev), "saliency": saliency_html(cfg, ev)}
    except InputError as exc:  # the patch file moved: the rest of the report is still worth having
        note = f"<p class='note'>Lesion images unavailable: {html.escape(str(exc))}</p>"
        return {"montage": note, "saliency": note}


# --- lesion images: montage and saliency ----------------------------------------------------------------------


def lesion_images(ev: Evidence, rows: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Patches [n, C, D, H, W] of the given evidence rows, read from each run's patch file and channels."""
    images, channels = [], ()
    for row in rows:
        task = ev.task(int(ev.run_of[row]))
        channels = task.channels
        images.append(task.images[ev.index[row]])
    return (np.stack(images) if images else np.empty((0,))), channels


def example_rows(ev: Evidence, cls: int, correct: bool, n: int) -> np.ndarray:
    """The n most confident lesions of a class that were predicted correctly (or wrongly)."""
    predicted = ev.probabilities.argmax(1)
    chosen = np.flatnonzero((ev.targets == cls) & ((predicted == ev.targets) == correct))
    return chosen[np.argsort(-ev.probabilities[chosen].max(1), kind="stable")][:n]


def caption(ev: Evidence, row: int) -> str:
    predicted = int(ev.probabilities[row].argmax())
    return f"{ev.patients[row]}  p({ev.names[predicted][:5]})={ev.probabilities[row, predicted]:.2f}"


def montage_html(cfg: ReportConfig, ev: Evidence) -> str:
    from mslesion.report_figures import montage_figure

    groups, channels, empty = [], (), []
    for cls, name in enumerate(ev.names):
        for correct in (True, False):
            outcome = "correct" if correct else "misclassified"
            rows = example_rows(ev, cls, correct, cfg.examples)
            if not len(rows):
                empty.append(f"{name} {outcome}")
                continue
            patches, channels = lesion_images(ev, rows)
            groups.append((f"{name}\n{outcome}", patches, [caption(ev, r) for r in rows]))
    figure = png_tag(montage_figure(groups, channels, cfg.examples), "lesion montage") if groups else ""
    return (figure + "<p>Per class, the most confident correct and the most confident wrong predictions; captions "
            "give the patient and the predicted class's probability."
            + (f" No lesions: {html.escape(', '.join(empty))}." if empty else "") + "</p>")


def saliency_html(cfg: ReportConfig, ev: Evidence) -> str:
    """Vanilla gradient saliency (Simonyan et al., 2014) of the predicted class's logit, per lesion."""
    from mslesion.report_figures import saliency_figure
    per_class = max(1, cfg.examples // len(ev.names))
    rows = np.concatenate([example_rows(ev, c, ok, per_class) for c in range(len(ev.names)) for ok in (True, False)])
    rows = rows[: cfg.examples]
    if not len(rows):
        return "<p>No lesions.</p>"
    patches, channels = lesion_images(ev, rows)
    maps = np.stack([input_saliency(ev.model(int(ev.run_of[r])).model, patch)
                     for r, patch in zip(rows, patches, strict=True)])
    background = "qsm" if "qsm" in channels else channels[0]
    masks = patches[:, channels.index("mask")] if "mask" in channels else None
    figure = saliency_figure(patches[:, channels.index(background)], maps, [caption(ev, r) for r in rows],
                             background, masks)
    return (png_tag(figure, "saliency maps")
            + f"<p>Magnitude of the gradient of the predicted class's logit with respect to the input (maximum over "
              f"channels), mid axial slice, over {background}"
            + ("" if background == "qsm" else " (this model has no QSM channel)")
            + ". Bright where a small change of the image would change the decision most: does the net look at "
              "the lesion's rim?</p>")


# --- HTML ------------------------------------------------------------------------------------------------------

TITLES = {"summary": "Summary", "ablation": "Channel ablation", "learning-curves": "Learning curves",
          "confusion-matrix": "Confusion matrix", "roc": "ROC curve", "reliability": "Calibration",
          "abstention": "Abstention", "montage": "Example lesions", "saliency": "Saliency",
          "configuration": "Configuration and software"}
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;
text-align:left}th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:.6em;font-size:.8em;
overflow-x:auto}nav a{margin-right:.8em}.note{color:#a33}
section.half{display:inline-block;width:49%;vertical-align:top}section.half img{max-height:420px}"""
HALF_WIDTH = ("confusion-matrix", "roc", "reliability", "abstention")


def render(title: str, sections: dict[str, str]) -> str:
    present = [key for key in SECTIONS if sections.get(key)]
    nav = "".join(f'<a href="#{key}">{TITLES[key]}</a>' for key in present)
    body = "\n".join(f'<section id="{key}" class="{"half" if key in HALF_WIDTH else "full"}">'
                     f"<h2>{TITLES[key]}</h2>\n{sections[key]}</section>" for key in present)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>\n{body}\n"
            f"<p><small>mslesion report; self-contained, no external resources.</small></p></body></html>\n")
