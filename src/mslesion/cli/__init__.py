"""The `mslesion` command line: flags → config dataclasses → library calls.

Each module registers its subcommands on the one Typer app. Heavy imports (torch, h5py, nibabel) happen
inside the handlers so that `mslesion --help` is instant.

The error policy lives here, at the one boundary between the user and the library (README, "Errors"):
  exit 2    anything the user can fix: an input file, an option, a device, an output path that is unwritable,
            read-only or of the wrong kind; one line naming the path or option and the problem
  exit 1    the environment failed (disk full, quota, I/O error): one line naming the path and the OS reason;
            or an unexpected error: one line and the path of a log file holding the traceback (--debug shows it)
  exit 130  interrupted (Ctrl-C); training runs say how to resume
Never a raw traceback by default.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import time
import traceback

import typer

from mslesion.cli import core, deploy, experiments, imports, scans  # noqa: F401  (register the commands)
from mslesion.cli.app import app
from mslesion.errors import InputError

# OS errors the user fixes by choosing another path or permission; the others are the machine's
USER_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT,
               errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.ELOOP}
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.ENOMEM}
INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
RESUME_HINT = {"train": "rerun the same command with --resume to continue from the last finished epoch",
               "ablate": "rerun the same command: finished runs are skipped and the interrupted one resumes",
               "demo": "rerun the same command: finished runs are skipped and the interrupted one resumes"}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="mslesion", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED
    except InputError as exc:
        say(f"error: {exc}")
        code = 2
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, bad value type
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        command = next((a for a in args if not a.startswith("-")), "")
        say(f"error: {message} (see: mslesion {command + ' ' if command else ''}--help)")
        code = getattr(exc, "exit_code", 2)
    except Exception as exc:  # noqa: BLE001  (the one place that turns every failure into one line)
        if debug:
            raise
        code = report_failure(exc)
    if code == INTERRUPTED:  # Typer turns Ctrl-C into this exit code; say what it means and how to go on
        command = next((a for a in args if not a.startswith("-")), "")
        hint = RESUME_HINT.get(command)
        say(f"interrupted{'; ' + hint if hint else ''}")
    sys.exit(code if isinstance(code, int) else 0)


def say(line: str) -> None:
    """One plain line on stderr: no colours or terminal codes, which a log file would keep as garbage."""
    sys.stderr.write(line.replace("\n", " ") + "\n")
    sys.stderr.flush()


def report_failure(exc: BaseException) -> int:
    os_error = find_os_error(exc)
    if os_error is not None:
        number = os_error.errno or errno_in_text(str(os_error))
        where = os_error.filename or "output"
        reason = os_error.strerror or str(os_error)
        if number in USER_ERRNOS:
            say(f"error: {where}: {reason}")
            return 2
        if number in ENVIRONMENT_ERRNOS:
            say(f"error: {where}: {reason} (the machine, not the input: free space or fix the disk, then rerun)")
            return 1
    log = crash_log(exc)
    say(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
        f"(a bug; traceback in {log}, or rerun with --debug)")
    return 1


def find_os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind an exception (libraries such as h5py and torch wrap it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and (exc.errno or errno_in_text(str(exc))):
            return exc
        if isinstance(exc, RuntimeError) and errno_in_text(str(exc)):
            return OSError(errno_in_text(str(exc)), os.strerror(errno_in_text(str(exc))))
        exc = exc.__cause__ or exc.__context__
    return None


def errno_in_text(text: str) -> int | None:
    """h5py and torch's file writers report the OS error inside their message ('errno = 28', 'No space left')."""
    match = re.search(r"errno\s*=\s*(\d+)", text)
    if match:
        return int(match.group(1))
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
        if os.strerror(number) in text:
            return number
    return None


def crash_log(exc: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix=f"mslesion-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"mslesion {' '.join(sys.argv[1:])}\n\n")
        traceback.print_exception(exc, file=f)
    return path


__all__ = ["app", "main"]
