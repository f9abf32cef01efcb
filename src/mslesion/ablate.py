"""Channel ablation: every channel set × fold × seed trained and evaluated, summarised with patient-level CIs.

Layout of an ablation folder:
  ablation.json                      the AblationConfig
  runs/<flair+qsm>/seed<S>/fold<F>/  one run folder per (channel set, seed, fold) (see mslesion.runs)
  results.csv, results.md            per channel set: estimate and 95% CI of each metric; paired comparisons
  ablation.png                       bars with CIs (and the paper's Table 3 accuracy)

Metrics are computed on the pooled out-of-fold predictions (every lesion is tested once per seed, by the model
that did not see its patient) and resampled by patient; see mslesion.metrics.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mslesion.atomic import atomic_path, write_json
from mslesion.config import TrainConfig, from_dict, to_dict
from mslesion.data.task import ClassMap, Task, load_task, parse_channels
from mslesion.errors import InputError
from mslesion.metrics import SUMMARY_METRICS, Predictions, paired_comparison, patient_bootstrap
from mslesion.paper import PAPER_CLASSES
from mslesion.runs import CHECKPOINT, CONFIG, METRICS, MODEL, PREDICTIONS, read_json

ABLATION_CONFIG = "ablation.json"
RESULTS_CSV, RESULTS_MD, ABLATION_PNG = "results.csv", "results.md", "ablation.png"
ALL_CHANNEL_SETS = ("flair", "qsm", "mask", "flair,qsm", "flair,mask", "qsm,mask", "flair,qsm,mask")
COMPARED_METRICS = ("roc_auc", "balanced_accuracy")
# Settings that may differ between a finished run and the ablation asking for it (they do not change results).
_IRRELEVANT = ("out", "device", "threads", "data")


@dataclass(frozen=True)
class AblationConfig:
    """A grid of training runs over channel sets, folds and seeds, and how it is summarised."""

    data: str = ""
    """Patch file (HDF5)."""
    out: str = "runs/ablation"
    """Ablation folder; a rerun with the same folder skips finished runs and resumes interrupted ones."""
    channel_sets: tuple[str, ...] = ALL_CHANNEL_SETS
    """Channel combinations, each comma-separated (e.g. 'flair,qsm')."""
    scheme: str = "cv"
    """cv: patient-grouped stratified folds; paper: the paper's single lesion-level 70/30 split."""
    cv_folds: int = 5
    """Number of patient-grouped folds (scheme cv)."""
    seeds: int = 1
    """Repetitions with seeds 0..S-1 (new folds, initialisation and augmentation order each)."""
    reference: str = ""
    """Channel set every other set is compared to (paired test); default: the set with most channels."""
    classes: str = PAPER_CLASSES
    """Class map 'name=code,code;name=code' (see TrainConfig)."""
    augment: str = "full"
    """Training augmentation of every run: full (48 symmetries), random (one per patch) or none."""
    epochs: int = 15
    """Epochs per run (the learning-rate milestones of TrainConfig apply)."""
    batch_size: int = 128
    """Mini-batch size per run."""
    lr: float = 0.01
    """Initial learning rate per run."""
    val_fraction: float = 0.15
    """Validation part of each training set (patient-grouped), used to fit the temperature."""
    oversample: tuple[int, ...] = (2, 1)
    """Copies of each training patch per class."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto, bf16 or fp32 (see TrainConfig)."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    n_bootstrap: int = 1000
    """Bootstrap resamples (and permutations) for CIs and p-values."""

    def __post_init__(self) -> None:
        if not self.channel_sets:
            raise InputError("--channel-sets is empty")
        if self.scheme not in ("cv", "paper"):
            raise InputError(f"scheme must be cv or paper, got {self.scheme!r}")
        if self.scheme == "cv" and self.cv_folds < 2:
            raise InputError("--cv must be at least 2")
        if self.seeds < 1 or self.n_bootstrap < 10:
            raise InputError("--seeds must be ≥ 1 and --bootstrap ≥ 10")
        if self.reference and canonical(self.reference) not in [canonical(s) for s in self.channel_sets]:
            raise InputError(f"--reference {self.reference!r} is not one of the channel sets")
        for channel_set in self.channel_sets:
            self.train_config(channel_set, 0, 0)  # validates every training setting once, up front

    @property
    def folds(self) -> int:
        return self.cv_folds if self.scheme == "cv" else 1

    @property
    def reference_set(self) -> str:
        return canonical(self.reference) if self.reference else max(self.channel_sets, key=lambda s: len(s.split(",")))

    def train_config(self, channel_set: str, seed: int, fold: int) -> TrainConfig:
        cv = self.scheme == "cv"
        return TrainConfig(
            data=self.data, out=str(run_folder(Path(self.out), channel_set, seed, fold)),
            channels=parse_channels(channel_set), classes=self.classes, split="paper" if not cv else "patient",
            cv_folds=self.cv_folds if cv else 0, fold=fold if cv else -1, augment=self.augment, epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr, val_fraction=self.val_fraction, oversample=self.oversample,
            seed=seed, device=self.device, precision=self.precision, threads=self.threads,
        )


def canonical(channel_set: str) -> str:
    return ",".join(parse_channels(channel_set))


def run_folder(out: Path, channel_set: str, seed: int, fold: int) -> Path:
    return out / "runs" / canonical(channel_set).replace(",", "+") / f"seed{seed}" / f"fold{fold}"


def grid(cfg: AblationConfig) -> list[TrainConfig]:
    return [cfg.train_config(c, s, f) for c in cfg.channel_sets for s in range(cfg.seeds) for f in range(cfg.folds)]


# --- running the grid ---------------------------------------------------------------------------------------


def ablate(cfg: AblationConfig, show_progress: bool = True, console=None) -> dict:
    """Train and evaluate every run of the grid (skipping finished ones), then write the results."""
    runs = grid(cfg)
    for run in runs:
        check_finished_run_matches(run)
    wanted = tuple(dict.fromkeys(c for run in runs for c in run.channels))
    full_task = load_task(cfg.data, wanted, ClassMap.parse(cfg.classes))  # bad data fails before any output
    write_json(Path(cfg.out) / ABLATION_CONFIG, to_dict(cfg))
    started = time.perf_counter()
    with grid_progress(show_progress, console) as progress:
        task_id = progress.add_task("ablation", total=len(runs)) if progress else None
        for run in runs:
            if progress:
                progress.update(task_id, description=_run_label(run))
            train_and_evaluate(run, full_task.with_channels(run.channels))
            if progress:
                progress.advance(task_id)
    results = summarise(cfg)
    results["grid_seconds"] = time.perf_counter() - started
    return results


def _run_label(run: TrainConfig) -> str:
    fold = f"fold {run.fold}" if run.cv_folds else "paper split"
    return f"{'+'.join(run.channels):<15} seed {run.seed} {fold}"


def grid_progress(enabled: bool, console=None):
    """One progress bar for the whole grid (the runs themselves train silently)."""
    from contextlib import nullcontext

    from rich.progress import Progress

    from mslesion.progress import progress_columns

    if not enabled:
        return nullcontext(None)
    return Progress(*progress_columns(), console=console)


def check_finished_run_matches(run: TrainConfig) -> None:
    """A run folder left by an ablation with other settings must not be silently reused."""
    path = Path(run.out) / CONFIG
    if not path.exists():
        return
    saved = {k: v for k, v in read_json(path).items() if k not in _IRRELEVANT}
    wanted = {k: v for k, v in to_dict(run).items() if k not in _IRRELEVANT}
    changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if changed:
        raise InputError(f"this ablation folder was made with other settings ({', '.join(changed)}); "
                         "use another --out", path)


def train_and_evaluate(run: TrainConfig, task: Task) -> str:
    """Skip a finished run, evaluate a trained one, resume an interrupted one, or train a new one."""
    from mslesion.config import EvaluateConfig
    from mslesion.evaluate import evaluate
    from mslesion.train import train

    run_dir = Path(run.out)
    if (run_dir / METRICS).exists() and (run_dir / PREDICTIONS).exists() and (run_dir / MODEL).exists():
        return "skipped"
    status = "evaluated"
    if not (run_dir / MODEL).exists():
        status = "resumed" if (run_dir / CHECKPOINT).exists() else "trained"
        train(run, resume=True, show_progress=False, task=task)  # resume=True also starts fresh runs
    evaluate(EvaluateConfig(run=str(run_dir), device=run.device))
    return status


# --- summarising ----------------------------------------------------------------------------------------------


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """(lesion indices, class probabilities [N, K], patients, true class indices, class names) of a predictions.csv."""
    if not path.exists():
        raise InputError("no predictions: evaluate the run first (mslesion evaluate), or rerun mslesion ablate", path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = tuple(k[2:] for k in (rows[0].keys() if rows else []) if k.startswith("p_"))
    index = np.asarray([int(r["index"]) for r in rows], dtype=np.int64)
    probabilities = np.asarray([[float(r[f"p_{n}"]) for n in names] for r in rows], dtype=float)
    patients = np.asarray([r["patient"] for r in rows], dtype=object)
    targets = np.asarray([names.index(r["target"]) for r in rows], dtype=np.int64)
    return index, probabilities, patients, targets, names


def pooled_predictions(cfg: AblationConfig, channel_set: str) -> tuple[list[Predictions], tuple[str, ...]]:
    """Per seed, the test predictions of all folds pooled and sorted by lesion index."""
    sets, names = [], ()
    for seed in range(cfg.seeds):
        parts = [read_predictions(run_folder(Path(cfg.out), channel_set, seed, f) / PREDICTIONS)
                 for f in range(cfg.folds)]
        index = np.concatenate([p[0] for p in parts])
        order = np.argsort(index, kind="stable")
        names = parts[0][4]
        sets.append(Predictions(np.concatenate([p[3] for p in parts])[order],
                                np.concatenate([p[1] for p in parts])[order],
                                np.concatenate([p[2] for p in parts])[order]))
    return sets, names


def summarise(cfg: AblationConfig) -> dict:
    """Estimates, CIs and paired comparisons of every channel set; writes results.csv, results.md, ablation.png."""
    rows, pooled = [], {}
    for channel_set in cfg.channel_sets:
        sets, names = pooled_predictions(cfg, channel_set)
        pooled[canonical(channel_set)] = sets
        ci = patient_bootstrap(sets, n_resamples=cfg.n_bootstrap)
        counts = np.bincount(sets[0].targets, minlength=len(names))
        rows.append({"channels": canonical(channel_set), "runs": cfg.seeds * cfg.folds, "n": int(len(sets[0].targets)),
                     "majority_baseline": float(counts.max() / counts.sum()), "class_names": list(names),
                     **_metric_columns(ci, names)})
    reference = cfg.reference_set
    comparisons = [
        {"a": channel_set, "b": reference, **paired_comparison(pooled[channel_set], pooled[reference], metric,
                                                               n_resamples=cfg.n_bootstrap)}
        for channel_set in pooled if channel_set != reference for metric in COMPARED_METRICS
    ]
    results = {"config": to_dict(cfg), "rows": rows, "comparisons": comparisons}
    write_results(Path(cfg.out), results)
    return results


def _metric_columns(ci: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, float]:
    keys = [*SUMMARY_METRICS, *(f"tpr_{n}" for n in names)]
    columns = {}
    for i, key in enumerate(keys):
        columns[key] = float(ci["estimate"][i])
        columns[f"{key}_low"], columns[f"{key}_high"] = float(ci["low"][i]), float(ci["high"][i])
    return columns


def load_ablation_config(folder: Path) -> AblationConfig:
    data = read_json(Path(folder) / ABLATION_CONFIG)
    return from_dict(AblationConfig, data)


def is_ablation(folder: Path) -> bool:
    return (Path(folder) / ABLATION_CONFIG).exists()




# --- writing the results ----------------------------------------------------------------------------------------

METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "roc_auc": "ROC AUC",
                 "pr_auc": "PR AUC", "partial_roc_auc": "pAUC (FPR<0.1)"}


def write_results(out: Path, results: dict) -> None:
    write_json(out / "results.json", results)
    write_results_csv(out / RESULTS_CSV, results["rows"])
    text = results_markdown(results)
    with atomic_path(out / RESULTS_MD) as tmp:
        tmp.write_text(text)
    from mslesion.report_figures import ablation_figure, save_png

    save_png(ablation_figure(results["rows"]), out / ABLATION_PNG)


def write_results_csv(path: Path, rows: list[dict]) -> None:
    columns = [k for k in rows[0] if k != "class_names"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _ci(row: dict, key: str, percent: bool) -> str:
    value, low, high = row[key], row[f"{key}_low"], row[f"{key}_high"]
    if np.isnan(value):
        return "n/a"
    if percent:
        return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def results_markdown(results: dict) -> str:
    """The Table-3-style table (estimate [95% CI]) beside the paper's accuracy, and the paired comparisons."""
    from mslesion.cli.core import PAPER_TABLE3

    cfg, rows = results["config"], results["rows"]
    names = rows[0]["class_names"]
    scheme = (f"{cfg['cv_folds']}-fold patient-grouped CV" if cfg["scheme"] == "cv" else "the paper's 70/30 split")
    header = ["channels", "accuracy %", "balanced acc. %", "ROC AUC", "PR AUC", "pAUC (FPR<0.1)",
              *(f"TPR {n} %" for n in names), "majority %", "paper acc. %"]
    lines = [f"Results of {scheme}, {cfg['seeds']} seed(s), {rows[0]['n']} lesions; estimate [95% CI], "
             f"CIs from {cfg['n_bootstrap']} bootstrap resamples of patients.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        paper = PAPER_TABLE3.get(row["channels"])
        cells = [row["channels"], _ci(row, "accuracy", True), _ci(row, "balanced_accuracy", True),
                 _ci(row, "roc_auc", False), _ci(row, "pr_auc", False), _ci(row, "partial_roc_auc", False),
                 *(_ci(row, f"tpr_{n}", True) for n in names), f"{100 * row['majority_baseline']:.1f}",
                 f"{paper:.2f}" if paper is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "PR AUC and pAUC take the rarer class as positive; pAUC is sklearn's McClish-standardised "
              "partial AUC (0.5 = chance, 1 = perfect). The paper's accuracy is from one lesion-level split of "
              "its private cohort (Table 3), ours from the data above: compare patterns, not numbers.", ""]
    if results["comparisons"]:
        lines += ["Paired comparisons on the same lesions and folds (difference A − B, patient-bootstrap 95% CI, "
                  "two-sided permutation test swapping patients between A and B):", "",
                  "| A | B | metric | A − B [95% CI] | p |", "|---|---|---|---|---|"]
        for c in results["comparisons"]:
            lines.append(f"| {c['a']} | {c['b']} | {METRIC_LABELS[c['metric']]} | {c['difference']:+.3f} "
                         f"[{c['low']:+.3f}, {c['high']:+.3f}] | {c['p_value']:.3g} |")
    return "\n".join(lines) + "\n"
