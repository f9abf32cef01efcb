"""The `mslesion` command line: flags → config dataclasses → library calls.

Each module registers its subcommands on the one Typer app. Heavy imports (torch, h5py, nibabel) happen
inside the handlers so that `mslesion --help` is instant. User-facing input errors end as one line on
stderr and exit code 2.
"""

from __future__ import annotations

import sys

from mslesion.cli import core, experiments, imports, scans  # noqa: F401  (register the commands)
from mslesion.cli.app import app, err_console
from mslesion.errors import InputError


def main() -> None:
    try:
        app()
    except InputError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; a training run continues from its last checkpoint with --resume")
        sys.exit(130)


__all__ = ["app", "main"]
