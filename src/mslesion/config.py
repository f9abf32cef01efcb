"""One configuration dataclass per command. The resolved config is saved as config.json in every run folder
and inside every checkpoint, so a run can be understood and repeated from its folder alone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mslesion.data.splits import SPLITS
from mslesion.errors import InputError
from mslesion.paper import MS_CHANNELS, PAPER_CLASSES

AUGMENT_MODES = ("full", "random", "none")


def to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type, data: dict[str, Any]):
    """Rebuild a config from JSON, tolerating fields added or removed since it was written."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """Training of the paper's net on one patch file. Defaults are the paper's protocol."""

    data: str = ""
    """Patch file (HDF5, the project's format); the CLI stores it as an absolute path, so that evaluate, resume and
    report find it from any working directory."""
    out: str = "runs/train"
    """Run folder: config, checkpoints, split, history and metrics go here."""
    channels: tuple[str, ...] = MS_CHANNELS
    """Input channels, in order (names stored in the file)."""
    classes: str = PAPER_CLASSES
    """Class map: 'name=code,code;name=code'. Codes outside it are not trained on."""
    split: str = "paper"
    """paper (per-class 70/30 over lesions), patient (grouped by patient) or predefined (the file's split)."""
    train_fraction: float = 0.7
    val_fraction: float = 0.0
    """Part of the training set held out for validation (temperature scaling, model selection)."""
    select: str = "last"
    """Which epoch's weights become the model: last (the paper), val_auc, val_accuracy or val_loss."""
    val_every: int = 1
    """With a validation set: validate every N epochs and after the last (each validation costs a batch-norm
    pass over up to 1,024 training patches; on small sets that is ~30% of an epoch). --select picks among
    the validated epochs only."""
    fold: int = -1
    """With cv_folds > 1: which patient-grouped fold is the test set."""
    cv_folds: int = 0
    input_norm: str = "zscore"
    """zscore: subtract the mean training image and divide each channel by its standard deviation (MATLAB's
    'zscore'); zerocenter: subtract only (the paper's). With zerocenter, channels in different units (QSM in
    ppm has ~1/16 of normalised FLAIR's spread) learn at different speeds under Adam, whose step per weight
    ignores the input's scale: multi-channel nets then ignore QSM (measured: see the README, "Why per-channel
    scaling is the default")."""
    augment: str = "full"
    """full: all 48 cube symmetries of every patch every epoch (the paper); random: one per patch; none."""
    oversample: tuple[int, ...] = (2, 1)
    """Copies of each training patch per class (the paper doubles the remyelinating class)."""
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.01
    lr_milestones: tuple[int, ...] = (6, 10)
    """Epochs (1-based) at which the learning rate is multiplied by lr_decay: 0.01 → 0.00316 → 0.001."""
    lr_decay: float = 10**-0.5
    weight_decay: float = 1e-4
    """L2 regularisation on weights (MATLAB's default), not on biases or batch-norm parameters."""
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    """auto (bf16 autocast where it is faster: CUDA, or a CPU with bf16 support), bf16 or fp32."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise InputError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.augment not in AUGMENT_MODES:
            raise InputError(f"--augment must be one of {', '.join(AUGMENT_MODES)}, got {self.augment!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("--epochs and --batch-size must be at least 1")
        if not 0 < self.train_fraction < 1 or not 0 <= self.val_fraction < 1:
            raise InputError("--train-fraction must be in (0, 1) and --val-fraction in [0, 1)")
        if self.val_every < 1:
            raise InputError(f"--val-every must be at least 1, got {self.val_every}")
        if self.lr <= 0:
            raise InputError("--lr must be positive")
        if self.input_norm not in ("zscore", "zerocenter"):
            raise InputError(f"--input-norm must be zscore or zerocenter, got {self.input_norm!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not self.channels:
            raise InputError("--channels is empty")
        if self.select not in ("last", "val_auc", "val_accuracy", "val_loss"):
            raise InputError(f"--select must be last, val_auc, val_accuracy or val_loss, got {self.select!r}")
        if self.cv_folds > 1 and not 0 <= self.fold < self.cv_folds:
            raise InputError(f"--fold must be in [0, {self.cv_folds}) with --cv {self.cv_folds}")


@dataclass(frozen=True)
class EvaluateConfig:
    run: str = ""
    """Run folder written by `mslesion train`."""
    data: str = ""
    """Patch file to evaluate on; default: the run's own data and its test split."""
    batch_size: int = 256
    device: str = "cpu"
    abstain: float = 0.0
    """Confidence below which a prediction counts as 'uncertain' (0 = never): adds coverage and accuracy on
    the covered lesions to the metrics."""

    def __post_init__(self) -> None:
        if not 0 <= self.abstain < 1:
            raise InputError(f"--abstain must be in [0, 1), got {self.abstain}")
