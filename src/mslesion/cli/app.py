"""The Typer application and the helpers every command module shares.

Option defaults and help texts come from the config dataclasses (`option`, `joined`): a default is written once,
in `mslesion.config`, and its field docstring is the option's help.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from typing import Annotated, Any

import typer
from rich.console import Console

from mslesion import __version__
from mslesion.errors import InputError

app = typer.Typer(
    name="mslesion", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Classify MS lesions from 3D MRI (FLAIR, QSM, lesion mask) as remyelinating or demyelinating.",
)
console = Console()
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"mslesion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error instead of "
                                                        "writing it to a log file (anywhere on the line).")] = False,
) -> None:
    """Classify MS lesions from 3D MRI (FLAIR, QSM, lesion mask) as remyelinating or demyelinating."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (the string literal that follows its annotation)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for statement, following in zip(body, body[1:], strict=False):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = first_sentence(" ".join(following.value.value.split()))
    return docs


def first_sentence(text: str) -> str:
    """Help stays short; the rest of a field's docstring (the why) is for the reader of the code."""
    return re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]


def option(cls: type, name: str, *flags: str, **kwargs: Any) -> Any:
    """A Typer option whose help text is the docstring of field `name` of the config class `cls`."""
    kwargs.setdefault("help", field_docs(cls).get(name))
    return typer.Option(*flags, **kwargs)


def joined(values: tuple, separator: str = ",") -> str:
    """A tuple default as the command line writes it: (2, 1) → '2,1'."""
    return separator.join(str(v) for v in values)


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{flag} expects comma-separated integers, got {text!r}") from None


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{flag} expects comma-separated numbers, got {text!r}") from None
