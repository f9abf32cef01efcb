"""Every command's settings: one frozen dataclass per command, composed rather than restated.

Defaults are written once, here (the paper's protocol comes from `paper`), and each setting is validated once,
in the `__post_init__` of the dataclass that owns it. The CLI reads its defaults and help texts from these
classes (`cli.app.option`), so a default never stands in two places. The resolved config is saved as JSON in
every run folder and inside every checkpoint, so a run can be understood and repeated from its folder alone.

Composition: `AblationConfig` holds a `TrainConfig` template from which every run of the grid is derived with
`dataclasses.replace`; `ExtractConfig` and `PredictConfig` share one `LesionFinding` block. This module imports
only `paper` and `errors`: every layer may read settings, no setting depends on a layer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mslesion import paper
from mslesion.errors import InputError

# Lesions per forward pass where nothing trains (evaluate, the validation passes, the out-of-distribution
# features). fp32 inference on a 2-core CPU (benchmarks/inference_batch.py): 199 / 198 / 205 / 132 / 83
# patches/s at batch 16 / 32 / 64 / 128 / 256; bf16 400-430 at every size. Past 64 the fp32 activations
# (64 maps of 33³ per patch) outgrow what the CPU keeps close, and evaluation always runs in fp32.
INFERENCE_BATCH_SIZE = 64

SPLITS = ("paper", "patient", "predefined")
AUGMENT_MODES = ("full", "random", "flips", "none")
ARCHS = tuple(paper.ARCHITECTURES)
INPUT_NORMS = ("zscore", "zerocenter")
PRECISIONS = ("auto", "bf16", "fp32")
PREDICT_PRECISIONS = PRECISIONS + ("int8",)  # int8: inference only, an explicit choice (mslesion.quantized)
SELECTIONS = ("last", "val_auc", "val_accuracy", "val_loss")
ABLATION_SCHEMES = ("cv", "paper")
TASKS = ("binary", "phenotype")
CLASS_WEIGHTS = ("auto", "none", "sqrt", "balanced")
IN_MEMORY_MODES = ("auto", "yes", "no")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")


# --- JSON round trip -------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type, data: dict[str, Any]):
    """Rebuild a config from JSON, tolerating fields added or removed since it was written.

    A nested block missing from older (flat) files is gathered from the top-level keys it now owns: an
    ablation.json of version 1 held the training settings beside the grid's.
    """
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        nested = _dataclass_type(f)
        if nested is not None:
            block = data.get(f.name) if isinstance(data.get(f.name), dict) else _flat_block(nested, data, cls)
            kwargs[f.name] = from_dict(nested, {**_template_defaults(f), **block})
        elif f.name in data:
            value = data[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _dataclass_type(f: dataclasses.Field) -> type | None:
    kind = globals().get(f.type) if isinstance(f.type, str) else f.type
    return kind if isinstance(kind, type) and dataclasses.is_dataclass(kind) else None


def _flat_block(nested: type, data: dict[str, Any], owner: type) -> dict[str, Any]:
    own = {f.name for f in dataclasses.fields(owner)}
    return {f.name: data[f.name] for f in dataclasses.fields(nested) if f.name in data and f.name not in own}


def _template_defaults(f: dataclasses.Field) -> dict[str, Any]:
    if f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return {}
    return to_dict(f.default_factory())  # type: ignore[misc]


# --- parsing and checks shared by several settings -----------------------------------------------------------


def parse_channels(text: str) -> tuple[str, ...]:
    channels = tuple(c.strip().lower() for c in text.split(",") if c.strip())
    if not channels:
        raise InputError(f"no channels in {text!r}")
    return channels


def canonical_channels(channel_set: str) -> str:
    return ",".join(parse_channels(channel_set))


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise InputError(problem)


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{flag} must be one of {', '.join(allowed)}, got {value!r}")


def _abstain(value: float) -> None:
    _require(0 <= value < 1, f"--abstain must be in [0, 1), got {value}")


def _finite(flag: str, value: float) -> None:
    _require(isinstance(value, int | float) and math.isfinite(value), f"{flag} must be a finite number, got {value}")


def _device(value: str) -> None:
    # the form only: whether this machine has the device is runtime.parse_device's question
    _require(bool(re.fullmatch(r"cpu|cuda(:\d+)?", value)), f"--device must be cpu, cuda or cuda:N, got {value!r}")


def _threads(value: int) -> None:
    _require(0 <= value <= 4096, f"--threads must be 0 (torch's default) or a positive count, got {value}")


def _patch_size(flag: str, value: int) -> None:
    _require(value >= paper.MIN_PATCH_SIZE, f"{flag} must be at least {paper.MIN_PATCH_SIZE} voxels (the smallest "
             f"patch the paper's three conv/pool blocks accept), got {value}")


def class_count(classes: str) -> int:
    """How many classes a class-map spec names (its full check is data.task.ClassMap.parse)."""
    return len([part for part in classes.split(";") if part.strip()])


# --- train and evaluate ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Training of the paper's net on one patch file. Defaults are the paper's protocol."""

    data: str = ""
    """Patch file (HDF5, the project's format); the CLI stores it as an absolute path, so that evaluate, resume and
    report find it from any working directory."""
    out: str = "runs/train"
    """Run folder: config, checkpoints, split, history and metrics go here."""
    channels: tuple[str, ...] = paper.MS_CHANNELS
    """Input channels, in order (names stored in the file)."""
    classes: str = paper.PAPER_CLASSES
    """Class map 'name=code,code;name=code'. Codes outside it are not trained on."""
    task: str = "binary"
    """binary: the paper's remyelinating (2, 6) vs demyelinating (3, 5); phenotype: all six Table 1 codes as
    classes, unclassified (1) and hypointense rim (4) included (the paper's future work). With phenotype,
    --classes is set for you and --oversample defaults to none (class weights balance instead)."""
    class_weights: str = "auto"
    """Loss weight per class from its training count n_k: none; sqrt (∝ 1/√n_k); balanced (∝ 1/n_k); auto = none
    for binary (the paper oversamples instead), sqrt otherwise (class 4 is 0.4% of lesions: 1/n_k would weigh
    one of its lesions as much as ~190 unclassified ones and train on noise)."""
    folds_from: str = ""
    """With --cv: the class map whose lesions define the patient-grouped folds (default: this run's). The binary
    twin of a phenotype ablation uses the phenotype map, so that both models test the same patients per fold."""
    arch: str = "paper"
    """paper: the paper's net (Table 2); compact: 'same'-padded blocks of 32, 64, 128, 256 maps and global average
    pooling (about the paper net's compute; see mslesion.model). An --init starter must have the same one."""
    init: str = ""
    """Fine-tune from a trained model: a run folder or builtin:<name> (mslesion models). Its channels and patch
    size must match; with other classes the last layer starts afresh."""
    init_norm: str = "refit"
    """With --init: refit the input normalisation (mean image, channel scales) on the new training data, so that
    another scanner's intensities reach the starter's filters in the range they were trained on; keep: the
    starter's (for very few lesions, whose mean image would be noise)."""
    split: str = "paper"
    """paper (per-class 70/30 over lesions), patient (grouped by patient) or predefined (the file's split)."""
    train_fraction: float = paper.TRAIN_FRACTION
    """Part of the lesions (paper split) or patients (patient split) that is trained on."""
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
    """Patient-grouped stratified folds (0 = use the split)."""
    input_norm: str = "zscore"
    """zscore: subtract the mean training image and divide each channel by its standard deviation (MATLAB's
    'zscore'); zerocenter: subtract only (the paper's). With zerocenter, channels in different units (QSM in
    ppm has ~1/16 of normalised FLAIR's spread) learn at different speeds under Adam, whose step per weight
    ignores the input's scale: multi-channel nets then ignore QSM (measured: see the README, "Why per-channel
    scaling is the default")."""
    augment: str = "full"
    """full: all 48 cube symmetries of every patch every epoch (the paper); random: one of the 48 per patch and
    epoch; flips: one of the 8 axis flips per patch and epoch (data in an anatomical frame); none."""
    oversample: tuple[int, ...] = paper.OVERSAMPLE
    """Copies of each training patch per class, in class-map order (the paper doubles the remyelinating class)."""
    epochs: int = paper.EPOCHS
    """Training epochs."""
    batch_size: int = paper.BATCH_SIZE
    """Mini-batch size."""
    lr: float = paper.LEARNING_RATE
    """Initial learning rate (Adam)."""
    lr_milestones: tuple[int, ...] = paper.LR_MILESTONES
    """Epochs (1-based) at which the learning rate is multiplied by lr_decay: 0.01 → 0.00316 → 0.001."""
    lr_decay: float = paper.LR_DECAY
    """Factor applied to the learning rate at each milestone."""
    weight_decay: float = 1e-4
    """L2 regularisation on weights (MATLAB's default), not on biases or batch-norm parameters."""
    seed: int = 0
    """Random seed: same seed and data ⇒ same split, initialisation, augmentation order and metrics on CPU."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 where this machine runs it faster: CUDA, or a CPU measured once and cached), bf16 or fp32."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    in_memory: str = "auto"
    """yes: hold the patches in memory; no: read them from the file as training goes; auto: yes when they fit in
    the memory available (cgroup limits included). The sample order, and so the weights, are the same either way;
    the run's config.json records what auto chose."""
    shuffle_window: int = 4096
    """Training samples' patches (after oversampling) shuffled together in one window. Each epoch cuts the
    training set into chunks of window/16 patches, shuffles the chunks' order, and shuffles all samples (patch,
    symmetry) of each run of 16 chunks together; a training set no larger than this is one window, shuffled as a
    whole. It changes the order, never the memory mode: streaming holds one window in memory (4,096 3-channel
    35³ patches ≈ 2 GiB), in-memory training follows the same order."""

    def __post_init__(self) -> None:
        _choice("--task", self.task, TASKS)
        _choice("--class-weights", self.class_weights, CLASS_WEIGHTS)
        _choice("--init-norm", self.init_norm, ("refit", "keep"))
        if self.task == "phenotype":
            _require(self.classes in (paper.PAPER_CLASSES, paper.PHENOTYPE_CLASSES),
                     "--task phenotype trains the six Table 1 codes: leave out --classes (or use --task binary "
                     "with your --classes)")
            object.__setattr__(self, "classes", paper.PHENOTYPE_CLASSES)  # frozen: resolved once, saved resolved
            if self.oversample == paper.OVERSAMPLE:
                object.__setattr__(self, "oversample", (1,))
        _choice("--split", self.split, SPLITS)
        _choice("--in-memory", self.in_memory, IN_MEMORY_MODES)
        _require(self.shuffle_window >= 1, f"--shuffle-window must be at least 1 patch, got {self.shuffle_window}")
        _choice("--augment", self.augment, AUGMENT_MODES)
        _choice("--arch", self.arch, ARCHS)
        _choice("--input-norm", self.input_norm, INPUT_NORMS)
        _choice("--precision", self.precision, PRECISIONS)
        _choice("--select", self.select, SELECTIONS)
        for flag, value in (("--lr", self.lr), ("--lr-decay", self.lr_decay), ("--weight-decay", self.weight_decay),
                            ("--train-fraction", self.train_fraction), ("--val-fraction", self.val_fraction)):
            _finite(flag, value)
        _require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _require(self.batch_size >= 2, f"--batch-size must be at least 2 (batch norm trains on batches), "
                 f"got {self.batch_size}")
        _require(0 < self.train_fraction < 1, f"--train-fraction must be in (0, 1), got {self.train_fraction}")
        _require(0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        _require(self.val_every >= 1, f"--val-every must be at least 1, got {self.val_every}")
        _require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _require(self.lr_decay > 0 and self.weight_decay >= 0, "--lr-decay must be positive, --weight-decay ≥ 0")
        _require(all(m >= 1 for m in self.lr_milestones), f"--lr-milestones are 1-based epochs, got "
                 f"{','.join(map(str, self.lr_milestones))}")
        _require(bool(self.oversample) and all(c >= 1 for c in self.oversample),
                 f"--oversample gives each class's copies (≥ 1), got {','.join(map(str, self.oversample))}")
        _require(len(self.oversample) <= class_count(self.classes),
                 f"--oversample has {len(self.oversample)} values but --classes names {class_count(self.classes)} "
                 "classes")
        _require(bool(self.channels), "--channels is empty")
        _require(self.seed >= 0, f"--seed must be ≥ 0, got {self.seed}")
        _require(self.cv_folds == 0 or self.cv_folds >= 2, f"--cv must be 0 (no CV) or at least 2, got {self.cv_folds}")
        _device(self.device)
        _threads(self.threads)
        if self.cv_folds > 1:
            _require(0 <= self.fold < self.cv_folds,
                     f"--fold must be in [0, {self.cv_folds}) with --cv {self.cv_folds}")


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of a trained run (`mslesion evaluate`)."""

    run: str = ""
    """Run folder written by `mslesion train`."""
    data: str = ""
    """Patch file to evaluate on; default: the run's own data and its test split."""
    batch_size: int = INFERENCE_BATCH_SIZE
    """Lesions per forward pass."""
    tta: bool = False
    """Test-time augmentation, as predict --tta: the mean over the model's symmetry group (48 cube symmetries, or
    the 8 axis flips of a --augment flips model); still fp32."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    abstain: float = 0.0
    """Confidence below which a prediction counts as 'uncertain' (0 = never): adds coverage and accuracy on
    the covered lesions to the metrics."""
    in_memory: str = "auto"
    """yes: read the patches into memory; no: read them from the file batch by batch; auto: yes when they fit."""

    def __post_init__(self) -> None:
        _choice("--in-memory", self.in_memory, IN_MEMORY_MODES)
        _abstain(self.abstain)
        _require(self.batch_size >= 1, "--batch-size must be at least 1")
        _device(self.device)


# --- experiments -------------------------------------------------------------------------------------------------


def _ablation_template() -> TrainConfig:
    # each run holds out part of its training patients to fit the temperature the CIs' calibration uses
    return TrainConfig(val_fraction=0.15)


@dataclass(frozen=True)
class AblationConfig:
    """A grid of training runs over channel sets, folds and seeds, and how it is summarised."""

    data: str = ""
    """Patch file (HDF5)."""
    out: str = "runs/ablation"
    """Ablation folder; a rerun with the same folder skips finished runs and resumes interrupted ones."""
    channel_sets: tuple[str, ...] = paper.CHANNEL_SETS
    """Channel combinations, each comma-separated (e.g. 'flair,qsm')."""
    scheme: str = "cv"
    """cv: patient-grouped stratified folds; paper: the paper's single lesion-level 70/30 split."""
    cv_folds: int = 5
    """Number of patient-grouped folds (scheme cv)."""
    seeds: int = 1
    """Repetitions with seeds 0..S-1 (new folds, initialisation and augmentation order each)."""
    reference: str = ""
    """Channel set every other set is compared to (paired test); default: the set with most channels."""
    n_bootstrap: int = 1000
    """Bootstrap resamples (and permutations) for CIs and p-values."""
    train: TrainConfig = field(default_factory=_ablation_template)
    """The training settings every run shares; its data, out, channels, split, folds and seed are set per run."""

    def __post_init__(self) -> None:
        _require(bool(self.channel_sets), "--channel-sets is empty")
        _choice("--split", self.scheme, ABLATION_SCHEMES)
        _require(self.scheme != "cv" or self.cv_folds >= 2, "--cv must be at least 2")
        _require(self.seeds >= 1 and self.n_bootstrap >= 10, "--seeds must be ≥ 1 and --bootstrap ≥ 10")
        sets = [canonical_channels(s) for s in self.channel_sets]
        _require(not self.reference or canonical_channels(self.reference) in sets,
                 f"--reference {self.reference!r} is not one of the channel sets")

    @property
    def folds(self) -> int:
        return self.cv_folds if self.scheme == "cv" else 1

    @property
    def reference_set(self) -> str:
        if self.reference:
            return canonical_channels(self.reference)
        return canonical_channels(max(self.channel_sets, key=lambda s: len(s.split(","))))

    @property
    def paired_binary(self) -> bool:
        """A phenotype grid on CV folds also trains the paper's binary model on the same folds (its twin)."""
        return self.train.task == "phenotype" and self.scheme == "cv"

    def binary_twin(self, run: TrainConfig, out: str) -> TrainConfig:
        """The dedicated binary model beside a phenotype run: the paper's classes and oversampling, same folds."""
        return dataclasses.replace(run, out=out, task="binary", classes=paper.PAPER_CLASSES,
                                   oversample=paper.OVERSAMPLE, folds_from=paper.PHENOTYPE_CLASSES)

    def run_config(self, channel_set: str, seed: int, fold: int, out: str) -> TrainConfig:
        """One run of the grid: the template with this run's data, folder, channels, split and seed."""
        cv = self.scheme == "cv"
        return dataclasses.replace(
            self.train, data=self.data, out=out, channels=parse_channels(channel_set),
            split="patient" if cv else "paper", cv_folds=self.cv_folds if cv else 0, fold=fold if cv else -1,
            seed=seed,
        )


@dataclass(frozen=True)
class DemoConfig:
    """`mslesion demo`: the paper's study end to end on the synthetic cohort."""

    out: str = "demo_runs"
    """Folder for the cohort and the runs (quick/ and full/ below it)."""
    full: bool = False
    """The paper protocol: full cohort, 48 symmetries, 15 epochs (hours on a CPU; minutes on a GPU)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    seed: int = 0
    """Seed of the cohort and of every run."""
    channel_sets: tuple[str, ...] = paper.CHANNEL_SETS
    """The channel combinations trained, Table 3's by default."""

    def __post_init__(self) -> None:
        _device(self.device)
        _require(self.seed >= 0, f"--seed must be ≥ 0, got {self.seed}")
        for channel_set in self.channel_sets:
            canonical_channels(channel_set)


@dataclass(frozen=True)
class ReportConfig:
    """`mslesion report`: one self-contained HTML file for a run or an ablation folder."""

    folder: str = ""
    """Run folder (mslesion train) or ablation folder (mslesion ablate)."""
    out: str = "report.html"
    """HTML file to write (self-contained: images embedded)."""
    abstain: float = 0.0
    """Predictions whose top probability is below this are 'uncertain' (0 = no abstention)."""
    examples: int = 4
    """Lesions per montage row, and saliency maps shown."""

    def __post_init__(self) -> None:
        _abstain(self.abstain)
        _require(1 <= self.examples <= 12, f"--examples must be in [1, 12], got {self.examples}")


@dataclass(frozen=True)
class ExportConfig:
    """`mslesion export`: a run's model as one ONNX graph (normalisation, net, calibrated softmax)."""

    run: str = ""
    """Run folder written by `mslesion train`."""
    out: str = "model.onnx"
    """ONNX file to write (atomically); channels, classes, patch size and temperature go in its metadata."""

    def __post_init__(self) -> None:
        _require(bool(self.out), "--out is empty")


# --- the synthetic cohort ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic cohort (saved in the output file's attributes)."""

    patients: int = paper.PAPER_PATIENTS
    """Number of synthetic patients (ids sub-001, sub-002, ...)."""
    lesions_scale: float = 1.0
    """Lesions per patient relative to the paper: 1.0 with 115 patients gives Table 1's counts (≈ 5,269)."""
    labelled_only: bool = False
    """Skip classes 1 and 4: the paper does not train on them and they are most of the generation time."""
    patch_size: int = paper.PATCH_SIZE
    """Patch edge in voxels (the paper's 35)."""
    voxel_size_mm: float = paper.VOXEL_SIZE_MM
    """Isotropic voxel size in mm."""
    seed: int = 0
    """Random seed: the same seed and parameters give bit-identical files."""
    fov_size: int = 64
    """Edge (voxels) of the field of view simulated around each patch, for the dipole convolution."""
    qsm_noise: float = 1.0
    """Multiplier on every patient's field noise (0: noiseless field; QSM still has TKD artefacts)."""
    lesion_contrast: float = 1.0
    """Multiplier on every lesion's contrast: its susceptibility (core, rim, texture) and its FLAIR excess; for
    cohorts shifted from the default (e.g. 0.7: a scanner or protocol with weaker lesion contrast)."""
    neighbours_per_patch: float = 0.5
    """Mean number of other lesions near each lesion (they appear in FLAIR and QSM, not in the mask)."""
    veins_per_patch: float = 1.0
    """Mean number of veins crossing each patch (paramagnetic on QSM), besides central veins."""

    def __post_init__(self) -> None:
        checks = (
            (isinstance(self.patients, int) and self.patients >= 1, f"--patients must be >= 1, got {self.patients}"),
            (math.isfinite(self.lesions_scale) and self.lesions_scale > 0,
             f"--lesions-scale must be > 0, got {self.lesions_scale}"),
            (isinstance(self.patch_size, int) and 9 <= self.patch_size <= 128,
             f"patch_size must be 9..128 voxels, got {self.patch_size}"),
            (isinstance(self.fov_size, int) and self.patch_size <= self.fov_size <= 256,
             f"fov_size must be patch_size..256 voxels, got {self.fov_size}"),
            (0.1 <= self.voxel_size_mm <= 5.0, f"voxel_size_mm must be 0.1..5, got {self.voxel_size_mm}"),
            (isinstance(self.seed, int) and self.seed >= 0, f"--seed must be an integer >= 0, got {self.seed}"),
            *((math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
               f"{name} must be >= 0, got {getattr(self, name)}")
              for name in ("qsm_noise", "lesion_contrast", "neighbours_per_patch", "veins_per_patch")),
        )
        for ok, problem in checks:
            _require(ok, f"synthetic cohort: {problem}")


# --- scans: extract and predict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionFinding:
    """How lesions are found in a mask; shared by extract and predict, so both cut the same lesions."""

    min_volume_mm3: float = 10.0
    """Lesions (components) smaller than this are dropped."""
    connectivity: int = 6
    """6 (faces) or 26 (faces, edges and corners) for connected components of a binary mask."""
    instances: bool = False
    """The mask is an instance map (one integer id per lesion) instead of a binary mask."""
    resample: bool = False
    """Resample images that are not on the reference grid (QSM, else FLAIR, else mask) instead of failing."""
    voxel_size_mm: tuple[float, ...] = ()
    """Resample every subject to this voxel size (3 values, or 1 for isotropic); empty = keep the grid."""
    split_confluent: bool = False
    """Split confluent lesions at their centres (maxima of a smoothed distance transform, a watershed, parts
    merged again across shallow necks; the settings and why: data.lesions.SplitOptions): one patch, row and part
    number per lesion of a union, labelled by its own phenotype code; without it a union of different codes is 1."""

    def __post_init__(self) -> None:
        _finite("--min-volume", self.min_volume_mm3)
        for value in self.voxel_size_mm:
            _finite("--voxel-size", value)
        _require(self.min_volume_mm3 >= 0, f"--min-volume must be ≥ 0, got {self.min_volume_mm3}")
        _require(self.connectivity in (6, 26), f"--connectivity must be 6 or 26, got {self.connectivity}")
        _require(len(self.voxel_size_mm) in (0, 1, 3) and all(v > 0 for v in self.voxel_size_mm),
                 f"--voxel-size must be 1 or 3 positive numbers, got {self.voxel_size_mm}")

    @property
    def target_voxel_size(self) -> tuple[float, float, float] | None:
        if not self.voxel_size_mm:
            return None
        v = self.voxel_size_mm
        return (v[0], v[0], v[0]) if len(v) == 1 else (v[0], v[1], v[2])


@dataclass(frozen=True)
class ExtractConfig:
    """Extraction of lesion patches from NIfTI subjects (`mslesion extract`)."""

    out: str = "patches.h5"
    """Patch file to write; the per-lesion CSV and this config (JSON) are written beside it."""
    channels: tuple[str, ...] = ()
    """Channels to extract, in order (flair, qsm, mask); empty = those every subject has."""
    patch_size: int = paper.PATCH_SIZE
    """Edge of the cubic patch in voxels (the paper: 35)."""
    finding: LesionFinding = field(default_factory=LesionFinding)
    """How lesions are found (minimum volume, connectivity, instances, resampling)."""
    float16: bool = False
    """Store the patches as float16: half the disk, and half the bytes read per epoch when training streams the
    file. Values keep 11 significant bits (relative rounding ≤ 0.05%; readers convert back to float32)."""

    def __post_init__(self) -> None:
        _patch_size("--patch-size", self.patch_size)
        unknown = [c for c in self.channels if c not in paper.MS_CHANNELS]
        _require(not unknown and len(set(self.channels)) == len(self.channels),
                 f"--channels must be distinct names among {', '.join(paper.MS_CHANNELS)}, "
                 f"got {','.join(self.channels)}")


@dataclass(frozen=True)
class PredictConfig:
    """Prediction with a trained run on NIfTI subjects or a patch file (`mslesion predict`)."""

    run: str = ""
    """Run folder written by `mslesion train` (its model.pt, channels, classes and temperature are used)."""
    out: str = "predictions"
    """Output folder: a BIDS derivative dataset (created; later runs with the same model and settings add subjects;
    a subject already there, or other settings, is refused unless --overwrite)."""
    tta: bool = False
    """Average over the model's symmetry group and report the spread: the 48 cube symmetries (48× the compute), the
    8 axis flips for a model trained with --augment flips; refused for --augment none."""
    abstain: float = 0.0
    """Report a lesion as 'uncertain' when its highest class probability is below this (0 = never)."""
    batch_size: int = 32
    """Patch passes per forward (with --tta, (lesion, symmetry) pairs). One subject of 50 lesions with TTA on a
    2-core AVX512-BF16 CPU: 9.7 / 9.4 / 8.9 s at 8 / 32 / 128 in bf16, 15.1 / 13.9 / 15.3 s in fp32 (benchmarks/
    speed.md); 32 is near the best in both at a quarter of 128's memory."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 where this machine runs it faster, measured once and cached), bf16 or fp32 (probabilities
    differ in the third decimal between them), or int8 (CPU only, models trained by 0.4.7 or later; integer
    kernels, faster than bf16 where the CPU has int8 instructions; moves probabilities by up to a few hundredths,
    see the README's measurements)."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    keep_ood: bool = False
    """Give flagged lesions their class call anyway (default: a lesion with any flag is called
    out_of_distribution; its probabilities and flags stay in the table)."""
    prl_count: int = paper.PRL_SEVERITY_COUNT
    """Subjects with at least this many PRL calls are flagged in the summary (4: associated in the literature
    with more severe disease)."""
    in_memory: str = "auto"
    """For a patch file: yes reads it into memory, no reads it batch by batch, auto: yes when it fits."""
    finding: LesionFinding = field(default_factory=LesionFinding)
    """How lesions are found: as in extract."""

    def __post_init__(self) -> None:
        _choice("--in-memory", self.in_memory, IN_MEMORY_MODES)
        _abstain(self.abstain)
        _require(self.batch_size >= 1, "--batch-size must be at least 1")
        _require(self.prl_count >= 1, f"--prl-count must be at least 1, got {self.prl_count}")
        _choice("--precision", self.precision, PREDICT_PRECISIONS)
        _device(self.device)
        _threads(self.threads)

    def extract_config(self, patch_size: int, channels: tuple[str, ...]) -> ExtractConfig:
        """The extraction that cuts this run's patches: its channels and patch size, this lesion finding."""
        return ExtractConfig(out="", channels=channels, patch_size=patch_size, finding=self.finding)


# --- imports ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MedMNISTImportConfig:
    """Import of a MedMNIST-3D-style npz into an HDF5 patch file (`mslesion import-medmnist`)."""

    source: str = ""
    """The npz file (keys train_/val_/test_ images and labels)."""
    out: str = ""
    """HDF5 patch file to write (atomically)."""
    channel_name: str = "image"
    """Name of the one image channel (e.g. ct, mra); pass it to `train --channels`."""
    class_names: tuple[str, ...] = ()
    """Names of classes 0..K-1 in label order; default: known MedMNIST names, else class0, class1, ..."""

    def __post_init__(self) -> None:
        _require(bool(_NAME_PATTERN.match(self.channel_name)),
                 f"--channel-name {self.channel_name!r}: use letters, digits, '_', '-', '.', '+'")
        for name in self.class_names:
            _require(bool(_NAME_PATTERN.match(name)),
                     f"class name {name!r}: use letters, digits, '_', '-', '.', '+' (no ',;=')")
        _require(len(set(self.class_names)) == len(self.class_names),
                 f"class names must be distinct, got {','.join(self.class_names)}")
