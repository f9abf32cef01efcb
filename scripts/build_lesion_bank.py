"""Build src/mslesion/data/synth/lesion_bank.npz from the open_ms_data consensus masks (20 build masks only).

    PYTHONPATH=src python scripts/build_lesion_bank.py [--data ../shared/data/open_ms_data]

Every 6-connected component of at least 10 mm³ is split into lesions (mslesion.data.lesions.split_component);
singles and the parts of confluent components are stored as bit-packed 1 mm masks. Deterministic: the same
masks give the same file.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mslesion.data.lesions import SplitOptions, connected_components, split_component
from mslesion.data.synth.shapes import BANK_FILE, BUILD_MASKS, MAX_PARTS, pack, unpack

MIN_VOXELS = 10  # 10 mm³ at 1 mm: extract's default minimum volume

# The options the shipped bank was cut with (extract's defaults later became min_neck_mm 0.8, and a smoothed
# distance map): rebuilding with them reproduces lesion_bank.npz.
BANK_SPLIT = SplitOptions(min_separation_mm=4.0, min_radius_mm=1.5, min_neck_mm=1.0, smoothing_mm=0.0)


def mask_path(data: Path, name: str) -> Path:
    full = data / name / "lesion_mask.nii.gz"
    return full if full.exists() else data / "masks_only" / f"{name}_lesion_mask.nii.gz"


def cut_shapes(mask: np.ndarray, groups: int) -> tuple[list[np.ndarray], list[int], list[np.ndarray], int]:
    """Shapes (tight boxes), their confluent group (-1: single; numbered from `groups`), part offsets, and the
    number of components."""
    components, _ = connected_components(mask)
    sizes = np.bincount(components.ravel())
    shapes, group, offset, n = [], [], [], 0
    for component, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None or sizes[component] < MIN_VOXELS:
            continue
        n += 1
        inside = components[box] == component
        parts = split_component(inside, (1.0, 1.0, 1.0), BANK_SPLIT, max_parts=MAX_PARTS)
        confluent = parts.max() > 1
        for part in range(1, int(parts.max()) + 1):
            own = parts == part
            part_box = ndimage.find_objects(own.astype(np.int32))[0]
            shapes.append(own[part_box])
            group.append(groups if confluent else -1)
            offset.append(np.array([s.start for s in part_box]))
        groups += int(confluent)
    return shapes, group, offset, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", type=Path, default=root.parent / "shared" / "data" / "open_ms_data")
    parser.add_argument("--out", type=Path, default=root / "src" / "mslesion" / "data" / "synth" / BANK_FILE)
    args = parser.parse_args()
    shapes, group, offset, n_components = [], [], [], 0
    for name in BUILD_MASKS:
        mask = np.asarray(nib.load(mask_path(args.data, name)).dataobj) > 0
        groups = max(group, default=-1) + 1
        s, g, o, n = cut_shapes(mask, groups)
        shapes += s
        group += g
        offset += o
        n_components += n
        confluent = max(g, default=-1) + 1 - groups
        print(f"{name}: {n} components >= {MIN_VOXELS} mm3, {max(confluent, 0)} confluent "
              f"({sum(x >= 0 for x in g)} parts)")
    arrays = pack(shapes, group, offset, n_components, BUILD_MASKS)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    args.out.write_bytes(buffer.getvalue())
    bank = unpack(np.load(args.out))
    volumes = np.array([m.sum() for m in bank.masks])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): {len(bank.singles)} singles, "
          f"{len(bank.masks) - len(bank.singles)} parts of {bank.n_groups} confluent components "
          f"({bank.confluent_fraction:.1%} of {bank.n_components}); shape volumes median "
          f"{np.median(volumes):.0f}, max {volumes.max()} mm3")


if __name__ == "__main__":
    main()
