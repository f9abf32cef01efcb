"""progress: plain flushed lines when output is not a terminal (one per finished task, a heartbeat on long ones),
nothing when disabled, and the forecast that times a task's first steps."""

from __future__ import annotations

import pytest

from mslesion import progress
from mslesion.progress import Forecast, progress_bar


class Clock:
    """time.perf_counter, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def test_not_a_terminal_one_plain_line_per_finished_task(capsys, clock):
    with progress_bar(True) as bars:  # pytest's captured stdout is not a terminal
        outer = bars.task("subjects", total=2)
        for subject in range(2):
            inner = bars.task(f"sub-{subject}: 3 lesions", total=3)
            for _ in range(3):
                clock.now += 1.0
                inner.advance(1, loss=0.5)
            outer.advance()
        epoch = bars.task("epoch 1/2", total=10)
        epoch.advance(9)  # an epoch may end short of its total (a last batch of one is skipped)
        epoch.finish()
        epoch.finish()  # once
        bars.task("never advanced", total=4)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["sub-0: 3 lesions: 3/3 in 3.0 s  loss 0.5000", "sub-1: 3 lesions: 3/3 in 3.0 s  loss 0.5000",
                     "subjects: 2/2 in 6.0 s", "epoch 1/2: 9/10 in 0.0 s", "never advanced: 0/4 in 0.0 s"]


def test_a_long_task_writes_a_heartbeat_line(capsys, clock):
    with progress_bar(True) as bars:
        bar = bars.task("lesions", total=100)
        bar.advance(10)
        clock.now += progress.HEARTBEAT_S + 1
        bar.advance(10)
        bar.advance(10)  # no new line until the next heartbeat
    assert capsys.readouterr().out.splitlines() == ["lesions: 20/100 in 61.0 s", "lesions: 30/100 in 61.0 s"]


def test_disabled_writes_nothing(capsys):
    with progress_bar(False) as bars:
        bar = bars.task("x", total=1)
        bar.advance()
        bar.finish()
    assert capsys.readouterr().out == ""


def test_forecast_times_the_steps_after_the_warm_up_and_extrapolates_once(capsys, clock):
    estimates = []
    with progress_bar(False) as bars:
        bar = Forecast(bars.task("epoch", total=1000), remaining=10_000,
                       estimate=lambda seconds, rate: estimates.append((seconds, rate)), warmup=1, steps=4)
        clock.now += 30.0
        bar.advance(10)  # warm-up: slow, not timed
        for _ in range(8):
            clock.now += 2.0  # 10 samples per 2 s = 5 samples/s
            bar.advance(10)
    assert len(estimates) == 1
    seconds, rate = estimates[0]
    assert rate == pytest.approx(5.0)
    assert seconds == pytest.approx((10_000 - 50) / 5.0)  # after the warm-up and 4 timed steps, 50 samples are done
