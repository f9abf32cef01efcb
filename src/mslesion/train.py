"""Training: the paper's protocol, with checkpoint/resume and the batch-norm population pass.

The augmented data set is never materialised: each epoch is a shuffled list of (patch, symmetry) pairs,
and each batch gathers its patches in their symmetries on the fly (transforms.gather_augmented), on the
device that holds the data (the GPU with --device cuda). The list is cut into windows of at most
`shuffle_window` patches (one window for most data sets); a file larger than memory is read one window at a
time (`--in-memory no`), in the same order as when it is held in memory, so both give the same weights.
Speed (README, "Speed"): the net runs in channels-last 3D layout with fused batch-norm/ReLU/max-pool blocks
and bf16 autocast where the hardware supports it; under torchrun the epoch plan is sharded across ranks
(mslesion.distributed).
"""

from __future__ import annotations

import copy
import logging
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mslesion import distributed
from mslesion.atomic import check_folder_output, has_results, locked_folder, replace_folder, write_json
from mslesion.calibration import fit_temperature
from mslesion.config import TrainConfig, to_dict
from mslesion.data.patches import PatchReader, check_fits, read_lesion_index
from mslesion.data.splits import (
    carve_validation,
    check_split,
    paper_split,
    patient_folds,
    patient_split,
    predefined_split,
)
from mslesion.data.task import ClassMap, Task, load_task
from mslesion.errors import InputError
from mslesion.inference import predict_logits
from mslesion.metrics import roc_auc
from mslesion.model import LesionNet, set_population_batchnorm
from mslesion.ood import fit_ood
from mslesion.precision import resolve
from mslesion.progress import Forecast, progress_bar
from mslesion.quantized import ActivationRanges
from mslesion.runs import (
    CHECKPOINT,
    HISTORY,
    LOG,
    MODEL,
    RUN_LOCK,
    SPLIT,
    TrainedModel,
    changed_settings,
    load_torch,
    load_trained,
    model_metadata,
    model_provenance,
    save_torch,
    staging_folder,
    write_run_config,
)
from mslesion.runtime import autocast_dtype, parse_device, set_threads, tune_for
from mslesion.transforms import N_SYMMETRIES, apply_symmetry, augmentation_symmetries, gather_augmented

log = logging.getLogger("mslesion.train")
# `train` warns (it does not stop) when the protocol, timed on its first steps, will take longer than this here
LONG_TRAINING_S = 3600.0


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of a 1-based epoch: lr × lr_decay^(milestones reached). Paper: 0.01, 0.00316, 0.001."""
    return cfg.lr * cfg.lr_decay ** sum(epoch >= m for m in cfg.lr_milestones)


def resolve_split(task: Task, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Indices into the task for train / test (and val): a pure function of the data and the seed."""
    if cfg.cv_folds > 1:
        test = cv_test_lesions(task, cfg)
        split = {"train": np.setdiff1d(np.arange(len(task)), test), "test": test}
    elif cfg.split == "paper":
        split = paper_split(task.labels, cfg.train_fraction, cfg.seed)
    elif cfg.split == "patient":
        split = patient_split(task.targets, task.patients, cfg.train_fraction, cfg.seed)
    else:
        split = predefined_split(task.split, task.source_path)
    if cfg.val_fraction > 0 and "val" not in split:
        by_patient = cfg.split == "patient" or cfg.cv_folds > 1
        split["train"], split["val"] = carve_validation(
            split["train"], task.targets, task.patients, cfg.val_fraction, cfg.seed, by_patient
        )
    check_split(split, task.targets, len(task.class_map.names), task.source_path)
    if cfg.select != "last" and "val" not in split:
        raise InputError(f"--select {cfg.select} needs a validation set (--val-fraction, or a predefined 'val' split)")
    return split


def cv_test_lesions(task: Task, cfg: TrainConfig) -> np.ndarray:
    """The lesions of fold `cfg.fold`: folds of this task's lesions, or, with folds_from, the patients of that
    class map's folds (computed on the whole file, so that two tasks on one file test the same patients)."""
    if not cfg.folds_from:
        return np.sort(patient_folds(task.targets, task.patients, cfg.cv_folds, cfg.seed)[cfg.fold])
    labels, patients = read_lesion_index(task.source_path)
    targets = ClassMap.parse(cfg.folds_from).targets(labels)
    kept = targets >= 0
    folds = patient_folds(targets[kept], patients[kept], cfg.cv_folds, cfg.seed)
    tested = set(patients[kept][folds[cfg.fold]])
    return np.flatnonzero([p in tested for p in task.patients])


def oversampled(train: np.ndarray, targets: np.ndarray, oversample: tuple[int, ...]) -> np.ndarray:
    """Training indices with each class's patches repeated oversample[class] times (paper: ×2 remyelinating)."""
    copies = np.asarray([oversample[t] if t < len(oversample) else 1 for t in targets[train]])
    return np.repeat(train, copies)


def loss_weights(cfg: TrainConfig, targets: np.ndarray, n_classes: int) -> torch.Tensor | None:
    """Cross-entropy weight per class from its count n_k among the training items (after oversampling):
    none, sqrt (1/√n_k) or balanced (1/n_k), scaled so that the average training item weighs 1."""
    mode = cfg.class_weights if cfg.class_weights != "auto" else ("none" if cfg.task == "binary" else "sqrt")
    if mode == "none":
        return None
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** (0.5 if mode == "sqrt" else 1.0), 0.0)
    weights *= counts.sum() / (weights * counts).sum()
    return torch.as_tensor(weights, dtype=torch.float32)


def epoch_plan(items: np.ndarray, augment: str, epoch: int, seed: int,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shuffled (patch index, symmetry index) pairs of one epoch (or window); a pure function of (epoch, seed)."""
    generator = generator or torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    items_t = torch.as_tensor(items, dtype=torch.long)
    if augment == "full":
        items_t = items_t.repeat_interleave(N_SYMMETRIES)
        ks = torch.arange(N_SYMMETRIES).repeat(len(items))
    elif augment == "none":
        ks = torch.zeros(len(items), dtype=torch.long)
    else:  # one symmetry per patch, drawn from the mode's group (48 for random, 8 flips for flips)
        ks = torch.randint(0, augmentation_symmetries(augment), (len(items),), generator=generator)
    order = torch.randperm(len(items_t), generator=generator)
    return items_t[order], ks[order]


CHUNKS_PER_WINDOW = 16  # a window mixes this many chunks drawn from anywhere in the training set


@dataclass(frozen=True)
class EpochWindow:
    """The samples of one window: what a streamed epoch reads at once, and in which order it trains on them."""

    patches: np.ndarray  # sorted distinct task indices of the window's patches (the rows to read)
    items: torch.Tensor  # task index of each sample, in training order
    ks: torch.Tensor  # symmetry of each sample


def epoch_windows(items: np.ndarray, augment: str, epoch: int, seed: int, window: int) -> list[EpochWindow]:
    """The epoch's order, window by window: a pure function of (items, augment, epoch, seed, window).

    `items` (training indices after oversampling, in task order) are cut into chunks of window/16 consecutive
    items; the chunks are shuffled (their own seeded generator) and taken 16 at a time; each window's items,
    back in task order, are shuffled with all their symmetries by `epoch_plan`, one generator drawn from window
    after window. A training set of at most `window` items is a single window: exactly `epoch_plan(items)`, the
    order of training in memory before windows existed. Whether the images are in memory or streamed plays no
    part, so both modes train on the same batches in the same order.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if len(items) <= window:
        groups = [np.arange(len(items))]
    else:
        chunk = max(1, window // CHUNKS_PER_WINDOW)
        chunks = np.array_split(np.arange(len(items)), range(chunk, len(items), chunk))
        order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(chunks))
        per_window = max(1, window // chunk)
        groups = [np.sort(np.concatenate([chunks[c] for c in order[start:start + per_window]]))
                  for start in range(0, len(order), per_window)]
    windows = []
    for positions in groups:
        window_items = items[positions]
        plan_items, ks = epoch_plan(window_items, augment, epoch, seed, generator)
        windows.append(EpochWindow(np.unique(window_items), plan_items, ks))
    return windows


def patch_batch(images, idx: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """images[idx[i]] in symmetry ks[i], from a data set in memory (a tensor) or still in its file (a PatchReader)."""
    if isinstance(images, torch.Tensor):
        return gather_augmented(images, idx.to(images.device), ks.to(images.device))
    batch = torch.from_numpy(images.read(idx.numpy()))
    return gather_augmented(batch, torch.arange(len(idx)), ks)


def patch_rows(images, idx: torch.Tensor | np.ndarray) -> torch.Tensor:
    """images[idx] unaugmented, in memory or read from the file."""
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(idx)]
    return torch.from_numpy(images.read(np.asarray(idx)))


def input_normalisation(images, items: np.ndarray, augment: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 'zerocenter' mean image and the 'zscore' per-channel scale [C, 1, 1, 1], in one pass over the data.

    The mean is that of the training set as the net sees it: averaged over the orientations the augmentation
    draws from (all 48, the 8 flips, or none). The scale is 1 / the standard deviation of the images about that
    mean, per channel:
    Σ(x − m)² = Σx² − 2·Σ(m·Σx) + N·Σm², so one pass collects Σx per voxel and Σx² per channel.
    """
    voxel_sums = torch.zeros(images.shape[1:], dtype=torch.float64)
    channel_squares = torch.zeros(images.shape[1], dtype=torch.float64)
    for start in range(0, len(items), 512):
        chunk = patch_rows(images, items[start:start + 512]).double()
        voxel_sums += chunk.sum(0)
        channel_squares += chunk.pow(2).sum(dim=(0, 2, 3, 4))
    n = len(items)
    mean = voxel_sums / n
    mean = torch.stack([apply_symmetry(mean, k) for k in range(augmentation_symmetries(augment))]).mean(0)
    spatial = (1, 2, 3)
    squares_about_mean = channel_squares - 2 * (mean * voxel_sums).sum(spatial) + n * mean.pow(2).sum(spatial)
    std = (squares_about_mean.clamp_min(0) / (n * mean[0].numel())).sqrt()
    return mean.float(), (1.0 / std.clamp_min(1e-12)).float().view(-1, 1, 1, 1)


def build_model(cfg: TrainConfig, task: Task) -> LesionNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return LesionNet(len(task.channels), len(task.class_map.names), task.images.shape[-1], arch=cfg.arch)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam (0.9/0.999, 1e-8) with L2 regularisation on conv/FC weights only (MATLAB's L2 factors)."""
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim > 1)]
    return torch.optim.Adam(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
    )


@dataclass
class TrainingState:
    """One training between epochs: what is trained, on which data, where, and what it has recorded so far."""

    cfg: TrainConfig
    task: Task
    split: dict[str, np.ndarray]
    model: LesionNet
    net: torch.nn.Module  # the model, or its DDP wrapper: the one that trains
    optimizer: torch.optim.Optimizer
    images: torch.Tensor | PatchReader  # in memory on the device that gathers the batches, or still in the file
    targets: torch.Tensor
    items: np.ndarray  # training indices after oversampling
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32
    ctx: distributed.DistContext
    run_dir: Path
    weights: torch.Tensor | None = None  # cross-entropy class weights (TrainConfig.class_weights)
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # the best validated epoch so far: its record and weights (with --select)
    first_epoch: int = 1

    @property
    def val_targets(self) -> torch.Tensor | None:
        return torch.as_tensor(self.task.targets[self.split["val"]]) if "val" in self.split else None

    @property
    def per_epoch(self) -> int:
        return len(self.items) * (N_SYMMETRIES if self.cfg.augment == "full" else 1)


def train_epoch(state: TrainingState, plan: list[EpochWindow], bar=None) -> dict[str, float]:
    """One pass over the epoch's windows. Under DDP each rank trains on its slice of every global batch."""
    cfg, ctx, device = state.cfg, state.ctx, state.device
    state.net.train()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct: no per-step sync
    seen, step = 0, 0
    sync_every = 1 if device.type == "cpu" else 16  # a GPU must not wait for the host to print a number
    for window in plan:
        images, rows, ks = window_data(state, window)
        items = window.items.to(state.targets.device)
        for start in range(0, len(items), cfg.batch_size):
            global_n = len(items[start:start + cfg.batch_size])
            if global_n < 2 * ctx.world_size:  # batch norm cannot train on a single sample (per rank)
                continue
            idx = distributed.shard(rows[start:start + cfg.batch_size], ctx)
            k = distributed.shard(ks[start:start + cfg.batch_size], ctx)
            x = gather_augmented(images, idx, k).to(device, non_blocking=True)
            y = state.targets[distributed.shard(items[start:start + cfg.batch_size], ctx)].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=state.dtype or torch.float32, enabled=state.dtype is not None):
                logits = state.net(x)
            if ctx.enabled:  # DDP averages gradients over ranks: scale so that this is the global batch mean
                loss = F.cross_entropy(logits.float(), y, state.weights, reduction="sum")
                loss = loss * distributed.loss_scale(len(idx), global_n, ctx)
                batch_loss = loss.detach() * global_n / ctx.world_size  # this rank's summed loss
            else:
                loss = F.cross_entropy(logits.float(), y, state.weights)
                batch_loss = loss.detach() * len(idx)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            totals += torch.stack([batch_loss.double(), (logits.detach().argmax(1) == y).sum().double()])
            seen += len(idx)
            if bar is not None:
                seen_here = global_n if ctx.enabled else len(idx)
                if step % sync_every == 0:
                    loss_sum, correct = totals.tolist()
                    bar.advance(seen_here, loss=loss_sum / seen, acc=correct / seen)
                else:
                    bar.advance(seen_here)
            step += 1
    totals = torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64, device=device)])
    loss_sum, correct, seen = distributed.all_sum(totals, ctx).tolist()
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "samples": int(seen)}


def window_data(state: TrainingState, window: EpochWindow) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images a window gathers from, each sample's row in them and its symmetry, on the gathering device
    (once per window, not one host→device copy per step).

    In memory: the whole data set, rows = task indices. Streamed: the window's patches, read now, rows =
    positions among them; the samples and their order are the window's either way."""
    images = state.images
    if isinstance(images, torch.Tensor):
        return images, window.items.to(images.device), window.ks.to(images.device)
    block = torch.from_numpy(images.read(window.patches))
    rows = torch.as_tensor(np.searchsorted(window.patches, window.items.numpy()))
    target = state.device if state.device.type == "cuda" else torch.device("cpu")
    return block.to(target), rows.to(target), window.ks.to(target)


def population_batches(images, items: np.ndarray, batch_size: int, seed: int, augment: str):
    """One pass over the training set for the batch-norm statistics, each patch in a random orientation of the
    augmentation's group: the statistics of the inputs the net was trained on (unrotated patches for none).

    Streamed, each batch reads its patches from the file (random rows: one pass, as in memory)."""
    generator = torch.Generator().manual_seed(seed + 7)
    order = torch.as_tensor(items)[torch.randperm(len(items), generator=generator)]
    ks = torch.randint(0, augmentation_symmetries(augment), (len(order),), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) >= 2:
            yield patch_batch(images, idx, ks[start:start + batch_size])


@torch.no_grad()
def validation_logits(state: TrainingState) -> torch.Tensor:
    """Logits on the validation set of a copy of the model whose batch norm is finalised on ≤ 1024 patches."""
    probe = copy.deepcopy(state.model)
    subset = state.items[:: max(1, len(state.items) // 1024)]
    batches = population_batches(state.images, subset, state.cfg.batch_size, state.cfg.seed, state.cfg.augment)
    set_population_batchnorm(probe, batches, state.device, state.dtype)
    return predict_logits(probe, validation_images(state), device=state.device, precision=state.cfg.precision)


def validation_images(state: TrainingState):
    """The validation patches: a tensor, or a reader of their rows that inference reads batch by batch."""
    return images_at(state, state.split["val"])


def images_at(state: TrainingState, indices: np.ndarray):
    """Some of the training data's patches: a tensor, or a reader of their rows (streamed files)."""
    if isinstance(state.images, torch.Tensor):
        return state.images[torch.as_tensor(indices)]
    return state.images.subset(indices)


def validation_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    probabilities = torch.softmax(logits, 1).numpy()
    return {
        "val_loss": float(F.cross_entropy(logits, targets)),
        "val_accuracy": float((logits.argmax(1) == targets).float().mean()),
        "val_auc": roc_auc(targets.numpy(), probabilities),
    }


def is_better(stats: dict[str, float], best: dict[str, float] | None, select: str) -> bool:
    if best is None:
        return True
    if select == "val_loss":
        return stats["val_loss"] < best["val_loss"]
    return stats[select] > best[select]


def setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.disabled = False  # a host program's logging.config.dictConfig disables existing loggers; train.log is ours
    return handler


def split_record(task: Task, split: dict[str, np.ndarray]) -> dict:
    return {
        part: [{"index": int(i), "patient": str(task.patients[i]), "lesion": int(task.lesions[i]),
                "label": int(task.labels[i])} for i in idx]
        for part, idx in split.items()
    }


def train(cfg: TrainConfig, resume: bool = False, show_progress: bool = True, task: Task | None = None,
          overwrite: bool = False) -> Path:
    """Train one model; returns the run folder. With resume, continue from the last finished epoch; with overwrite,
    replace an earlier run, which stays in place until the new model is complete."""
    out = Path(cfg.out)
    set_threads(cfg.threads)
    device = parse_device(cfg.device)
    check_folder_output(out, overwrite or resume, " (or --resume to continue an interrupted run)")
    task = (task or load_task(cfg.data, tuple(cfg.channels), cfg.classes, cfg.in_memory)).check_trainable()
    cfg = replace(cfg, in_memory=task.in_memory)  # what auto chose (or how a given task was loaded), for config.json
    if task.in_memory == "no":
        check_window_fits(task, cfg)
    resolve_split(task, cfg)  # a split the data cannot give fails before anything is written
    if cfg.init:
        init_source(cfg, task)  # so does a starter model that does not fit
    tune_for(device)
    ctx, device = distributed.setup(device)
    created = not out.exists()
    try:
        with locked_folder(out, RUN_LOCK) if ctx.is_main else nullcontext():  # only rank 0 writes
            staged = overwrite and not resume and has_results(out)
            run_dir = staging_folder(out) if staged else out
            if staged:
                shutil.rmtree(run_dir, ignore_errors=True)  # a replacement interrupted earlier starts afresh
            checkpoint = _load_resume_checkpoint(run_dir, cfg) if resume else None
            _train_into(run_dir, cfg, task, device, checkpoint, ctx, show_progress)
            if staged and ctx.is_main:
                replace_folder(run_dir, out)
        return out
    except BaseException:
        if created and ctx.is_main and not (out / CHECKPOINT).exists():  # nothing to resume: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        distributed.teardown(ctx)


def check_window_fits(task: Task, cfg: TrainConfig) -> None:
    """Streaming holds one window of patches (and the next batch) in memory: refuse a window that cannot fit."""
    per_patch = int(np.prod(task.images.shape[1:])) * 4
    needed = min(cfg.shuffle_window, len(task)) * per_patch
    check_fits(needed, f"a --shuffle-window of {cfg.shuffle_window} patches", Path(task.source_path),
               "; lower --shuffle-window")


def _train_into(run_dir: Path, cfg: TrainConfig, task: Task, device: torch.device, checkpoint: dict | None,
                ctx: distributed.DistContext, show_progress: bool) -> None:
    handler = None
    try:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            handler = setup_logging(run_dir)
        state = start_training(cfg, task, run_dir, device, checkpoint, ctx)
        run_epochs(state, show_progress and ctx.is_main)
        if ctx.is_main:
            finish(state)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _load_resume_checkpoint(run_dir: Path, cfg: TrainConfig) -> dict | None:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    checkpoint = load_torch(path)
    changed = changed_settings(checkpoint["config"], cfg)
    if changed:
        raise InputError(f"cannot resume: settings differ from the checkpoint's ({', '.join(changed)})", path)
    return checkpoint


def start_training(cfg: TrainConfig, task: Task, run_dir: Path, device: torch.device, checkpoint: dict | None,
                   ctx: distributed.DistContext) -> TrainingState:
    """Split, input normalisation, model and optimiser, restored from the checkpoint when resuming."""
    split = resolve_split(task, cfg)
    if ctx.is_main:
        write_run_config(run_dir, cfg)
        write_json(run_dir / SPLIT, split_record(task, split))
    images = torch.from_numpy(task.images) if isinstance(task.images, np.ndarray) else task.images
    targets = torch.from_numpy(task.targets)
    if device.type == "cuda":  # the whole data set (or the window being trained) and its augmentation on the GPU
        images = images.to(device) if isinstance(images, torch.Tensor) else images
        targets = targets.to(device)
    items = oversampled(split["train"], task.targets, cfg.oversample)
    model = build_model(cfg, task)
    mean_image, input_scale = input_normalisation(images.cpu() if isinstance(images, torch.Tensor) else images,
                                                  items, cfg.augment)
    model.mean_image.copy_(mean_image)
    if cfg.input_norm == "zscore":
        model.input_scale.copy_(input_scale)
    if cfg.init and checkpoint is None:
        start_from(model, cfg, task)
    model.to(device).channels_last()
    optimizer = build_optimizer(model, cfg)
    state = TrainingState(cfg, task, split, model, model, optimizer, images, targets, items, device,
                          autocast_dtype(device, training_precision(cfg, device, checkpoint)), ctx, run_dir)
    state.weights = loss_weights(cfg, task.targets[items], len(task.class_map.names))
    if state.weights is not None:
        state.weights = state.weights.to(device)
        log.info("class weights %s", ", ".join(f"{n} {w:.3g}" for n, w in zip(task.class_map.names,
                                                                               state.weights.tolist(), strict=True)))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state.history, state.first_epoch = checkpoint["history"], checkpoint["epoch"] + 1
        state.best = checkpoint.get("best")
        log.info("resuming after epoch %d", checkpoint["epoch"])
    state.net = distributed.wrap(model, ctx, device)
    log.info("train %d patches (%d after oversampling), %d per epoch, test %d, precision %s, in memory: %s",
             len(split["train"]), len(items), state.per_epoch, len(split["test"]), state.dtype or torch.float32,
             cfg.in_memory)
    return state


def start_from(model: LesionNet, cfg: TrainConfig, task: Task) -> None:
    """Copy a starter model's weights (--init): all of them, or all but the classifier when the classes differ.

    The input normalisation is the one just estimated on this data (init_norm refit) or the starter's (keep)."""
    source = init_source(cfg, task)
    state = source.model.state_dict()
    if cfg.init_norm == "refit":
        state = {k: v for k, v in state.items() if k not in ("mean_image", "input_scale")}
    if source.class_map.codes != task.class_map.codes:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        log.info("--init %s: other classes (%s), the classifier starts afresh", cfg.init, source.class_map.spec())
    missing = model.load_state_dict(state, strict=False).missing_keys
    log.info("--init %s: %d tensors copied, %d fresh (%s normalisation)", cfg.init, len(state), len(missing),
             cfg.init_norm)


def init_source(cfg: TrainConfig, task: Task) -> TrainedModel:
    """The --init model, checked against this run's channels and patch size."""
    source = load_trained(cfg.init)
    patch_size = task.images.shape[-1]
    if source.channels != task.channels:
        raise InputError(f"--init {cfg.init} was trained on channels {','.join(source.channels)}, this run uses "
                         f"{','.join(task.channels)}: they must match (same channels in the same order)")
    if source.model.patch_size != patch_size:
        raise InputError(f"--init {cfg.init} takes {source.model.patch_size}³ patches, the data has {patch_size}³")
    if source.model.arch != cfg.arch:
        raise InputError(f"--init {cfg.init} is a '{source.model.arch}' network, this run asks for --arch {cfg.arch}: "
                         f"give --arch {source.model.arch}")
    return source


def training_precision(cfg: TrainConfig, device: torch.device, checkpoint: dict | None) -> str:
    """fp32 or bf16; a resumed run keeps the precision it started with, whatever `auto` would choose today."""
    if checkpoint is not None and checkpoint.get("precision") in ("fp32", "bf16"):
        return checkpoint["precision"]
    return resolve(device, cfg.precision, "training")


def run_epochs(state: TrainingState, show_progress: bool) -> None:
    """The remaining epochs; after each, rank 0 validates (when due) and writes history and checkpoint."""
    cfg = state.cfg
    with progress_bar(show_progress) as bars:
        for epoch in range(state.first_epoch, cfg.epochs + 1):
            for group in state.optimizer.param_groups:
                group["lr"] = lr_at(epoch, cfg)
            started = time.perf_counter()
            bar = bars.task(f"epoch {epoch}/{cfg.epochs}", total=state.per_epoch)
            if epoch == state.first_epoch and state.ctx.is_main:
                remaining = state.per_epoch * (cfg.epochs - epoch + 1)
                bar = Forecast(bar, remaining, lambda seconds, rate: warn_if_long(state, seconds, rate))
            plan = epoch_windows(state.items, cfg.augment, epoch, cfg.seed, cfg.shuffle_window)
            stats = train_epoch(state, plan, bar)
            bar.finish()
            seconds = time.perf_counter() - started
            record = {"epoch": epoch, "lr": lr_at(epoch, cfg), **stats, "seconds": seconds,
                      "samples_per_s": stats["samples"] / seconds}
            if state.ctx.is_main:  # the other ranks only train; rank 0 validates and writes
                end_epoch(state, record)


def warn_if_long(state: TrainingState, seconds: float, samples_per_s: float) -> None:
    """One line on stderr (and in train.log) when the rest of the training will take hours at the measured speed:
    the paper's protocol (48 symmetries × 15 epochs) is meant for a GPU, and on a CPU it is easy to start by mistake."""
    if seconds < LONG_TRAINING_S:
        return
    cfg = state.cfg
    quicker = [*(["--augment random (48× fewer samples per epoch)"] if cfg.augment == "full" else []),
               "fewer --epochs", *(["a GPU (--device cuda)"] if state.device.type == "cpu" else [])]
    line = (f"warning: at the {samples_per_s:.0f} samples/s of its first steps on {state.device}, this training "
            f"({cfg.epochs} epochs × {state.per_epoch:,} samples) will take about {seconds / 3600:.1f} h; quicker: "
            f"{', '.join(quicker)}")
    log.warning(line)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def end_epoch(state: TrainingState, record: dict) -> None:
    cfg, epoch, val_targets = state.cfg, record["epoch"], state.val_targets
    if val_targets is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
        record.update(validation_stats(validation_logits(state), val_targets))
        if cfg.select != "last" and is_better(record, state.best and state.best["record"], cfg.select):
            state.best = {"record": record, "state_dict": copy.deepcopy(state.model.state_dict())}
    state.history.append(record)
    log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
    save_torch({"format": "mslesion", "config": to_dict(cfg), "epoch": epoch, "history": state.history,
                "precision": "bf16" if state.dtype is not None else "fp32",
                "state_dict": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                "best": state.best}, state.run_dir / CHECKPOINT)
    write_json(state.run_dir / HISTORY, state.history)


def out_of_distribution_stats(state: TrainingState) -> tuple[dict, list[tuple[float, float]]]:
    """What the training lesions looked like (mslesion.ood): stored in model.pt for predict's flags; and, from
    the same pass, the activation ranges of `predict --precision int8` (mslesion.quantized)."""
    train, task = state.split["train"], state.task
    val = images_at(state, state.split["val"]) if "val" in state.split else None
    ranges = ActivationRanges()
    stats = fit_ood(state.model, images_at(state, train), task.targets[train], val,
                    task.volumes[train] if task.volumes is not None else None, task.channels, state.device,
                    state.cfg.seed, ranges=ranges)
    log.info("out-of-distribution statistics: feature threshold %.1f (from the %s lesions)",
             stats["feature_threshold"], stats["threshold_from"])
    return stats, ranges.ranges()


def finish(state: TrainingState) -> None:
    """Best-epoch selection, the batch-norm population pass, temperature scaling and the model file."""
    cfg, model, best, val_targets = state.cfg, state.model, state.best, state.val_targets
    if best is not None:
        log.info("selected epoch %d by %s", best["record"]["epoch"], cfg.select)
        model.load_state_dict(best["state_dict"])
    batches = population_batches(state.images, state.items, cfg.batch_size, cfg.seed, cfg.augment)
    set_population_batchnorm(model, batches, state.device, state.dtype)
    temperature = 1.0
    if val_targets is not None:
        logits = predict_logits(model, validation_images(state), device=state.device, precision=cfg.precision)
        temperature = fit_temperature(logits, val_targets)
        log.info("temperature %.3f fitted on %d validation lesions", temperature, len(val_targets))
    ood, activation_ranges = out_of_distribution_stats(state)
    meta = model_metadata(model, cfg, state.task.class_map, state.task.channels, state.task.synth_version)
    meta["training_precision"] = "bf16" if state.dtype is not None else "fp32"
    if cfg.init:
        meta["init"] = model_provenance(cfg.init)
    save_torch({**meta, "temperature": temperature,
                "ood": ood, "activation_ranges": activation_ranges,
                "selected_epoch": best["record"]["epoch"] if best else cfg.epochs,
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, state.run_dir / MODEL)
    log.info("finished; model saved to %s", state.run_dir / MODEL)
