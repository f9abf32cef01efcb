"""Progress for long work: rich bars on a terminal, plain flushed lines otherwise, nothing when disabled.

A rich bar redraws one line in place; written to a file or a pipe it shows nothing until the work ends (a training
whose output went to a file printed nothing for 12 minutes). So when standard output is not a terminal, each task
prints one plain line when it ends (one per epoch of a training, one per subject of a prediction), and a line at
least every HEARTBEAT_S seconds while it runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

HEARTBEAT_S = 60.0  # a long task in a log file still says it is alive, without flooding it


def _stats_text(fields: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in fields.items())


class _Bar:
    def __init__(self, progress: Progress | None, task_id) -> None:
        self.progress, self.task_id = progress, task_id

    def advance(self, n: int = 1, **fields: float) -> None:
        if self.progress is None:
            return
        if fields:  # a step without fresh figures keeps the last ones on screen
            self.progress.update(self.task_id, advance=n, stats=_stats_text(fields))
        else:
            self.progress.update(self.task_id, advance=n)

    def finish(self) -> None:
        """The task is over even if short of its total (a training epoch skips a last batch of one sample)."""


class _PlainBar:
    """One task written as plain lines: 'epoch 2/15: 1000/1000 in 12.3 s  loss 0.41  acc 0.83'."""

    def __init__(self, description: str, total: int) -> None:
        self.description, self.total, self.done, self.stats = description, total, 0, ""
        self.started = self.last_line = time.perf_counter()
        self.finished = False

    def advance(self, n: int = 1, **fields: float) -> None:
        self.done += n
        if fields:
            self.stats = _stats_text(fields)
        if self.done >= self.total:
            self.finish()
        elif time.perf_counter() - self.last_line >= HEARTBEAT_S:
            self._line()

    def finish(self) -> None:
        """Write the task's line now, even if short of its total; once."""
        if not self.finished:
            self.finished = True
            self._line()

    def _line(self) -> None:
        self.last_line = now = time.perf_counter()
        stats = f"  {self.stats}" if self.stats else ""
        sys.stdout.write(f"{self.description}: {self.done}/{self.total} in {now - self.started:.1f} s{stats}\n")
        sys.stdout.flush()


class _Bars:
    def __init__(self, progress: Progress | None, plain: bool = False) -> None:
        self.progress, self.plain = progress, plain
        self.open: list[_PlainBar] = []

    def task(self, description: str, total: int) -> _Bar | _PlainBar:
        if self.plain:
            self.open.append(_PlainBar(description, total))
            return self.open[-1]
        if self.progress is None:
            return _Bar(None, None)
        return _Bar(self.progress, self.progress.add_task(description, total=total, stats=""))

    def finish_all(self) -> None:
        for bar in self.open:
            bar.finish()
        self.open.clear()


class Forecast:
    """A bar that also times its first steps and extrapolates: after `warmup` steps (the first ones build kernels and
    caches, and are slow) it times `steps` more, then calls estimate(seconds for the `remaining` units, units per
    second) once. The units are those the bar advances by (samples for a training)."""

    def __init__(self, bar: _Bar | _PlainBar, remaining: int, estimate: Callable[[float, float], None],
                 warmup: int = 1, steps: int = 5) -> None:
        self.bar, self.remaining, self.estimate = bar, remaining, estimate
        self.warmup, self.steps = warmup, steps
        self.calls = self.done = self.timed = 0
        self.started = 0.0

    def advance(self, n: int = 1, **fields: float) -> None:
        self.bar.advance(n, **fields)
        self.calls += 1
        self.done += n
        if self.calls == self.warmup:
            self.started = time.perf_counter()
        elif self.warmup < self.calls <= self.warmup + self.steps:
            self.timed += n
            if self.calls == self.warmup + self.steps:
                rate = self.timed / max(time.perf_counter() - self.started, 1e-9)
                self.estimate(max(self.remaining - self.done, 0) / rate, rate)

    def finish(self) -> None:
        self.bar.finish()


def progress_columns() -> tuple:
    """Description, bar, done/total, elapsed and remaining time: the columns every progress bar shows."""
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())


def stdout_is_terminal() -> bool:
    return Console(file=sys.stdout).is_terminal


@contextmanager
def progress_bar(enabled: bool = True):
    if not enabled:
        yield _Bars(None)
        return
    if not stdout_is_terminal():
        bars = _Bars(None, plain=True)
        try:
            yield bars
        finally:
            bars.finish_all()
        return
    with Progress(*progress_columns(), TextColumn("{task.fields[stats]}"), transient=False) as progress:
        yield _Bars(progress)
