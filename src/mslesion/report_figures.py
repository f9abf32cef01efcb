"""Figures of the report and the ablation (matplotlib, Agg backend): each function returns a Figure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mslesion.atomic import atomic_path
from mslesion.paper import PAPER_CLASS_NAMES, table3_accuracy


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def save_png(figure, path: Path) -> None:
    data = png_bytes(figure)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


METRICS_PLOTTED = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC AUC"),
                   ("pr_auc", "PR AUC"), ("partial_roc_auc", "pAUC FPR<0.1"))


def ablation_figure(rows: list[dict]):
    """Grouped bars per channel set with 95% CI whiskers; the paper's Table 3 accuracy as black ticks."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.0))
    width = 0.8 / len(METRICS_PLOTTED)
    x = np.arange(len(rows))
    for i, (key, label) in enumerate(METRICS_PLOTTED):
        values = np.array([r[key] for r in rows])
        errors = np.abs(np.array([[r[f"{key}_low"], r[f"{key}_high"]] for r in rows]).T - values)
        axis.bar(x + (i - len(METRICS_PLOTTED) / 2 + 0.5) * width, values, width, yerr=errors, capsize=2,
                 label=label)
    paper = [table3_accuracy(r["channels"], r.get("class_names", PAPER_CLASS_NAMES)) for r in rows]
    shown = [(xi, p / 100) for xi, p in zip(x, paper, strict=True) if p is not None]
    if shown:
        axis.scatter(*zip(*shown, strict=True), marker="_", s=600, color="black", zorder=3,
                     label="paper accuracy (Table 3)")
    axis.axhline(rows[0]["majority_baseline"], color="grey", linestyle=":", label="majority baseline")
    axis.set_xticks(x, [r["channels"] for r in rows], rotation=20)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("estimate (95% CI over patients)")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title("Channel ablation")
    return figure


def learning_curves_figure(histories: list[list[dict]], labels: list[str]):
    """Loss and accuracy per epoch of each run (training, and validation where there is one)."""
    plt = _pyplot()
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for history, label in zip(histories, labels, strict=True):
        epochs = [h["epoch"] for h in history]
        line = loss_axis.plot(epochs, [h["loss"] for h in history], marker="o", ms=3, label=f"{label} train")[0]
        accuracy_axis.plot(epochs, [h["accuracy"] for h in history], marker="o", ms=3, color=line.get_color())
        validated = [h for h in history if "val_loss" in h]  # every epoch, or every --val-every epochs
        if validated:
            val_epochs = [h["epoch"] for h in validated]
            loss_axis.plot(val_epochs, [h["val_loss"] for h in validated], ls="--", marker="x", ms=4,
                           color=line.get_color(), label=f"{label} validation")
            accuracy_axis.plot(val_epochs, [h["val_accuracy"] for h in validated], ls="--", marker="x", ms=4,
                               color=line.get_color())
    from matplotlib.ticker import MaxNLocator

    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss (solid: training, dashed: validation)")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axis in (loss_axis, accuracy_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(labels) <= 6:
        loss_axis.legend(fontsize=7)
    return figure


def confusion_figure(matrix: np.ndarray, names: tuple[str, ...]):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 3.6))
    shown = axis.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    axis.set_xticks(range(len(names)), names, rotation=15)
    axis.set_yticks(range(len(names)), names)
    axis.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    figure.colorbar(shown, ax=axis, fraction=0.046)
    return figure


def roc_figure(targets: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...], positive: int | None = None):
    """ROC curve of each class against the rest; binary: of the `positive` class only, the one the summary's PR AUC
    and partial AUC name (metrics.rare_class; the ROC AUC is the same for either class)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    classes = [1 if positive is None else positive] if len(names) == 2 else range(len(names))
    for c in classes:
        if 0 < (targets == c).sum() < len(targets):
            fpr, tpr, _ = roc_curve(targets == c, probabilities[:, c])
            auc = roc_auc_score(targets == c, probabilities[:, c])
            label = f"positive: {names[c]}" if len(names) == 2 else f"{names[c]} vs rest"
            axis.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", ls=":", label="chance")
    axis.axvspan(0, 0.1, color="orange", alpha=0.12, label="FPR < 0.1 (partial AUC)")
    axis.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC curve")
    axis.legend(fontsize=7, loc="lower right")
    return figure


def reliability_figure(targets: np.ndarray, probabilities: np.ndarray, bins: int = 10):
    """Top-label calibration: accuracy against confidence of the predicted class (sklearn's calibration_curve)."""
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == targets
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    if correct.all() or not correct.any():
        axis.text(0.5, 0.5, "all predictions " + ("correct" if correct.all() else "wrong"), ha="center",
                  transform=axis.transAxes)
    else:
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
        axis.plot(mean_confidence, accuracy, marker="o", label="model")
    axis.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect calibration")
    low = 1 / probabilities.shape[1]
    axis.hist(confidence, bins=bins, range=(low, 1), weights=np.full(len(confidence), 1 / max(len(confidence), 1)),
              alpha=0.25, color="grey", label="share of lesions")
    axis.set(xlabel="confidence (max probability)", ylabel="accuracy", title="reliability diagram",
             xlim=(low - 0.02, 1.0), ylim=(0, 1.02))
    axis.legend(fontsize=7, loc="upper left")
    return figure


def coverage_figure(curve: dict[str, np.ndarray], abstention: dict | None):
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.6, 3.8))
    axis.plot(curve["coverage"], curve["accuracy"], drawstyle="steps-post", marker="o", ms=2)
    if abstention is not None and abstention["coverage"] > 0:
        axis.scatter([abstention["coverage"]], [abstention["covered_accuracy"]], color="red", zorder=3,
                     label=f"--abstain {abstention['threshold']:g}")
        axis.legend(fontsize=8, loc="lower left")
    axis.set(xlabel="coverage (share of lesions not abstained on)", ylabel="accuracy on covered lesions",
             title="abstention: coverage vs accuracy", xlim=(0, 1.02), ylim=(0, 1.02))
    return figure


def _normalised(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image)


def mid_slices(patch: np.ndarray, channels: tuple[str, ...] = ()) -> np.ndarray:
    """The central axial slice of every channel side by side: images scaled to their own 1-99th percentile, the
    mask on a fixed 0-1 scale (a percentile scale turns a lesion covering under 1% of the slice black)."""
    middle = patch.shape[1] // 2
    gap = np.ones((patch.shape[2], 1))
    pieces = []
    for c in range(patch.shape[0]):
        is_mask = c < len(channels) and channels[c] == "mask"
        pieces += [np.clip(patch[c, middle], 0, 1) if is_mask else _normalised(patch[c, middle]), gap]
    return np.hstack(pieces[:-1])


def montage_figure(groups: list[tuple[str, np.ndarray, list[str]]], channels: tuple[str, ...], examples: int):
    """One row per group (class × correct/misclassified): mid slices of each channel of a few lesions."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(groups), examples, figsize=(2.2 * examples, 1.25 * len(groups) + 0.4),
                                squeeze=False)
    for row, (title, patches, captions) in enumerate(groups):
        for column in range(examples):
            axis = axes[row, column]
            axis.axis("off")
            if column < len(patches):
                axis.imshow(mid_slices(patches[column], channels), cmap="gray", vmin=0, vmax=1)
                axis.set_title(captions[column], fontsize=7)
        axes[row, 0].text(-0.05, 0.5, title, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8)
    figure.suptitle(f"mid axial slices: {' | '.join(channels)}", fontsize=9)
    return figure


def saliency_figure(backgrounds: np.ndarray, maps: np.ndarray, captions: list[str], background_name: str,
                    masks: np.ndarray | None = None):
    """Saliency (|∂ logit / ∂ input|) of each lesion's mid axial slice over the background channel."""
    plt = _pyplot()
    n = len(backgrounds)
    figure, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.0), squeeze=False)
    for i in range(n):
        middle = backgrounds[i].shape[0] // 2
        for row in range(2):
            axes[row, i].imshow(_normalised(backgrounds[i][middle]), cmap="gray")
            axes[row, i].axis("off")
            if masks is not None:
                axes[row, i].contour(masks[i][middle], levels=[0.5], colors="cyan", linewidths=0.6)
        saliency = maps[i][middle] / (maps[i].max() or 1.0)
        axes[1, i].imshow(saliency, cmap="hot", alpha=np.clip(saliency * 1.5, 0, 0.85))
        axes[0, i].set_title(captions[i], fontsize=7)
    figure.suptitle(f"top: {background_name}; bottom: saliency overlaid"
                    + ("; cyan: lesion mask" if masks is not None else ""), fontsize=9)
    return figure


def overview_figure(background: np.ndarray, labels: np.ndarray, slices: list[int], colours: dict[int, str],
                    names: dict[int, str], background_name: str):
    """Axial slices (canonical RAS arrays: z is the third axis) of the background with the label map overlaid in
    the legend's colours; a legend of the calls present."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    plt = _pyplot()
    figure, axes = plt.subplots(1, len(slices), figsize=(2.3 * len(slices), 2.9), squeeze=False)
    low, high = np.percentile(background[background != 0] if np.any(background) else background, [1, 99])
    present = sorted(int(v) for v in np.unique(labels) if v)
    palette = np.zeros((max(colours) + 1, 4))
    for value, colour in colours.items():
        palette[value] = (*to_rgb(colour), 0.0 if value == 0 else 0.75)
    for axis, z in zip(axes[0], slices, strict=True):
        # rotate so anterior is up and the subject's right is on the image's left (radiological convention)
        axis.imshow(np.rot90(background[:, :, z]), cmap="gray", vmin=low, vmax=high if high > low else low + 1)
        axis.imshow(np.rot90(palette[np.clip(labels[:, :, z], 0, len(palette) - 1)]), interpolation="nearest")
        axis.set_title(f"z = {z}", fontsize=8)
        axis.axis("off")
    figure.legend(handles=[Patch(color=colours[v], label=names[v]) for v in present], loc="lower center",
                  ncol=max(1, min(len(present), 6)), fontsize=8, frameon=False)
    figure.suptitle(f"label map over {background_name} (axial; subject's right on the left)", fontsize=9)
    figure.subplots_adjust(bottom=0.14)
    return figure
