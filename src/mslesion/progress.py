"""Progress bars (rich) for long work; silent when disabled or not on a terminal."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, task_id) -> None:
        self.progress, self.task_id = progress, task_id

    def advance(self, n: int = 1, **fields: float) -> None:
        if self.progress is not None:
            text = "  ".join(f"{k} {v:.4f}" for k, v in fields.items())
            self.progress.update(self.task_id, advance=n, stats=text)


class _Bars:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def task(self, description: str, total: int) -> _Bar:
        if self.progress is None:
            return _Bar(None, None)
        return _Bar(self.progress, self.progress.add_task(description, total=total, stats=""))


def progress_columns() -> tuple:
    """Description, bar, done/total, elapsed and remaining time: the columns every progress bar shows."""
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())


@contextmanager
def progress_bar(enabled: bool = True):
    if not enabled:
        yield _Bars(None)
        return
    with Progress(*progress_columns(), TextColumn("{task.fields[stats]}"), transient=False) as progress:
        yield _Bars(progress)
