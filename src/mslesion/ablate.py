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
from contextlib import suppress
from pathlib import Path

import numpy as np

from mslesion.atomic import FolderInUse, atomic_path, check_folder_output, locked_folder, write_json
from mslesion.config import AblationConfig, EvaluateConfig, TrainConfig, canonical_channels, to_dict
from mslesion.data.task import ClassMap, Task, load_task
from mslesion.errors import InputError
from mslesion.metrics import (
    SUMMARY_METRICS,
    Predictions,
    derived_binary_score,
    paired_comparison,
    patient_bootstrap,
    phenotype_metrics,
    summary_vector,
)
from mslesion.paper import table3_accuracy
from mslesion.runs import (
    ABLATION_LOCK,
    ABLATION_PNG,
    BINARY_TWIN_RUNS,
    CHECKPOINT,
    CONFIG,
    MODEL,
    PREDICTIONS,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_MD,
    RunPredictions,
    changed_settings,
    is_finished_run,
    read_json,
    read_predictions,
    run_folder,
    write_ablation_config,
)

COMPARED_METRICS = ("roc_auc", "balanced_accuracy")


def grid(cfg: AblationConfig) -> list[TrainConfig]:
    """Every run of the ablation: channel sets × seeds × folds, each in its own run folder; a phenotype CV grid
    also holds each run's binary twin (AblationConfig.binary_twin)."""
    runs = []
    for c in cfg.channel_sets:
        for s in range(cfg.seeds):
            for f in range(cfg.folds):
                run = cfg.run_config(c, s, f, str(run_folder(Path(cfg.out), c, s, f)))
                runs.append(run)
                if cfg.paired_binary:
                    runs.append(cfg.binary_twin(run, str(run_folder(Path(cfg.out), c, s, f, BINARY_TWIN_RUNS))))
    return runs


# --- running the grid ---------------------------------------------------------------------------------------


def shard_of(runs: list[TrainConfig], shard: tuple[int, int]) -> list[TrainConfig]:
    """The I-th of N interleaved slices of the grid (1-based, as a scheduler's job array counts)."""
    index, count = shard
    if not 1 <= index <= count:
        raise InputError(f"--shard must be I/N with 1 ≤ I ≤ N, got {index}/{count}")
    return runs[index - 1::count]


def ablate(cfg: AblationConfig, show_progress: bool = True, console=None, shard: tuple[int, int] = (1, 1),
           collect: bool = False) -> dict:
    """Train and evaluate this process's share of the grid (skipping finished runs and runs another process holds),
    then write the results if every run of the grid is finished. With collect, only write the results."""
    check_folder_output(cfg.out, overwrite=True)  # a rerun resumes by design: only a file in the way is an error
    runs = grid(cfg)
    for run in runs:
        check_finished_run_matches(run)
    if collect:
        return collect_results(cfg, runs)
    mine = shard_of(runs, shard)
    wanted = tuple(dict.fromkeys(c for run in mine for c in run.channels))
    tasks = {classes: load_task(cfg.data, wanted, classes, cfg.train.in_memory).check_trainable()  # fails early
             for classes in dict.fromkeys(run.classes for run in mine)}
    write_ablation_config(Path(cfg.out), cfg)
    started = time.perf_counter()
    with grid_progress(show_progress, console) as progress:
        task_id = progress.add_task("ablation", total=len(mine)) if progress else None
        for run in mine:
            if progress:
                progress.update(task_id, description=_run_label(run))
            with suppress(FolderInUse):  # another process trains this run into the same ablation folder
                train_and_evaluate_run(run, tasks[run.classes].with_channels(run.channels))
            if progress:
                progress.advance(task_id)
    pending = [run.out for run in runs if not is_finished_run(Path(run.out))]
    if pending:  # the process that finishes the last run writes the results
        return {"pending": pending, "grid_seconds": time.perf_counter() - started}
    results = collect_results(cfg, runs)
    results["grid_seconds"] = time.perf_counter() - started
    return results


def collect_results(cfg: AblationConfig, runs: list[TrainConfig]) -> dict:
    """The results of a finished grid, written under the ablation folder's lock (several processes may finish)."""
    pending = [run.out for run in runs if not is_finished_run(Path(run.out))]
    if pending:
        raise InputError(f"{len(pending)} of {len(runs)} runs are not finished yet (first: {pending[0]}); run the "
                         "remaining shards first", cfg.out)
    with locked_folder(cfg.out, ABLATION_LOCK):
        return summarise(cfg)


def _run_label(run: TrainConfig) -> str:
    fold = f"fold {run.fold}" if run.cv_folds else "paper split"
    twin = " (binary twin)" if run.folds_from else ""
    return f"{'+'.join(run.channels):<15} seed {run.seed} {fold}{twin}"


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
    # the data file may be named by another path on a rerun (relative, moved); the grid is the same
    changed = changed_settings(read_json(path), run, also_neutral=("data",))
    if changed:
        raise InputError(f"this ablation folder was made with other settings ({', '.join(changed)}); "
                         "use another --out", path)


def train_and_evaluate_run(run: TrainConfig, task: Task) -> str:
    """Skip a finished run, evaluate a trained one, resume an interrupted one, or train a new one."""
    from mslesion.evaluate import evaluate
    from mslesion.train import train

    run_dir = Path(run.out)
    if is_finished_run(run_dir):
        return "skipped"
    status = "evaluated"
    if not (run_dir / MODEL).exists():
        status = "resumed" if (run_dir / CHECKPOINT).exists() else "trained"
        train(run, resume=True, show_progress=False, task=task)  # resume=True also starts fresh runs
    evaluate(EvaluateConfig(run=str(run_dir), device=run.device, in_memory=run.in_memory), task)
    return status


# --- summarising ----------------------------------------------------------------------------------------------


def pooled_runs(cfg: AblationConfig, channel_set: str, runs: str = "") -> list[RunPredictions]:
    """Per seed, the test predictions of all folds pooled and sorted by lesion index."""
    pooled = []
    for seed in range(cfg.seeds):
        parts = [read_predictions(run_folder(Path(cfg.out), channel_set, seed, f, runs) / PREDICTIONS)
                 for f in range(cfg.folds)]
        order = np.argsort(np.concatenate([p.index for p in parts]), kind="stable")

        def joined(field: str, parts=parts, order=order):
            values = [getattr(p, field) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)[order]

        pooled.append(RunPredictions(joined("index"), joined("probabilities"), joined("patients"), joined("targets"),
                                     parts[0].names, joined("labels"), joined("volumes"), joined("lesions")))
    return pooled


def pooled_predictions(cfg: AblationConfig, channel_set: str) -> tuple[list[Predictions], tuple[str, ...]]:
    """Per seed, the pooled test predictions as metrics.Predictions, and the class names."""
    pooled = pooled_runs(cfg, channel_set)
    return [p.predictions() for p in pooled], pooled[0].names


def phenotype_summary(cfg: AblationConfig, channel_set: str) -> dict:
    """The phenotype report of a channel set (metrics.phenotype_metrics on seed 0's pooled folds) and, on CV
    grids, the derived binary AUC against the dedicated binary twins, paired on the same lesions and folds."""
    pooled = pooled_runs(cfg, channel_set)
    class_map = ClassMap.parse(cfg.train.classes)
    first = pooled[0]
    report = phenotype_metrics(first.targets, first.probabilities, first.names, first.patients,
                               gate_class=class_map.class_of(1)[0], remyelinating=class_map.class_of(2, 6),
                               demyelinating=class_map.class_of(3, 5), volumes=first.volumes,
                               n_resamples=cfg.n_bootstrap)
    if cfg.paired_binary:
        derived = [derived_binary(p, class_map) for p in pooled]
        twins = [p.predictions() for p in pooled_runs(cfg, channel_set, BINARY_TWIN_RUNS)]
        try:
            report["derived_vs_dedicated_binary"] = paired_comparison(derived, twins, "roc_auc",
                                                                      n_resamples=cfg.n_bootstrap)
        except ValueError:
            raise InputError("the binary twins did not test the phenotype runs' lesions (was the data file "
                             "changed between runs?)", Path(cfg.out) / BINARY_TWIN_RUNS) from None
        report["dedicated_binary_roc_auc"] = float(summary_vector(twins)[SUMMARY_METRICS.index("roc_auc")])
    return report


def derived_binary(pooled: RunPredictions, class_map: ClassMap) -> Predictions:
    """The phenotype model's predictions on the binary task's lesions (codes 2, 3, 5, 6): demyelinating scored
    by p_dem / (p_rem + p_dem); in file order, as the binary twin's predictions are."""
    remyelinating, demyelinating = class_map.class_of(2, 6), class_map.class_of(3, 5)
    keep = np.isin(pooled.targets, remyelinating + demyelinating)
    score = derived_binary_score(pooled.probabilities[keep], remyelinating, demyelinating)
    targets = np.isin(pooled.targets[keep], demyelinating).astype(np.int64)
    return Predictions(targets, np.stack([1 - score, score], 1), pooled.patients[keep])


def summarise(cfg: AblationConfig) -> dict:
    """Estimates, CIs and paired comparisons of every channel set; writes results.csv, results.md, ablation.png."""
    rows, pooled = [], {}
    for channel_set in cfg.channel_sets:
        sets, names = pooled_predictions(cfg, channel_set)
        pooled[canonical_channels(channel_set)] = sets
        ci = patient_bootstrap(sets, n_resamples=cfg.n_bootstrap)
        counts = np.bincount(sets[0].targets, minlength=len(names))
        rows.append({"channels": canonical_channels(channel_set), "runs": cfg.seeds * cfg.folds,
                     "n": int(len(sets[0].targets)), "majority_baseline": float(counts.max() / counts.sum()),
                     "class_names": list(names), **_metric_columns(ci, names)})
        if cfg.train.task == "phenotype":
            rows[-1]["phenotype"] = phenotype_summary(cfg, channel_set)
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


# --- writing the results ----------------------------------------------------------------------------------------

METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "roc_auc": "ROC AUC",
                 "pr_auc": "PR AUC", "partial_roc_auc": "pAUC (FPR<0.1)"}


def write_results(out: Path, results: dict) -> None:
    write_json(out / RESULTS_JSON, results)
    write_results_csv(out / RESULTS_CSV, results["rows"])
    text = ablation_markdown(results)
    with atomic_path(out / RESULTS_MD) as tmp:
        tmp.write_text(text)
    from mslesion.report_figures import ablation_figure, save_png

    save_png(ablation_figure(results["rows"]), out / ABLATION_PNG)


def write_results_csv(path: Path, rows: list[dict]) -> None:
    columns = [k for k in rows[0] if k not in ("class_names", "phenotype")]
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


def ablation_markdown(results: dict) -> str:
    """The Table-3-style table (estimate [95% CI]) beside the paper's accuracy, and the paired comparisons."""
    cfg, rows = results["config"], results["rows"]
    names = rows[0]["class_names"]
    scheme = (f"{cfg['cv_folds']}-fold patient-grouped CV" if cfg["scheme"] == "cv" else "the paper's 70/30 split")
    paper_task = any(table3_accuracy(row["channels"], names) is not None for row in rows)
    header = ["channels", "accuracy %", "balanced acc. %", "ROC AUC", "PR AUC", "pAUC (FPR<0.1)",
              *(f"TPR {n} %" for n in names), "majority %", *(["paper acc. %"] if paper_task else [])]
    lines = [f"Results of {scheme}, {cfg['seeds']} seed(s), {rows[0]['n']} lesions; estimate [95% CI], "
             f"CIs from {cfg['n_bootstrap']} bootstrap resamples of patients.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        paper = table3_accuracy(row["channels"], names)
        cells = [row["channels"], _ci(row, "accuracy", True), _ci(row, "balanced_accuracy", True),
                 _ci(row, "roc_auc", False), _ci(row, "pr_auc", False), _ci(row, "partial_roc_auc", False),
                 *(_ci(row, f"tpr_{n}", True) for n in names), f"{100 * row['majority_baseline']:.1f}",
                 *([f"{paper:.2f}" if paper is not None else "–"] if paper_task else [])]
        lines.append("| " + " | ".join(cells) + " |")
    positive = ("take the rarer class as positive" if len(names) == 2 else
                "are one-vs-rest macro averages over the classes present (as is the ROC AUC)")
    lines += ["", f"PR AUC and pAUC {positive}; pAUC is sklearn's McClish-standardised partial AUC (0.5 = chance, "
              "1 = perfect)."
              + (" The paper's accuracy is from one lesion-level split of its private cohort (Table 3), ours from "
                 "the data above: compare patterns, not numbers." if paper_task else ""), ""]
    if any("phenotype" in row for row in rows):
        lines += phenotype_markdown(rows)
    if results["comparisons"]:
        lines += ["Paired comparisons on the same lesions and folds (difference A − B, patient-bootstrap 95% CI, "
                  "two-sided permutation test swapping patients between A and B):", "",
                  "| A | B | metric | A − B [95% CI] | p |", "|---|---|---|---|---|"]
        for c in results["comparisons"]:
            lines.append(f"| {c['a']} | {c['b']} | {METRIC_LABELS[c['metric']]} | {c['difference']:+.3f} "
                         f"[{c['low']:+.3f}, {c['high']:+.3f}] | {c['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def phenotype_markdown(rows: list[dict]) -> list[str]:
    """The phenotype task's gate and derived binary results per channel set."""
    def ci(value) -> str:
        if not isinstance(value, dict) or np.isnan(value["estimate"]):
            return "n/a"
        return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"

    lines = ["Phenotype task (seed 0's pooled folds; patient-bootstrap 95% CIs). Gate: unclassified (class 1) vs "
             "the rest by p_unclassified; volume-matched: each classified lesion paired with a class-1 lesion of "
             "the nearest volume. Derived binary: p_dem / (p_rem + p_dem) on codes 2, 3, 5, 6, paired with the "
             "dedicated binary model trained on the same folds.", "",
             "| channels | gate ROC AUC | gate PR AUC | gate ROC AUC, volume-matched | derived binary AUC | "
             "dedicated binary AUC | derived − dedicated [95% CI] | p |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p = row.get("phenotype")
        if p is None:
            continue
        paired = p.get("derived_vs_dedicated_binary")
        difference = (f"{paired['difference']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}]",
                      f"{paired['p_value']:.3g}") if paired else ("–", "–")
        dedicated = f"{p['dedicated_binary_roc_auc']:.3f}" if "dedicated_binary_roc_auc" in p else "–"
        lines.append(f"| {row['channels']} | {ci(p['gate_roc_auc'])} | {ci(p['gate_pr_auc'])} | "
                     f"{ci(p.get('gate_roc_auc_volume_matched'))} | {ci(p['derived_binary_roc_auc'])} | {dedicated} | "
                     f"{difference[0]} | {difference[1]} |")
    lines += ["", "Per-class true-positive rates [95% CI] (absent: no lesion of that class in the test folds):", ""]
    names = rows[0]["class_names"]
    lines += ["| channels | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in rows:
        if "phenotype" in row:
            rates = row["phenotype"]["true_positive_rate"]
            lines.append(f"| {row['channels']} | " + " | ".join(ci(rates[n]) if rates[n] != "absent" else "absent"
                                                                for n in names) + " |")
    return [*lines, ""]
