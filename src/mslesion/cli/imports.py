"""Commands: import-medmnist (third-party 3D patch sets into the project's HDF5 format)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, option
from mslesion.config import MedMNISTImportConfig

IMPORT = MedMNISTImportConfig()


@app.command("import-medmnist")
def import_medmnist_command(
    source: Annotated[Path, typer.Argument(help="MedMNIST-3D-style npz (train_/val_/test_ images and labels).")],
    out: Annotated[Path, option(MedMNISTImportConfig, "out", "--out", "-o")],
    channel_name: Annotated[str, option(MedMNISTImportConfig, "channel_name")] = IMPORT.channel_name,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing patch file.")] = False,
    class_names: Annotated[str, typer.Option(help="Comma-separated names of classes 0, 1, ... (default: "
                                                  "MedMNIST's names where known, else class0, class1, ...).")] = "",
) -> None:
    """Convert a MedMNIST 3D npz to a patch file, keeping the official train/val/test split.

    Class c is stored as label code c + 1 (code 0 means "not labelled"); the class map to pass to
    `train --classes` is printed and stored in the file attribute `class_map`. Images are scaled to [0, 1].
    MedMNIST has no patient ids: each sample gets its own.
    """
    from mslesion.data.medmnist import import_medmnist, split_summary

    names = tuple(n.strip() for n in class_names.split(",") if n.strip())
    cfg = MedMNISTImportConfig(source=str(source), out=str(out), channel_name=channel_name, class_names=names)
    patches = import_medmnist(cfg, overwrite)
    class_map = str(patches.attrs["class_map"])
    size = patches.patch_shape[0]
    console.print(f"wrote {len(patches)} patches ({size}³, channel '{channel_name}') to {out}")
    for split, counts in split_summary(patches).items():
        console.print(f"  {split:5s} {sum(counts.values()):6d}  per code: {counts}")
    console.print(f"class map: {class_map}")
    console.print(f"train with: mslesion train {out} --split predefined --channels {channel_name} "
                  f"--classes '{class_map}' --select val_auc", highlight=False, soft_wrap=True)
