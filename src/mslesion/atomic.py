"""Safe outputs: a file is either the old version or the complete new one, never half-written; an existing result
is replaced only when asked (--overwrite), and then only once the new one is complete; one writer at a time."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mslesion.errors import InputError


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the output, not the temporary file beside it
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; results are meant to be shared
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename in (None, tmp, Path(tmp)):  # name the output, not its temporary twin (writes name none)
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def csv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A CSV table of `rows` (dicts) with the given columns, in order; keys outside them are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- existing outputs and concurrent writers ---------------------------------------------------------------


def check_file_output(path: str | Path, overwrite: bool, flag: str = "--out") -> Path:
    """An output file may be new, or replaced with --overwrite; never a folder, never silently replaced."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} names a folder; give a file name", path)
    if path.exists() and not overwrite:
        raise InputError("exists; use --overwrite to replace it (the old file stays until the new one is complete)",
                         path)
    return path


def check_folder_output(path: str | Path, overwrite: bool, resume_hint: str = "") -> Path:
    """An output folder may be new or empty, or replaced with --overwrite; never a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("exists and is not a folder", path)
    if has_results(path) and not overwrite:
        raise InputError(f"holds earlier results; use --overwrite to replace them{resume_hint}", path)
    return path


def has_results(folder: str | Path) -> bool:
    """Anything but hidden bookkeeping (a lock, a temporary file) in an output folder."""
    return Path(folder).is_dir() and any(not p.name.startswith(".") for p in Path(folder).iterdir())


class FolderInUse(InputError):
    """Another process holds the folder's lock."""


@contextmanager
def locked_folder(folder: str | Path, lock_name: str):
    """Hold `folder`'s lock while the block writes there; a second writer fails at once, naming the holder."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock, holder = FileLock(folder / lock_name, timeout=0), folder / f"{lock_name}.holder"
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text().strip() if holder.exists() else "another process"
        raise FolderInUse(f"in use by another mslesion process ({who}); wait for it to finish or use another "
                          "--out", folder) from None
    try:
        holder.write_text(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        yield folder
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
        if created and folder.is_dir() and not has_results(folder):  # a failed first write leaves nothing behind
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def staged_folder(out: str | Path):
    """Yield an empty folder beside `out`; it replaces `out` only if the block succeeds (else it is removed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, out: Path) -> None:
    """Move a complete folder onto `out`; an old `out` is moved aside first and removed only after the swap."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old / out.name, out)  # put the old result back: never neither
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
