"""Command: export (a trained run as an ONNX model, to run without this package)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mslesion.cli.app import app, console, option
from mslesion.config import ExportConfig

EXPORT = ExportConfig()


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `mslesion train`.")],
    out: Annotated[Path, option(ExportConfig, "out", "--out", "-o")] = Path(EXPORT.out),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out.")] = False,
) -> None:
    """Export a run's model to ONNX: input normalisation, net and calibrated softmax in one graph, any batch size."""
    from mslesion.export import export_onnx

    result = export_onnx(ExportConfig(run=str(run), out=str(out)), overwrite)
    checked = result["max_difference"]
    check = (f"onnxruntime matches PyTorch to {checked:.1e}" if checked is not None
             else "not checked against PyTorch (onnxruntime is not installed)")
    console.print(f"wrote {result['out']} ({result['bytes'] / 1e6:.1f} MB; input [N, {len(result['channels'])}, "
                  f"{result['patch_size']}, {result['patch_size']}, {result['patch_size']}] "
                  f"{','.join(result['channels'])} → probabilities {','.join(result['classes'])}, temperature "
                  f"{result['temperature']:.3f}); {check}", soft_wrap=True)
