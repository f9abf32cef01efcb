"""Faults without root: a full disk (RLIMIT_FSIZE in a subprocess: Python ignores SIGXFSZ, so writes fail with
EFBIG), a second writer of the same run folder, and SIGINT / SIGKILL delivered at deterministic points of
`train`, `extract` and `ablate` (a wrapper process signals itself from inside the Nth call of a stage function)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import toy_patches
from test_extract import write_subject

from mslesion.data.patches import write_patches

TRAIN = ("--channels", "qsm", "--augment", "random", "--epochs", "3", "--batch-size", "16", "--lr-milestones", "3",
         "--precision", "fp32", "--threads", "1", "--quiet")


def run_wrapped(prelude: str, args: list, timeout: int = 300) -> subprocess.CompletedProcess:
    """`mslesion ARGS` in a fresh process that first runs `prelude` (limits, signal points)."""
    code = textwrap.dedent(prelude) + "\nfrom mslesion.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.run([sys.executable, "-c", "import sys\n" + code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr and "\x1b[" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "toy.h5"
    write_patches(path, toy_patches(n_per_code={2: 20, 3: 12, 5: 12, 6: 6}, size=23))
    return path


FULL_DISK = "import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0}))\n"


@pytest.mark.parametrize("limit", [3_000, 300_000])  # fails on the first small file, or on the first checkpoint
def test_full_disk_during_train_is_one_line_exit_1(tmp_path: Path, data: Path, limit: int):
    result = run_wrapped(FULL_DISK.format(limit), ["train", data, "--out", tmp_path / "run", *TRAIN])
    assert result.returncode == 1, result.stderr  # not 139: no segfault at exit
    line = one_line(result)
    assert str(tmp_path / "run") in line and "File too large" in line
    assert not (tmp_path / "run" / "model.pt").exists()


def test_full_disk_during_synth_and_extract_never_crashes_in_hdf5(tmp_path: Path):
    synth = run_wrapped(FULL_DISK.format(100_000), ["synth", "--out", tmp_path / "c.h5", "--patients", "3",
                                                   "--lesions-scale", "0.1", "--labelled-only", "--quiet"])
    assert synth.returncode == 1 and str(tmp_path / "c.h5") in one_line(synth)
    subject = write_subject(tmp_path / "s", shape=(48, 48, 48))
    extract = run_wrapped(FULL_DISK.format(20_000), ["extract", "--mask", subject.mask, "--flair", subject.flair,
                                                     "--patch-size", "23", "--out", tmp_path / "p.h5", "--quiet"])
    assert extract.returncode == 1 and "p" in one_line(extract) and "File too large" in one_line(extract)
    assert not list(tmp_path.glob("c.h5*")) and not (tmp_path / "p.h5").exists()  # no temporary left behind


def test_full_disk_while_overwriting_keeps_the_old_result(tmp_path: Path, data: Path):
    first = run_wrapped("", ["synth", "--out", tmp_path / "c.h5", "--patients", "2", "--lesions-scale", "0.05",
                             "--labelled-only", "--quiet"])
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "c.h5").read_bytes()
    again = run_wrapped(FULL_DISK.format(50_000), ["synth", "--out", tmp_path / "c.h5", "--patients", "3",
                                                   "--lesions-scale", "0.2", "--labelled-only", "--overwrite",
                                                   "--quiet"])
    assert again.returncode == 1 and "c.h5" in one_line(again)
    assert (tmp_path / "c.h5").read_bytes() == before


HOLD_LOCK = """
import sys, time
from mslesion.atomic import locked_folder
from mslesion.runs import RUN_LOCK
with locked_folder(sys.argv[1], RUN_LOCK):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_writer_of_a_run_folder_fails_at_once_naming_the_holder(tmp_path: Path, data: Path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # deterministic: the lock is held from here on
        second = run_wrapped("", ["train", data, "--out", run, *TRAIN], timeout=60)
        assert second.returncode == 2
        line = one_line(second)
        assert str(run) in line and f"pid {holder.pid}" in line
        assert not (run / "model.pt").exists() and not (run / "config.json").exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0


# A signal from inside the Nth call of a stage function: the same point on every machine, unlike a sleep.
SIGNAL_AT = """
import os, signal
import mslesion.{module} as stage
# Ctrl-C as at a terminal: a job started in the background by a shell (nohup ... &) inherits SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
original, calls = stage.{function}, [0]
def signalling(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {call}:
        os.kill(os.getpid(), signal.{signal})
    return original(*args, **kwargs)
stage.{function} = signalling
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_train_interrupted_in_its_third_epoch_resumes_to_the_same_weights(tmp_path: Path, data: Path, sig: str):
    whole = run_wrapped("", ["train", data, "--out", tmp_path / "whole", *TRAIN])
    assert whole.returncode == 0, whole.stderr
    hook = SIGNAL_AT.format(module="train", function="train_epoch", call=3, signal=sig)
    cut = run_wrapped(hook, ["train", data, "--out", tmp_path / "cut", *TRAIN])
    if sig == "SIGINT":
        assert cut.returncode == 130
        assert "--resume" in one_line(cut)
    else:
        assert cut.returncode == -signal.SIGKILL
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and not (tmp_path / "cut" / "model.pt").exists()
    again = run_wrapped("", ["train", data, "--out", tmp_path / "cut", *TRAIN])
    assert again.returncode == 2 and "--resume" in one_line(again)  # an interrupted run is not silently restarted
    resumed = run_wrapped("", ["train", data, "--out", tmp_path / "cut", *TRAIN, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_extract_interrupted_at_its_second_subject_writes_nothing(tmp_path: Path):
    subjects = [write_subject(tmp_path / f"sub-{i}", f"sub-{i}", seed=i) for i in range(3)]
    manifest = tmp_path / "subjects.csv"
    manifest.write_text("subject,mask,flair\n" + "".join(f"{s.id},{s.mask},{s.flair}\n" for s in subjects))
    hook = SIGNAL_AT.format(module="data.extract", function="extract_subject", call=2, signal="SIGINT")
    result = run_wrapped(hook, ["extract", manifest, "--patch-size", "23", "--out", tmp_path / "p.h5", "--quiet"])
    assert result.returncode == 130 and one_line(result).startswith("interrupted")
    assert not list(tmp_path.glob("p*")) and not list(tmp_path.glob(".p*"))


@pytest.mark.slow
def test_ablate_interrupted_in_its_second_run_says_how_to_resume_and_then_finishes(tmp_path: Path, data: Path):
    args = ["ablate", data, "--out", tmp_path / "ab", "--channel-sets", "qsm;flair", "--cv", "2", "--epochs", "2",
            "--lr-milestones", "1", "--select", "val_loss", "--batch-size", "16", "--augment", "none",
            "--bootstrap", "20", "--threads", "1", "--quiet"]
    hook = SIGNAL_AT.format(module="train", function="train_epoch", call=3, signal="SIGINT")  # 2 epochs a run
    cut = run_wrapped(hook, args)
    assert cut.returncode == 130 and "rerun" in one_line(cut)
    finished = snapshot(tmp_path / "ab" / "runs" / "qsm" / "seed0" / "fold0")
    assert "model.pt" in finished
    rerun = run_wrapped("", args)
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(tmp_path / "ab" / "runs" / "qsm" / "seed0" / "fold0") == finished  # skipped, not retrained
    assert (tmp_path / "ab" / "results.md").exists()
    run_config = json.loads((tmp_path / "ab" / "runs" / "flair" / "seed0" / "fold1" / "config.json").read_text())
    assert run_config["lr_milestones"] == [1] and run_config["select"] == "val_loss"  # ablate's options reach runs


@pytest.mark.slow
def test_ablation_leaves_a_run_locked_by_another_process_and_the_last_process_writes_results(
        tmp_path: Path, data: Path):
    out = tmp_path / "ab"
    args = ["ablate", data, "--out", out, "--channel-sets", "qsm", "--cv", "2", "--epochs", "1", "--batch-size",
            "16", "--augment", "none", "--bootstrap", "20", "--threads", "1", "--quiet"]
    busy = out / "runs" / "qsm" / "seed0" / "fold1"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(busy)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        first = run_wrapped("", args)
        assert first.returncode == 0, first.stderr
        assert "other processes" in first.stdout and not (out / "results.md").exists()
        assert (out / "runs" / "qsm" / "seed0" / "fold0" / "model.pt").exists()  # its own share is done
        assert not (busy / "model.pt").exists()
    finally:
        holder.communicate("\n", timeout=30)
    second = run_wrapped("", args)  # the lock is free: this process trains the last run and writes the results
    assert second.returncode == 0, second.stderr
    assert (busy / "model.pt").exists() and (out / "results.md").exists()
