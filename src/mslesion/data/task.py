"""Classification tasks on a patch file: which label codes form which class (the class map), which channels are
read, and the samples that belong to no class dropped. `binary` is the paper's remyelinating/demyelinating task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mslesion.data.patches import PatchReader, read_patches
from mslesion.errors import InputError
from mslesion.paper import MIN_PATCH_SIZE, TABLE1_NAMES


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
              in_memory: str = "yes") -> Task:
    """Read a patch file for training/evaluation: map labels to classes and check every class has samples.

    `class_map` may be given as its spec ('name=code,code;name=code'), as configs store it. `in_memory` as in
    `read_patches`: yes, no (images stay in the file) or auto (in memory when they fit)."""
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
    for index, name in enumerate(class_map.names):
        if not np.any(targets == index):
            raise InputError(f"class '{name}' (codes {list(class_map.codes[index])}) has no samples", path)
    return Task(
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
