"""Figures for the README: how `--split-confluent` splits confluent lesions.

Synthetic: whole-subject volumes at a voxel size other than the bank's 1 mm (default 0.8 mm, so the parts are
resampled and rotated, not the bank's own split re-run), with confluent components enriched to half of all
components so that the figures rest on enough parts. A true part is recovered when an extracted part's centre
lies within 2 voxels of its centre; a single (non-confluent) lesion is over-split when extract returns more than
one part for it.

Real: lesion counts before and after splitting for each of the 30 open_ms_data consensus masks (6-connected
components >= 10 mm³, as `extract` finds them by default).

    PYTHONPATH=src python scripts/measure_splitting.py synthetic --subjects 8 --voxel-size 0.8
    PYTHONPATH=src python scripts/measure_splitting.py real ../shared/data/open_ms_data
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np


def synthetic_volumes(out: Path, subjects: int, voxel_mm: float, confluent: float, seed: int) -> list[Path]:
    """Synthetic subjects in which a fraction `confluent` of the components are confluent unions."""
    from mslesion.config import SynthConfig
    from mslesion.data.synth import volumes

    with mock.patch.object(volumes, "is_confluent", lambda rng: bool(rng.random() < confluent)):
        return volumes.generate_subject_volumes(SynthConfig(seed=seed, labelled_only=True), out, subjects,
                                                voxel_size_mm=voxel_mm, lesions_per_subject=40)


def split_subject(folder: Path, split: bool):
    """extract's lesions of a synthetic subject (mask channel only: splitting needs nothing else)."""
    from mslesion.config import ExtractConfig, LesionFinding
    from mslesion.data.extract import extract_subject
    from mslesion.data.subjects import Subject

    anat = folder / "anat"
    subject = Subject(folder.name, anat / f"{folder.name}_label-lesion_mask.nii.gz", None, None,
                      anat / f"{folder.name}_desc-phenotype_dseg.nii.gz")
    cfg = ExtractConfig(patch_size=23, finding=LesionFinding(min_volume_mm3=0, split_confluent=split))
    return extract_subject(subject, cfg, ("mask",))


def part_scores(folder: Path, voxel_mm: float) -> tuple[int, int, int, int]:
    """(true parts of confluent components, of them recovered within 2 voxels, single lesions, over-split)."""
    truth = list(csv.DictReader((folder / "lesions.csv").open()))
    found = split_subject(folder, split=True).records
    centres = np.array([[r[k] for k in ("x_mm", "y_mm", "z_mm")] for r in found], dtype=np.float64)
    sizes = {}
    for row in truth:
        sizes[row["component"]] = sizes.get(row["component"], 0) + 1
    parts = recovered = singles = over_split = 0
    for row in truth:
        centre = np.array([float(row[k]) for k in ("x_mm", "y_mm", "z_mm")])
        nearest = int(np.argmin(np.linalg.norm(centres - centre, axis=1)))
        if sizes[row["component"]] > 1:
            parts += 1
            recovered += bool(np.linalg.norm(centres[nearest] - centre) / voxel_mm <= 2)
        else:
            singles += 1
            over_split += found[nearest]["part"] > 0  # extract split this single lesion into parts
    return parts, recovered, singles, over_split


def synthetic(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folders = synthetic_volumes(Path(tmp), args.subjects, args.voxel_size, args.confluent, args.seed)
        totals = np.sum([part_scores(f, args.voxel_size) for f in folders], axis=0)
    parts, recovered, singles, over_split = (int(v) for v in totals)
    print(f"{args.subjects} subjects at {args.voxel_size} mm (seed {args.seed}): {recovered}/{parts} parts of "
          f"confluent lesions recovered within 2 voxels ({recovered / parts:.1%}); {over_split}/{singles} single "
          f"lesions over-split ({over_split / singles:.1%})")


def real(args: argparse.Namespace) -> None:
    import nibabel as nib

    from mslesion.config import LesionFinding
    from mslesion.data.extract import kept_lesions, lesion_components
    from mslesion.data.lesions import split_confluent

    root = Path(args.root)
    masks = sorted(root.glob("masks_only/*_lesion_mask.nii.gz")) + sorted(root.glob("patient*/lesion_mask.nii.gz"))
    before_total = after_total = 0
    print("| mask | lesions | after splitting | confluent components |")
    print("|---|---:|---:|---:|")
    for path in sorted(masks, key=lambda p: p.name if p.parent.name == "masks_only" else p.parent.name):
        image = nib.load(path)
        voxel = tuple(float(v) for v in image.header.get_zooms()[:3])
        binary = (np.asarray(image.dataobj) > 0).astype(np.float32)
        components = lesion_components(binary, LesionFinding(), path)
        ids, _ = kept_lesions(components, float(np.prod(voxel)), LesionFinding().min_volume_mm3)
        _, owners = split_confluent(components, ids, voxel)
        confluent = len({c for c, part in owners if part > 0})
        name = path.name.split("_")[0] if path.parent.name == "masks_only" else path.parent.name
        print(f"| {name} | {len(ids)} | {len(owners)} | {confluent} |")
        before_total, after_total = before_total + len(ids), after_total + len(owners)
    print(f"| all {len(masks)} | {before_total} | {after_total} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synthetic")
    synth.add_argument("--subjects", type=int, default=8)
    synth.add_argument("--voxel-size", type=float, default=0.8)
    synth.add_argument("--confluent", type=float, default=0.5, help="fraction of components that are confluent")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=synthetic)
    masks = commands.add_parser("real")
    masks.add_argument("root", help="open_ms_data folder (masks_only/ and patientNN/ inside)")
    masks.set_defaults(run=real)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
