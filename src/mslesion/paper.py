"""Every number quoted from the paper (Šišić, "Neural Network Based Classification of Brain Lesions").

The rest of the package imports these instead of restating them: the protocol's defaults in `config`, the
class map in `data.task`, Table 1 in the synthetic cohort, Table 3 in the demo, ablation and reports.
"""

# Table 1: lesion classes by their QSM appearance (codes as stored in the `label` dataset of a patch file).
TABLE1_NAMES = {
    1: "unclassified",
    2: "isointense",
    3: "paramagnetic rim (PRL)",
    4: "hypointense rim",
    5: "hyperintense",
    6: "hypointense",
}
TABLE1_COUNTS = {1: 3664, 2: 460, 3: 214, 4: 19, 5: 841, 6: 71}
PAPER_PATIENTS = 115
# Remyelinating = isointense + hypointense; demyelinating = PRL + hyperintense. Classes 1 and 4 are not trained on.
PAPER_CLASSES = "remyelinating=2,6;demyelinating=3,5"
TRAINED_CODES = (2, 3, 5, 6)
# The phenotype task (the paper's future work): every Table 1 code its own class. Class names are entity-safe
# (alphanumeric and "_") because they name table columns and files.
PHENOTYPE_CLASSES = "unclassified=1;isointense=2;PRL=3;hypointense_rim=4;hyperintense=5;hypointense=6"
REMYELINATING_CODES = (2, 6)
DEMYELINATING_CODES = (3, 5)
PRL_CODE = 3
# Whole-subject calls share one label-map legend whatever the model: 0 background, 1-6 the Table 1 codes, then
# the binary calls and the two refusals. A custom class map's classes follow from CUSTOM_CALLS_START.
CALL_LEGEND = {
    0: "background", 1: "unclassified", 2: "isointense", 3: "PRL", 4: "hypointense_rim", 5: "hyperintense",
    6: "hypointense", 7: "remyelinating", 8: "demyelinating", 9: "uncertain", 10: "out_of_distribution",
}
CUSTOM_CALLS_START = 11
# Four or more paramagnetic rim lesions: a count associated with more severe disease (Absinta et al. 2019).
PRL_SEVERITY_COUNT = 4

# The input: three channels of 35³ patches of 0.65 mm voxels.
MS_CHANNELS = ("flair", "qsm", "mask")
PATCH_SIZE = 35
VOXEL_SIZE_MM = 0.65

# Table 2: feature maps of the three conv → BN → ReLU → pool blocks.
PAPER_WIDTHS = (64, 64, 128)
# The nets `--arch` builds (mslesion.model): feature maps per block, conv padding, global average pooling before
# the classifier. Only "paper" is the paper's; "compact" is the project's option (valid for patches ≥ 16).
ARCHITECTURES = {"paper": (PAPER_WIDTHS, 0, False), "compact": ((32, 64, 128, 256), 1, True)}
# The smallest patch those blocks accept (valid 3×3×3 convolutions, 2/2 pooling): 22 → 20 → 10 → 8 → 4 → 2 → 1.
MIN_PATCH_SIZE = 22

# The training protocol: 70/30 split per class, the remyelinating class doubled, Adam with 0.01 → 0.00316 → 0.001
# at epochs 6 and 10, 15 epochs of mini-batches of 128, every patch in all 48 cube symmetries.
TRAIN_FRACTION = 0.7
OVERSAMPLE = (2, 1)
EPOCHS = 15
BATCH_SIZE = 128
LEARNING_RATE = 0.01
LR_MILESTONES = (6, 10)
LR_DECAY = 10**-0.5

# Table 3: test accuracy (%) per channel combination, on 160 remyelinating + 318 demyelinating test lesions.
PAPER_TABLE3 = {
    "flair": 70.09, "qsm": 89.31, "mask": 69.22, "flair,qsm": 88.59,
    "flair,mask": 71.01, "qsm,mask": 89.45, "flair,qsm,mask": 89.00,
}
PAPER_BASELINE = 66.66
# The 7 channel combinations of Table 3, in its order: the default channel sets of `ablate` and `demo`.
CHANNEL_SETS = tuple(PAPER_TABLE3)
PAPER_CLASS_NAMES = tuple(group.split("=")[0] for group in PAPER_CLASSES.split(";"))  # remyelinating, demyelinating


def table3_accuracy(channels: str, class_names) -> float | None:
    """The paper's Table 3 accuracy (%) of a channel set, where a result is on the paper's task (its two classes);
    None otherwise: beside a six-class or another binary task's accuracy it would compare unlike things."""
    return PAPER_TABLE3.get(channels) if tuple(class_names) == PAPER_CLASS_NAMES else None
