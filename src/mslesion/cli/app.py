"""The Typer application and the helpers every command module shares."""

from __future__ import annotations

import typer
from rich.console import Console

from mslesion.errors import InputError

app = typer.Typer(
    name="mslesion", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Classify MS lesions from 3D MRI (FLAIR, QSM, lesion mask) as remyelinating or demyelinating.",
)
console = Console()
err_console = Console(stderr=True)


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{flag} expects comma-separated integers, got {text!r}") from None
