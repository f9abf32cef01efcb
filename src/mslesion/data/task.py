"""Classification tasks on a patch file: which label codes form which class (the class map), which channels are
read, and the samples that belong to no class dropped. `binary` is the paper's remyelinating/demyelinating task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mslesion.data.patches import PatchReader, read_patches
from mslesion.errors import InputError
from mslesion.paper import (
    CALL_LEGEND,
    CUSTOM_CALLS_START,
    DEMYELINATING_CODES,
    MIN_PATCH_SIZE,
    PHENOTYPE_CLASSES,
    REMYELINATING_CODES,
    TABLE1_NAMES,
)


@dataclass(frozen=True)
class ClassMap:
    """Groups label codes into training classes, e.g. remyelinating = {2, 6}, demyelinating = {3, 5}.

    Codes that belong to no group are dropped from training and evaluation (the paper drops 1 and 4).
    """

    names: tuple[str, ...]
    codes: tuple[tuple[int, ...], ...]

    @classmethod
    def parse(cls, spec: str) -> ClassMap:
        """Parse "name=code,code;name=code" (e.g. "remyelinating=2,6;demyelinating=3,5")."""
        names, codes = [], []
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            name, sep, values = part.partition("=")
            if not sep or not name.strip():
                raise InputError(f"class map {spec!r}: expected 'name=code,code;name=code'")
            try:
                group = tuple(int(v) for v in values.split(",") if v.strip())
            except ValueError:
                raise InputError(f"class map {spec!r}: codes must be integers") from None
            if not group:
                raise InputError(f"class map {spec!r}: class {name.strip()!r} has no codes")
            names.append(name.strip())
            codes.append(group)
        if len(names) < 2:
            raise InputError(f"class map {spec!r}: need at least two classes")
        flat = [c for g in codes for c in g]
        if len(set(flat)) != len(flat):
            raise InputError(f"class map {spec!r}: a code appears in two classes")
        if len(set(names)) != len(names):
            raise InputError(f"class map {spec!r}: class names must be distinct")
        return cls(tuple(names), tuple(codes))

    def spec(self) -> str:
        return ";".join(f"{n}={','.join(map(str, c))}" for n, c in zip(self.names, self.codes, strict=True))

    @property
    def is_phenotype(self) -> bool:
        """Every Table 1 code its own class (whatever the names or order): the phenotype task."""
        return sorted(self.codes) == [(c,) for c in TABLE1_NAMES]

    @property
    def is_binary(self) -> bool:
        """The paper's remyelinating (2, 6) vs demyelinating (3, 5) task."""
        return sorted(tuple(sorted(g)) for g in self.codes) == sorted([REMYELINATING_CODES, DEMYELINATING_CODES])

    def class_of(self, *codes: int) -> list[int]:
        """Indices of the classes holding these codes."""
        return [i for i, group in enumerate(self.codes) if set(group) & set(codes)]

    def derived_probabilities(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """The whole-subject columns: p_unclassified, p_remyelinating, p_demyelinating (phenotype: joint
        probabilities, summing with p(hypointense rim) to 1), the binary task's own two classes, else none."""
        if self.is_phenotype:
            return {"p_unclassified": probabilities[:, self.class_of(1)].sum(1),
                    "p_remyelinating": probabilities[:, self.class_of(*REMYELINATING_CODES)].sum(1),
                    "p_demyelinating": probabilities[:, self.class_of(*DEMYELINATING_CODES)].sum(1)}
        if self.is_binary:
            return {"p_remyelinating": probabilities[:, self.class_of(*REMYELINATING_CODES)].sum(1),
                    "p_demyelinating": probabilities[:, self.class_of(*DEMYELINATING_CODES)].sum(1)}
        return {}

    def call_names(self) -> tuple[str, ...]:
        """The name of each class as a whole-subject call: CALL_LEGEND's name for a Table 1 code or the binary
        groups, the class's own name otherwise."""
        names = []
        for name, group in zip(self.names, self.codes, strict=True):
            if len(group) == 1 and group[0] in TABLE1_NAMES:
                names.append(CALL_LEGEND[group[0]])
            elif tuple(sorted(group)) == REMYELINATING_CODES:
                names.append("remyelinating")
            elif tuple(sorted(group)) == DEMYELINATING_CODES:
                names.append("demyelinating")
            else:
                names.append(name)
        return tuple(names)

    def legend(self) -> dict[int, str]:
        """The label-map legend: CALL_LEGEND, plus values from CUSTOM_CALLS_START for classes outside it."""
        legend = dict(CALL_LEGEND)
        for name in self.call_names():
            if name not in legend.values():
                legend[max(CUSTOM_CALLS_START, max(legend) + 1)] = name
        return legend

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Class index per sample, -1 where the label belongs to no class."""
        out = np.full(len(labels), -1, dtype=np.int64)
        for index, group in enumerate(self.codes):
            out[np.isin(labels, group)] = index
        return out


@dataclass
class Task:
    """A PatchSet reduced to one classification task: chosen channels, mapped classes, unused samples dropped."""

    images: np.ndarray | PatchReader  # float32 [N, C, D, H, W], in memory or read from the file on demand
    targets: np.ndarray  # int64 [N] class index
    labels: np.ndarray  # int64 [N] original codes (the paper split stratifies on these)
    patients: np.ndarray
    lesions: np.ndarray
    channels: tuple[str, ...]
    class_map: ClassMap
    split: np.ndarray | None
    source_path: str
    volumes: np.ndarray | None = None  # float [N] mm³: the file's volume_mm3, else the mask channel's voxels
    synth_version: int | None = None  # the synthetic generator's version when the file is synthetic

    def __len__(self) -> int:
        return len(self.targets)

    def check_trainable(self) -> Task:
        """The paper's net needs patches of at least MIN_PATCH_SIZE³ (its three valid conv/pool blocks)."""
        size = self.images.shape[-1]
        if size < MIN_PATCH_SIZE:
            raise InputError(f"patches are {size}³ but the paper's network needs at least {MIN_PATCH_SIZE}³",
                             self.source_path)
        return self

    def with_channels(self, channels: tuple[str, ...]) -> Task:
        """The same lesions restricted to some of the loaded channels, without reading the file again."""
        index = [self.channels.index(c) for c in channels]
        if isinstance(self.images, PatchReader):
            return replace(self, images=self.images.with_channels(index), channels=tuple(channels))
        return replace(self, images=np.ascontiguousarray(self.images[:, index]), channels=tuple(channels))

    @property
    def in_memory(self) -> str:
        """yes or no: how the images were loaded (what `--in-memory auto` resolved to)."""
        return "no" if isinstance(self.images, PatchReader) else "yes"


def load_task(path: str | Path, channels: tuple[str, ...], class_map: ClassMap | str,
              in_memory: str = "yes", every_class: bool = True) -> Task:
    """Read a patch file for training/evaluation: map labels to classes and check every class has samples.

    `class_map` may be given as its spec ('name=code,code;name=code'), as configs store it. `in_memory` as in
    `read_patches`: yes, no (images stay in the file) or auto (in memory when they fit). `every_class=False`
    (evaluating a trained model on other data) only needs some labelled lesion: a class the file lacks, such as the
    rare hypointense-rim lesions, is reported as absent."""
    if isinstance(class_map, str):
        class_map = ClassMap.parse(class_map)
    known = {int(c) for g in class_map.codes for c in g} | {0, *TABLE1_NAMES}
    unknown: list[int] = []

    def in_task(labels: np.ndarray) -> np.ndarray:
        unknown.extend(sorted(set(np.unique(labels).tolist()) - known))
        return class_map.targets(labels) >= 0

    patches = read_patches(path, channels, labels_wanted=in_task, in_memory=in_memory)
    if unknown:
        raise InputError(f"labels {unknown} are neither Table 1 codes nor in the class map '{class_map.spec()}'", path)
    targets = class_map.targets(patches.labels)
    if not len(targets):
        raise InputError(f"no lesion has a label of the class map '{class_map.spec()}'", path)
    for index, name in enumerate(class_map.names):
        if every_class and not np.any(targets == index):
            raise InputError(f"class '{name}' (codes {list(class_map.codes[index])}) has no samples", path)
    return Task(
        volumes=lesion_volumes(patches, path, in_task),
        synth_version=int(patches.attrs["synth_version"]) if "synth_version" in patches.attrs else None,
        images=patches.images,
        targets=targets,
        labels=patches.labels,
        patients=patches.patients,
        lesions=patches.lesions,
        channels=patches.channels,
        class_map=class_map,
        split=patches.split,
        source_path=str(path),
    )


def lesion_volumes(patches, path: str | Path, wanted) -> np.ndarray | None:
    """Volume per lesion in mm³: the file's `volume_mm3` (format 2), else the voxels of the mask channel inside
    the patch (a lower bound for lesions larger than it), else None. Streamed files are read chunk by chunk."""
    if patches.volume_mm3 is not None:
        return patches.volume_mm3
    if "mask" in patches.channels:
        source, channel = patches.images, patches.channels.index("mask")
    else:
        try:
            source, channel = read_patches(path, ("mask",), labels_wanted=wanted, in_memory="no").images, 0
        except InputError:  # the file has no mask channel
            return None
    voxels = np.concatenate([(np.asarray(source[s:s + 256])[:, channel] > 0.5).sum(axis=(1, 2, 3))
                             for s in range(0, len(source), 256)] or [np.zeros(0)])
    return voxels * float(np.prod(patches.voxel_size_mm))


PHENOTYPE = ClassMap.parse(PHENOTYPE_CLASSES)
