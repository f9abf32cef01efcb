"""The bad-input matrix (issue #12): every bad input or fault ends in ONE line on stderr naming the file or option
and the problem, with exit code 2 (the user can fix it) or 1 (the machine failed), no traceback, no terminal
escape codes, and nothing already written changed.

Every case runs in-process through `mslesion.cli.main` (fast: torch and h5py are imported once). Inputs are built
once per module (`env`); each case gets its own empty folder (`{tmp}`, also the working directory) for outputs and
per-case copies. Before the call, the bytes of every file under `{tmp}` and under every existing path named on
the command line are recorded; afterwards they must be identical and nothing new may have appeared (hidden
bookkeeping such as `.mslesion.lock` is ignored).

A case is `case(id, args, code, *fragments, setup=..., fault=...)`; the id's prefix is its category: hdf5, nifti,
manifest (manifests and BIDS folders), run (checkpoints and run folders), arg, out (output paths) or fault.
Placeholders in `args` are the keys of `env` and `tmp`.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import toy_patches
from test_extract import LPI_AFFINE, write_subject

from mslesion.cli import main
from mslesion.data.patches import write_patches
from mslesion.runs import write_json

PATCH = 23  # the smallest cube the paper's three conv/pool blocks accept is 22³; 23 keeps everything fast

# --- the module's inputs ----------------------------------------------------------------------------------------


def raw_h5(path: Path, images=None, label=None, channels=("flair", "qsm", "mask"), split=None, drop=(),
           patients=None, lesions=None, **create) -> Path:
    """A patch file written with h5py directly, so that it can break the contract write_patches enforces."""
    n = len(label) if label is not None else (len(images) if images is not None else 0)
    with h5py.File(path, "w") as f:
        if "images" not in drop:
            ds = f.create_dataset("images", data=images, **create) if images is not None else \
                f.create_dataset("images", **create)
            ds.attrs["channels"] = list(channels)
        if "label" not in drop:
            f.create_dataset("label", data=np.asarray(label if label is not None else np.full(n, 2)))
        f.create_dataset("patient", data=np.asarray(patients if patients is not None else
                                                    [f"sub-{i % 4}" for i in range(min(n, 1000))], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("lesion", data=np.asarray(lesions if lesions is not None else np.arange(min(n, 1000))))
        if split is not None:
            f.create_dataset("split", data=np.asarray(split, dtype=object), dtype=h5py.string_dtype())
    return path


def small_images(n: int = 8, shape=(PATCH, PATCH, PATCH), channels: int = 3, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, channels, *shape)).astype(dtype)


def make_h5_inputs(d: Path, env: dict[str, str]) -> None:
    ok = toy_patches({2: 12, 3: 8, 5: 8, 6: 6}, size=PATCH, seed=0)  # small: the module trains on it once
    write_patches(d / "toy.h5", ok)
    env["h5"] = str(d / "toy.h5")
    labels8 = np.repeat([2, 3, 5, 6], 2)
    env["h5_noncubic"] = str(raw_h5(d / "noncubic.h5", small_images(8, (35, 35, 30)), labels8))
    small = toy_patches(size=8, seed=1)  # cubic and consistent, only too small for the network
    write_patches(d / "small8.h5", small)
    env["h5_small8"] = str(d / "small8.h5")
    # 1,000,000 × 3 × 35³ float32 (~479 GiB) declared, never written: a few kB on disk
    env["h5_huge"] = str(raw_h5(d / "huge.h5", None, np.full(1_000_000, 2, np.int8),
                                shape=(1_000_000, 3, 35, 35, 35), dtype="f4", chunks=(1, 3, 35, 35, 35)))
    env["h5_unwritten"] = str(raw_h5(d / "unwritten.h5", None, labels8, shape=(8, 3, PATCH, PATCH, PATCH),
                                     dtype="f4", chunks=(1, 3, PATCH, PATCH, PATCH)))
    env["h5_fraction"] = str(raw_h5(d / "fraction.h5", ok.images, ok.labels.astype(float) + 0.5 * (ok.labels == 2),
                                    patients=ok.patients, lesions=ok.lesions))
    env["h5_negative"] = str(raw_h5(d / "negative.h5", small_images(), np.array([2, 3, 5, 6, 2, 3, 5, -1])))
    env["h5_nolabel"] = str(raw_h5(d / "nolabel.h5", small_images(), labels8, drop=("label",)))
    env["h5_ndim4"] = str(raw_h5(d / "ndim4.h5", small_images()[:, 0], labels8))
    env["h5_attr"] = str(raw_h5(d / "attr.h5", small_images(), labels8, channels=("flair", "qsm")))
    env["h5_float64"] = str(raw_h5(d / "float64.h5", small_images(dtype=np.float64), labels8))
    nan = small_images()
    nan[3, 1, 4, 4, 4] = np.inf
    env["h5_inf"] = str(raw_h5(d / "inf.h5", nan, labels8))
    env["h5_split"] = str(raw_h5(d / "split.h5", small_images(), labels8, split=["train"] * 6 + ["holdout"] * 2))
    env["h5_count"] = str(raw_h5(d / "count.h5", small_images(), labels8[:6]))
    (d / "text.h5").write_text("this is not HDF5\n")
    env["h5_text"] = str(d / "text.h5")
    (d / "empty.h5").write_bytes(b"")
    env["h5_empty"] = str(d / "empty.h5")
    blob = (d / "toy.h5").read_bytes()
    (d / "truncated.h5").write_bytes(blob[: len(blob) // 2])
    env["h5_truncated"] = str(d / "truncated.h5")
    damaged = bytearray(blob)
    damaged[damaged.index(b"SNOD")] ^= 1  # a damaged symbol-table node: the file opens, its groups do not
    (d / "damaged.h5").write_bytes(bytes(damaged))
    env["h5_damaged"] = str(d / "damaged.h5")
    write_patches(d / "voxel_text.h5", ok)
    with h5py.File(d / "voxel_text.h5", "a") as f:
        f.attrs["voxel_size_mm"] = "1 mm"
    env["h5_voxel_text"] = str(d / "voxel_text.h5")
    (d / "folder.h5").mkdir()
    env["h5_folder"] = str(d / "folder.h5")
    write_patches(d / "oneclass.h5", toy_patches(n_per_code={2: 6, 6: 3}, size=PATCH))
    env["h5_oneclass"] = str(d / "oneclass.h5")
    # MedMNIST-style npz files: 8³ (too small for the network) and valid 23³
    rng = np.random.default_rng(0)
    for name, size in (("npz8", 8), ("npz", PATCH)):
        arrays = {f"{s}_{k}": (rng.integers(0, 255, (6, size, size, size), dtype=np.uint8) if k == "images"
                               else np.array([[0], [1]] * 3)) for s in ("train", "val", "test") for k in
                  ("images", "labels")}
        np.savez(d / f"{name}.npz", **arrays)
        env[name] = str(d / f"{name}.npz")


def save_nifti(path: Path, data: np.ndarray, affine=LPI_AFFINE) -> str:
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def make_nifti_inputs(d: Path, env: dict[str, str]) -> None:
    s = write_subject(d / "sub", "sub-001", shape=(32, 32, 32))
    env.update(mask=str(s.mask), flair=str(s.flair), qsm=str(s.qsm), phenotype=str(s.phenotype))
    mask = np.asarray(nib.load(s.mask).dataobj)
    n = d / "bad"
    n.mkdir()
    blob = s.mask.read_bytes()
    corrupt = bytearray(blob)
    for i in range(len(blob) // 2, len(blob) // 2 + 8):  # inside the deflate stream: only the CRC can tell
        corrupt[i] ^= 0xFF
    (n / "corrupt_mask.nii.gz").write_bytes(bytes(corrupt))
    env["nii_corrupt"] = str(n / "corrupt_mask.nii.gz")
    (n / "truncated_mask.nii.gz").write_bytes(blob[: len(blob) * 2 // 3])
    env["nii_truncated"] = str(n / "truncated_mask.nii.gz")
    (n / "text_mask.nii").write_text("not a NIfTI image\n")
    env["nii_text"] = str(n / "text_mask.nii")
    env["nii_4d"] = save_nifti(n / "flair_4d.nii.gz", np.zeros((32, 32, 32, 2), np.float32))
    env["nii_2d"] = save_nifti(n / "mask_2d.nii.gz", mask[:, :, 10].copy())
    env["nii_singular"] = save_nifti(n / "singular_mask.nii.gz", mask, np.diag([1e-4, 1e-4, 1e-4, 1.0]))
    nan = mask.astype(np.float32)
    nan[0, 0, 0] = np.nan
    env["nii_nan"] = save_nifti(n / "nan_mask.nii.gz", nan)
    three = mask.astype(np.uint8)
    three[20:24, 20:24, 20:24] = 2
    env["nii_three"] = save_nifti(n / "three_values_mask.nii.gz", three)
    env["nii_halves"] = save_nifti(n / "halves_mask.nii.gz", mask.astype(np.float32) * 0.5)
    env["nii_othergrid"] = save_nifti(n / "othergrid_flair.nii.gz", np.zeros((30, 32, 32), np.float32))
    pheno = np.asarray(nib.load(s.phenotype).dataobj).astype(np.int16)
    pheno[pheno == 3] = -3
    env["nii_negpheno"] = save_nifti(n / "negative_phenotype.nii.gz", pheno)
    tiny = write_subject(d / "tiny", "sub-tiny", shape=(16, 16, 16), lesions=(((8, 8, 8), 2, 3),))
    env["nii_tiny_mask"], env["nii_tiny_flair"] = str(tiny.mask), str(tiny.flair)
    (n / "labels.csv").write_text("id,code\n1,3\n")
    env["csv_labels"] = str(n / "labels.csv")
    env["mask255"] = save_nifti(n / "mask255.nii.gz", (mask > 0).astype(np.uint8) * 255)


def write_manifest(path: Path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + ("\n" if rows or header else ""))
    return str(path)


def make_manifest_inputs(d: Path, env: dict[str, str]) -> None:
    m = d / "manifests"
    m.mkdir()
    full = f"{env['flair']},{env['qsm']},{env['mask']}"
    header = "subject,flair,qsm,mask"
    env["man_ok"] = write_manifest(m / "ok.csv", header, [f"sub-001,{full}"])
    (m / "empty.csv").write_bytes(b"")
    env["man_empty"] = str(m / "empty.csv")
    env["man_header"] = write_manifest(m / "header_only.csv", header, [])
    env["man_unknown_col"] = write_manifest(m / "unknown_column.csv", header + ",t1", [f"sub-001,{full},x.nii"])
    env["man_no_mask_col"] = write_manifest(m / "no_mask_column.csv", "subject,flair,qsm",
                                            [f"sub-001,{env['flair']},{env['qsm']}"])
    env["man_duplicate"] = write_manifest(m / "duplicate.csv", header, [f"sub-001,{full}", f"sub-001,{full}"])
    env["man_blank_subject"] = write_manifest(m / "blank_subject.csv", header, [f",{full}"])
    (m / "binary.csv").write_bytes(b"subject,mask\n\xff\xfe\x00\x81garbage\n")
    env["man_binary"] = str(m / "binary.csv")
    env["man_missing_file"] = write_manifest(m / "missing_file.csv", header,
                                             [f"sub-001,{env['flair']},{env['qsm']},gone_mask.nii.gz"])
    env["man_no_flair"] = write_manifest(m / "no_flair.csv", "subject,qsm,mask",
                                         [f"sub-001,{env['qsm']},{env['mask']}"])
    env["man_corrupt"] = write_manifest(m / "corrupt.csv", header,
                                        [f"sub-001,{env['flair']},{env['qsm']},{env['nii_corrupt']}"])
    env["man_extra_cells"] = write_manifest(m / "extra_cells.csv", header, [f"sub-001,{full},extra"])
    (m / "subjects.txt").write_text(f"sub-001 {env['mask']}\n")
    env["man_txt"] = str(m / "subjects.txt")
    b = d / "bids"
    (b / "empty").mkdir(parents=True)
    env["bids_empty"] = str(b / "empty")
    anat = b / "nomask" / "sub-002" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(env["flair"], anat / "sub-002_FLAIR.nii.gz")
    env["bids_nomask"] = str(b / "nomask")
    for where in ("sub-003/anat", "derivatives/lesions/sub-003/anat"):
        (b / "twomasks" / where).mkdir(parents=True)
        shutil.copy(env["mask"], b / "twomasks" / where / "sub-003_label-lesion_mask.nii.gz")
    env["bids_twomasks"] = str(b / "twomasks")
    anat = b / "corrupt" / "sub-004" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(env["qsm"], anat / "sub-004_Chimap.nii.gz")
    shutil.copy(env["nii_corrupt"], anat / "sub-004_label-lesion_mask.nii.gz")
    env["bids_corrupt"] = str(b / "corrupt")


def run_quietly(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code in (0, None), f"fixture command failed: {args}"


def copy_run(src: Path, dst: Path, checkpoint: bool = False) -> Path:
    ignore = shutil.ignore_patterns(".*", *(() if checkpoint else ("checkpoint.pt",)))
    shutil.copytree(src, dst, ignore=ignore)
    return dst


class Pwned:
    """A pickle that would create a folder when unpickled without weights_only (it must never run)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def make_run_inputs(d: Path, env: dict[str, str]) -> None:
    run = d / "run"
    run_quietly(["train", env["h5"], "--out", run, "--channels", "qsm", "--epochs", "1", "--batch-size", "16",
                 "--augment", "none", "--quiet"])
    env["run"] = str(run)
    run_quietly(["predict", run, "--mask", env["mask"], "--qsm", env["qsm"], "--out", d / "preds", "--quiet"])
    env["preds"] = str(d / "preds")
    model = torch.load(run / "model.pt", weights_only=True)
    r = d / "runs"
    r.mkdir()
    env["run_nomodel"] = str(copy_run(run, r / "nomodel"))
    (r / "nomodel" / "model.pt").unlink()
    env["run_garbage"] = str(copy_run(run, r / "garbage"))
    (r / "garbage" / "model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    env["run_flipped"] = str(copy_run(run, r / "flipped"))
    (r / "flipped" / "model.pt").write_bytes(bytes([(run / "model.pt").read_bytes()[0] ^ 1]) +
                                             (run / "model.pt").read_bytes()[1:])  # 'PK' -> 'QK': not a zip
    env["run_truncated"] = str(copy_run(run, r / "truncated"))
    blob = (run / "model.pt").read_bytes()
    (r / "truncated" / "model.pt").write_bytes(blob[: len(blob) // 2])
    env["run_foreign"] = str(copy_run(run, r / "foreign"))
    torch.save({"weights": torch.zeros(3)}, r / "foreign" / "model.pt")
    env["run_future"] = str(copy_run(run, r / "future"))
    torch.save({**model, "format_version": 99}, r / "future" / "model.pt")
    env["run_mixed"] = str(copy_run(run, r / "mixed"))
    config = json.loads((run / "config.json").read_text())
    write_json(r / "mixed" / "config.json", {**config, "channels": ["flair"]})
    env["run_badjson"] = str(copy_run(run, r / "badjson"))
    (r / "badjson" / "config.json").write_text("{not json")
    env["run_listjson"] = str(copy_run(run, r / "listjson"))
    (r / "listjson" / "config.json").write_text("[1, 2]\n")
    env["run_missingkeys"] = str(copy_run(run, r / "missingkeys"))
    state = dict(model["state_dict"])
    state.pop(next(iter(state)))
    torch.save({**model, "state_dict": state}, r / "missingkeys" / "model.pt")
    env["run_noranges"] = str(copy_run(run, r / "noranges"))  # a model.pt as written before 0.4.7
    torch.save({k: v for k, v in model.items() if k != "activation_ranges"}, r / "noranges" / "model.pt")
    env["run_pickle"] = str(copy_run(run, r / "pickle"))
    env["pwned"] = str(d / "pwned")
    torch.save({"format": "mslesion", "payload": Pwned(env["pwned"])}, r / "pickle" / "model.pt")
    env["run_badpreds"] = str(copy_run(run, r / "badpreds"))
    (r / "badpreds" / "predictions.csv").write_text("lesion,p_a\n1,0.5\n")
    env["run_nanpreds"] = str(copy_run(run, r / "nanpreds"))
    rows = (run / "predictions.csv").read_text().splitlines()
    header = rows[0].split(",")
    cells = rows[1].split(",")
    cells[header.index("p_remyelinating")] = "n/a"  # a hand-edited table
    (r / "nanpreds" / "predictions.csv").write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    env["run_badsplit"] = str(copy_run(run, r / "badsplit"))
    split = json.loads((run / "split.json").read_text())
    split["test"][0]["index"] = 99_999
    write_json(r / "badsplit" / "split.json", split)
    env["run_badckpt"] = str(copy_run(run, r / "badckpt", checkpoint=True))
    (r / "badckpt" / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated zip")
    env["run_csv"] = str(r / "garbage" / "predictions.csv")  # a file where a run folder is expected
    # an ablation folder whose run was made with other settings (it must not be silently reused)
    abl = d / "ablation" / "runs" / "qsm" / "seed0" / "fold0"
    abl.mkdir(parents=True)
    shutil.copy(run / "config.json", abl / "config.json")
    env["abl_other"] = str(d / "ablation")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad_input")
    env: dict[str, str] = {}
    make_h5_inputs(d, env)
    make_nifti_inputs(d, env)
    make_manifest_inputs(d, env)
    make_run_inputs(d, env)
    return env


# --- per-case setups (outputs that exist before the call) and faults ------------------------------------------


def existing_file(name: str, content: bytes = b"an earlier result\n") -> Callable:
    def setup(tmp: Path, env: dict) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    return setup


def existing_dir(name: str) -> Callable:
    def setup(tmp: Path, env: dict) -> None:
        (tmp / name).mkdir(parents=True)
        (tmp / name / "keep.txt").write_text("kept\n")
    return setup


def copy_of(key: str, name: str, checkpoint: bool = False) -> Callable:
    def setup(tmp: Path, env: dict) -> None:
        src = Path(env[key])
        if src.is_dir():
            copy_run(src, tmp / name, checkpoint=checkpoint)
        else:
            shutil.copy(src, tmp / name)
    return setup


def removed(name: str) -> Callable:
    def setup(tmp: Path, env: dict) -> None:
        (tmp / name).unlink()
    return setup


def both(*setups: Callable) -> Callable:
    def setup(tmp: Path, env: dict) -> None:
        for s in setups:
            s(tmp, env)
    return setup


def os_error(number: int, filename: object) -> OSError:
    return OSError(number, os.strerror(number), str(filename))


def fail_mkstemp(number: int) -> Callable:
    """Atomic writes (mslesion.atomic.atomic_path) start with tempfile.mkstemp beside the output."""
    def install(monkeypatch, tmp: Path) -> None:
        real = tempfile.mkstemp

        def fake(*args, **kwargs):
            if str(tmp) in str(kwargs.get("dir", "")):
                raise OSError(number, os.strerror(number))
            return real(*args, **kwargs)
        monkeypatch.setattr(tempfile, "mkstemp", fake)
    return install


def fail_mkdtemp(number: int) -> Callable:
    """Staged folders (predict, synth --volumes) start with tempfile.mkdtemp beside the output."""
    def install(monkeypatch, tmp: Path) -> None:
        real = tempfile.mkdtemp

        def fake(*args, **kwargs):
            if str(tmp) in str(kwargs.get("dir", "")):
                raise os_error(number, kwargs.get("dir"))
            return real(*args, **kwargs)
        monkeypatch.setattr(tempfile, "mkdtemp", fake)
    return install


def fail_replace(number: int) -> Callable:
    """The last step of every atomic write or folder swap: os.replace onto the output."""
    def install(monkeypatch, tmp: Path) -> None:
        real = os.replace

        def fake(src, dst, *args, **kwargs):
            if str(tmp) in str(dst):
                raise os_error(number, dst)
            return real(src, dst, *args, **kwargs)
        monkeypatch.setattr(os, "replace", fake)
    return install


def fail_mkdir(number: int) -> Callable:
    """A read-only or immutable parent: creating the output folder fails."""
    def install(monkeypatch, tmp: Path) -> None:
        real = Path.mkdir

        def fake(self, *args, **kwargs):
            if str(tmp) in str(self) and self != tmp:
                raise os_error(number, self)
            return real(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", fake)
    return install


HELD_LOCKS: list = []  # locks a case holds "in another process" during its call; released right after it


def held_lock(name: str) -> Callable:
    """Another mslesion process writes `name`: its lock file is held (a second FileLock conflicts, in-process too)."""
    def install(monkeypatch, tmp: Path) -> None:
        from filelock import FileLock

        from mslesion.runs import RUN_LOCK

        (tmp / name).mkdir(parents=True, exist_ok=True)
        lock = FileLock(tmp / name / RUN_LOCK, timeout=0)
        lock.acquire()
        (tmp / name / f"{RUN_LOCK}.holder").write_text("pid 4242, since the test began\n")
        HELD_LOCKS.append(lock)
    return install


def raise_from(target: str, exc: BaseException) -> Callable:
    def install(monkeypatch, tmp: Path) -> None:
        def fake(*args, **kwargs):
            raise exc
        monkeypatch.setattr(target, fake)
    return install


class WorkStarted(Exception):
    """Raised where a long computation would begin: a refused command must fail before it."""


def guard_long_work(monkeypatch) -> None:
    # demo would generate a 115-patient cohort, ablate would train a grid: cases of bad input must not get there
    monkeypatch.setattr("mslesion.demo.ensure_cohort", _work_started("demo generated its cohort"))
    monkeypatch.setattr("mslesion.ablate.train_and_evaluate_run", _work_started("ablate started training"))


def _work_started(what: str) -> Callable:
    def fake(*args, **kwargs):
        raise WorkStarted(what)
    return fake


# --- the matrix -----------------------------------------------------------------------------------------------


def case(id: str, args: list[str], code: int, *fragments: str, setup: Callable | None = None,
         fault: Callable | None = None, new_ok: bool = False, xfail: str = ""):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    if any("cuda" in a for a in args):  # "no CUDA GPU" is only an error where there is none
        marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"))
    return pytest.param(args, code, fragments, setup, fault, new_ok, id=id, marks=marks)


TRAIN = ["train", "{h5}", "--out", "{tmp}/run", "--channels", "qsm", "--epochs", "1", "--batch-size", "16",
         "--augment", "none", "--quiet"]
EXTRACT = ["extract", "--mask", "{mask}", "--flair", "{flair}", "--qsm", "{qsm}", "--patch-size", str(PATCH),
           "--out", "{tmp}/p.h5", "--quiet"]
PREDICT = ["predict", "{run}", "--mask", "{mask}", "--qsm", "{qsm}", "--out", "{tmp}/pred", "--quiet"]
ABLATE = ["ablate", "{h5}", "--out", "{tmp}/abl", "--channel-sets", "qsm", "--cv", "2", "--epochs", "1",
          "--quiet"]
SYNTH = ["synth", "--out", "{tmp}/syn.h5", "--patients", "1", "--lesions-scale", "0.05", "--labelled-only", "--quiet"]
IMPORT = ["import-medmnist", "{npz}", "--out", "{tmp}/m.h5"]
REPORT = ["report", "{run}", "--out", "{tmp}/r.html"]


def train(data: str, *extra: str) -> list[str]:
    return ["train", data, "--out", "{tmp}/run", "--channels", "qsm", "--epochs", "1", "--quiet", *extra]


def extract_mask(mask: str, *extra: str) -> list[str]:
    return ["extract", "--mask", mask, "--patch-size", str(PATCH), "--out", "{tmp}/p.h5", "--quiet", *extra]


HDF5_CASES = [
    case("hdf5-train-noncubic", train("{h5_noncubic}"), 2, "noncubic.h5", "cubic", "35×35×30"),
    case("hdf5-ablate-noncubic", ["ablate", "{h5_noncubic}", "--out", "{tmp}/abl", "--channel-sets", "qsm",
                                  "--quiet"], 2, "noncubic.h5", "cubic"),
    case("hdf5-train-8cubed", train("{h5_small8}"), 2, "small8.h5", "22³"),
    case("hdf5-ablate-8cubed", ["ablate", "{h5_small8}", "--out", "{tmp}/abl", "--channel-sets", "qsm", "--quiet"],
         2, "small8.h5", "22³"),
    case("hdf5-evaluate-other-patch-size", ["evaluate", "{run}", "{h5_small8}"], 2, "small8.h5", "patches"),
    case("hdf5-predict-patchfile-8cubed", ["predict", "{run}", "{h5_small8}", "--out", "{tmp}/pred", "--quiet"],
         2, "small8.h5", "patches"),
    case("hdf5-train-sparse-1e6-declared", train("{h5_huge}"), 2, "huge.h5", "'images'"),
    case("hdf5-train-chunks-never-written", train("{h5_unwritten}"), 2, "unwritten.h5", "chunks were ever written"),
    case("hdf5-train-fractional-labels", train("{h5_fraction}"), 2, "fraction.h5", "integer", "2.5"),
    case("hdf5-train-negative-labels", train("{h5_negative}"), 2, "negative.h5", "≥ 0"),
    case("hdf5-train-missing-label", train("{h5_nolabel}"), 2, "nolabel.h5", "missing dataset 'label'"),
    case("hdf5-train-images-4d", train("{h5_ndim4}"), 2, "ndim4.h5", "[N, C, D, H, W]"),
    case("hdf5-train-channels-attr-mismatch", train("{h5_attr}"), 2, "attr.h5", "channels"),
    case("hdf5-train-float64-images", train("{h5_float64}"), 2, "float64.h5", "float32"),
    case("hdf5-train-infinite-values", train("{h5_inf}"), 2, "inf.h5", "infinite"),
    case("hdf5-train-unknown-split-value", train("{h5_split}", "--split", "predefined"), 2, "split.h5", "holdout"),
    case("hdf5-train-label-count-mismatch", train("{h5_count}"), 2, "count.h5", "'label' has 6"),
    case("hdf5-train-text-file", train("{h5_text}"), 2, "text.h5", "not a readable HDF5"),
    case("hdf5-ablate-empty-file", ["ablate", "{h5_empty}", "--out", "{tmp}/abl", "--channel-sets", "qsm",
                                    "--quiet"], 2, "empty.h5", "HDF5"),
    case("hdf5-evaluate-truncated", ["evaluate", "{run}", "{h5_truncated}"], 2, "truncated.h5", "HDF5"),
    case("hdf5-train-damaged-metadata", train("{h5_damaged}"), 2, "damaged.h5", "HDF5"),
    case("hdf5-train-voxel-size-text", train("{h5_voxel_text}"), 2, "voxel_text.h5", "voxel_size_mm"),
    case("hdf5-train-folder", train("{h5_folder}"), 2, "folder.h5"),
    case("hdf5-train-missing-file", train("{tmp}/absent.h5"), 2, "absent.h5", "file not found"),
    case("hdf5-train-unknown-channel", train("{h5}", "--channels", "t2star"), 2, "toy.h5", "unknown channel t2star"),
    case("hdf5-train-empty-class", train("{h5_oneclass}"), 2, "oneclass.h5", "no samples"),
    case("hdf5-import-medmnist-8cubed", ["import-medmnist", "{npz8}", "--out", "{tmp}/m.h5"], 2, "npz8.npz", "22³"),
    case("hdf5-import-medmnist-not-npz", ["import-medmnist", "{h5_text}", "--out", "{tmp}/m.h5"], 2, "text.h5",
         "npz"),
]

NIFTI_CASES = [
    case("nifti-extract-gzip-corrupt-mid-stream", extract_mask("{nii_corrupt}"), 2, "corrupt_mask.nii.gz",
         "corrupt"),
    case("nifti-extract-gzip-truncated", extract_mask("{nii_truncated}"), 2, "truncated_mask.nii.gz", "truncated"),
    case("nifti-extract-text-as-nii", extract_mask("{nii_text}"), 2, "text_mask.nii", "NIfTI"),
    case("nifti-extract-4d-flair", [*extract_mask("{mask}"), "--flair", "{nii_4d}"], 2, "flair_4d.nii.gz", "3D"),
    case("nifti-extract-2d-mask", extract_mask("{nii_2d}"), 2, "mask_2d.nii.gz", "3D"),
    case("nifti-extract-singular-affine", extract_mask("{nii_singular}"), 2, "singular_mask.nii.gz", "affine"),
    case("nifti-extract-nan-mask", extract_mask("{nii_nan}"), 2, "nan_mask.nii.gz", "NaN"),
    case("nifti-extract-three-valued-mask", extract_mask("{nii_three}"), 2, "three_values_mask.nii.gz",
         "--instances"),
    case("nifti-extract-fractional-instances", extract_mask("{nii_halves}", "--instances"), 2,
         "halves_mask.nii.gz", "integers"),
    case("nifti-extract-grid-mismatch", [*extract_mask("{mask}"), "--flair", "{nii_othergrid}"], 2,
         "othergrid_flair.nii.gz", "--resample"),
    case("nifti-extract-missing-flair", [*extract_mask("{mask}"), "--flair", "{tmp}/absent_FLAIR.nii.gz"], 2,
         "absent_FLAIR.nii.gz", "not found"),
    case("nifti-extract-mask-is-folder", extract_mask("{tmp}/dir.nii.gz"), 2, "dir.nii.gz", "folder",
         setup=existing_dir("dir.nii.gz")),
    case("nifti-extract-negative-phenotype", [*extract_mask("{mask}"), "--phenotype", "{nii_negpheno}"], 2,
         "negative_phenotype.nii.gz", "non-negative"),
    case("nifti-extract-volume-smaller-than-patch", extract_mask("{nii_tiny_mask}"), 2, "sub-tiny", "larger"),
    case("nifti-extract-label-csv-columns", [*extract_mask("{mask}"), "--phenotype", "{csv_labels}"], 2,
         "labels.csv", "lesion,label"),
    case("nifti-predict-gzip-corrupt-qsm", ["predict", "{run}", "--mask", "{mask}", "--qsm", "{nii_corrupt}",
                                            "--out", "{tmp}/pred", "--quiet"], 2, "corrupt_mask.nii.gz", "corrupt"),
    case("nifti-predict-missing-channel", ["predict", "{run}", "--mask", "{mask}", "--flair", "{flair}", "--out",
                                           "{tmp}/pred", "--quiet"], 2, "qsm", "sub-001"),
    case("nifti-predict-truncated-mask", ["predict", "{run}", "--mask", "{nii_truncated}", "--qsm", "{qsm}",
                                          "--out", "{tmp}/pred", "--quiet"], 2, "truncated_mask.nii.gz"),
]

MANIFEST_CASES = [
    case("manifest-extract-not-found", ["extract", "{tmp}/absent.csv", "--patch-size", str(PATCH),
                                                       "--out", "{tmp}/p.h5", "--quiet"], 2, "absent.csv",
         "not found"),
    case("manifest-extract-empty-file", ["extract", "{man_empty}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "empty.csv", "no subjects"),
    case("manifest-extract-header-only", ["extract", "{man_header}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "header_only.csv", "no subjects"),
    case("manifest-extract-unknown-column", ["extract", "{man_unknown_col}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "unknown_column.csv", "columns"),
    case("manifest-extract-no-mask-column", ["extract", "{man_no_mask_col}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "no_mask_column.csv", "mask required"),
    case("manifest-extract-duplicate-subject", ["extract", "{man_duplicate}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "duplicate.csv", "listed twice"),
    case("manifest-extract-blank-subject", ["extract", "{man_blank_subject}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "blank_subject.csv", "line 2"),
    case("manifest-extract-binary-bytes", ["extract", "{man_binary}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "binary.csv", "CSV"),
    case("manifest-extract-missing-mask-file", ["extract", "{man_missing_file}", "--patch-size", str(PATCH),
                                                "--out", "{tmp}/p.h5", "--quiet"], 2, "gone_mask.nii.gz",
         "not found"),
    case("manifest-extract-channel-missing", ["extract", "{man_no_flair}", "--channels", "flair,qsm",
                                              "--patch-size", str(PATCH), "--out", "{tmp}/p.h5", "--quiet"], 2,
         "FLAIR"),
    case("manifest-extract-corrupt-subject", ["extract", "{man_corrupt}", "--patch-size", str(PATCH), "--out",
                                              "{tmp}/p.h5", "--quiet"], 2, "corrupt_mask.nii.gz", "corrupt"),
    case("manifest-extract-row-longer-than-header", ["extract", "{man_extra_cells}", "--out", "{tmp}/p.h5",
                                                     "--quiet"], 2, "extra_cells.csv", "line 2"),
    case("manifest-extract-txt-source", ["extract", "{man_txt}", "--out", "{tmp}/p.h5", "--quiet"], 2,
         "subjects.txt", "CSV manifest"),
    case("manifest-extract-source-and-mask", ["extract", "{man_ok}", "--mask", "{mask}", "--out", "{tmp}/p.h5",
                                              "--quiet"], 2, "ok.csv", "not both"),
    case("manifest-extract-no-input", ["extract", "--out", "{tmp}/p.h5", "--quiet"], 2, "no input"),
    case("manifest-bids-empty-folder", ["extract", "{bids_empty}", "--out", "{tmp}/p.h5", "--quiet"], 2, "empty",
         "no BIDS-style subjects"),
    case("manifest-bids-no-mask", ["extract", "{bids_nomask}", "--out", "{tmp}/p.h5", "--quiet"], 2, "sub-002",
         "no lesion mask"),
    case("manifest-bids-two-masks", ["extract", "{bids_twomasks}", "--out", "{tmp}/p.h5", "--quiet"], 2, "sub-003",
         "two mask files"),
    case("manifest-bids-corrupt-mask", ["extract", "{bids_corrupt}", "--patch-size", str(PATCH), "--out",
                                        "{tmp}/p.h5", "--quiet"], 2, "sub-004_label-lesion_mask.nii.gz", "corrupt"),
    case("manifest-predict-duplicate-subject", ["predict", "{run}", "{man_duplicate}", "--out", "{tmp}/pred",
                                                "--quiet"], 2, "duplicate.csv", "listed twice"),
    case("manifest-predict-bids-empty", ["predict", "{run}", "{bids_empty}", "--out", "{tmp}/pred", "--quiet"], 2,
         "no BIDS-style subjects"),
]

# random bytes read as a pickle are "refused", a broken zip is "corrupt": either names the problem
UNREADABLE = ("corrupt", "refused")

RUN_CASES = [
    case("run-evaluate-folder-not-found", ["evaluate", "{tmp}/norun"], 2, "norun", "not found"),
    case("run-evaluate-file-not-folder", ["evaluate", "{run_csv}"], 2, "predictions.csv", "run folder"),
    case("run-evaluate-no-model", ["evaluate", "{run_nomodel}"], 2, "model.pt", "not found"),
    case("run-evaluate-garbage-model", ["evaluate", "{run_garbage}"], 2, "model.pt", UNREADABLE),
    case("run-evaluate-truncated-model", ["evaluate", "{run_truncated}"], 2, "model.pt", UNREADABLE),
    case("run-evaluate-model-first-byte-flipped", ["evaluate", "{run_flipped}"], 2, "model.pt", UNREADABLE),
    case("run-evaluate-foreign-checkpoint", ["evaluate", "{run_foreign}"], 2, "model.pt", "not an mslesion"),
    case("run-evaluate-future-format", ["evaluate", "{run_future}"], 2, "model.pt", "format 99"),
    case("run-evaluate-config-channels-differ", ["evaluate", "{run_mixed}"], 2, "mixed", "channels"),
    case("run-predict-config-channels-differ", [*PREDICT[:1], "{run_mixed}", *PREDICT[2:]], 2, "mixed", "channels"),
    case("run-evaluate-config-invalid-json", ["evaluate", "{run_badjson}"], 2, "config.json", "invalid JSON"),
    case("run-evaluate-config-not-a-dict", ["evaluate", "{run_listjson}"], 2, "config.json", "run configuration"),
    case("run-evaluate-state-dict-missing-keys", ["evaluate", "{run_missingkeys}"], 2, "model.pt", "version"),
    case("run-evaluate-malicious-pickle", ["evaluate", "{run_pickle}"], 2, "model.pt", UNREADABLE),
    case("run-predict-prediction-folder-as-run", ["predict", "{preds}", "--mask", "{mask}", "--qsm", "{qsm}",
                                                  "--out", "{tmp}/pred", "--quiet"], 2, "preds"),
    case("run-report-prediction-folder-of-an-older-version", ["report", "{tmp}/old", "--out", "{tmp}/r.html"], 2,
         "old", "dataset_description.json",
         setup=both(copy_of("preds", "old"), removed("old/dataset_description.json"))),
    case("run-report-folder-not-found", ["report", "{tmp}/norun", "--out", "{tmp}/r.html"], 2, "norun",
         "not found"),
    case("run-report-not-a-run", ["report", "{bids_empty}", "--out", "{tmp}/r.html"], 2, "empty",
         "neither a run folder"),
    case("run-report-predictions-without-index", ["report", "{run_badpreds}", "--out", "{tmp}/r.html"], 2,
         "predictions.csv", "index"),
    case("run-report-predictions-not-numbers", ["report", "{run_nanpreds}", "--out", "{tmp}/r.html"], 2,
         "predictions.csv"),
    case("run-export-folder-not-found", ["export", "{tmp}/norun", "--out", "{tmp}/m.onnx"], 2, "norun", "not found"),
    case("run-export-garbage-model", ["export", "{run_garbage}", "--out", "{tmp}/m.onnx"], 2, "model.pt", UNREADABLE),
    case("run-evaluate-split-mismatch", ["evaluate", "{run_badsplit}"], 2, "split.json", "does not match"),
    case("run-train-resume-corrupt-checkpoint", [*TRAIN[:3], "{tmp}/run", *TRAIN[4:], "--resume"], 2,
         "checkpoint.pt", "corrupt", setup=copy_of("run_badckpt", "run", checkpoint=True)),
    case("run-train-resume-other-settings", [*TRAIN[:3], "{tmp}/run", *TRAIN[4:], "--resume", "--lr", "0.5"], 2,
         "checkpoint.pt", "lr", setup=copy_of("run", "run", checkpoint=True)),
    case("run-ablate-folder-other-settings", ["ablate", "{h5}", "--out", "{abl_other}", "--channel-sets", "qsm",
                                              "--cv", "2", "--epochs", "1", "--quiet"], 2, "config.json",
         "other settings"),
]


ARG_CASES = [
    case("arg-train-lr-nan", [*TRAIN, "--lr", "nan"], 2, "--lr", "finite"),
    case("arg-train-lr-inf", [*TRAIN, "--lr", "inf"], 2, "--lr"),
    case("arg-train-lr-negative", [*TRAIN, "--lr", "-0.1"], 2, "--lr", "positive"),
    case("arg-train-oversample-zero", [*TRAIN, "--oversample", "0,0"], 2, "--oversample"),
    case("arg-train-oversample-negative", [*TRAIN, "--oversample", "-1,1"], 2, "--oversample"),
    case("arg-train-oversample-too-many", [*TRAIN, "--oversample", "1,1,1"], 2, "--oversample", "--classes"),
    case("arg-train-oversample-not-int", [*TRAIN, "--oversample", "1,x"], 2, "--oversample", "integers"),
    case("arg-train-device-tpu", [*TRAIN, "--device", "tpu"], 2, "--device", "tpu"),
    case("arg-train-device-cuda-unavailable", [*TRAIN, "--device", "cuda"], 2, "--device", "CUDA"),
    case("arg-train-threads-negative", [*TRAIN, "--threads", "-1"], 2, "--threads"),
    case("arg-train-val-fraction-1.5", [*TRAIN, "--val-fraction", "1.5"], 2, "--val-fraction"),
    case("arg-train-train-fraction-zero", [*TRAIN, "--train-fraction", "0"], 2, "--train-fraction"),
    case("arg-train-epochs-zero", [*TRAIN, "--epochs", "0"], 2, "--epochs"),
    case("arg-train-epochs-not-int", [*TRAIN, "--epochs", "abc"], 2, "--epochs"),
    case("arg-train-batch-size-one", [*TRAIN, "--batch-size", "1"], 2, "--batch-size"),
    case("arg-train-augment-unknown", [*TRAIN, "--augment", "sideways"], 2, "--augment", "sideways"),
    case("arg-train-arch-unknown", [*TRAIN, "--arch", "resnet"], 2, "--arch", "resnet"),
    case("arg-train-split-unknown", [*TRAIN, "--split", "random"], 2, "--split", "random"),
    case("arg-train-precision-unknown", [*TRAIN, "--precision", "fp16"], 2, "--precision"),
    case("arg-train-precision-int8", [*TRAIN, "--precision", "int8"], 2, "--precision", "int8"),
    case("arg-train-input-norm-unknown", [*TRAIN, "--input-norm", "minmax"], 2, "--input-norm"),
    case("arg-train-cv-one", [*TRAIN, "--cv", "1"], 2, "--cv"),
    case("arg-train-fold-out-of-range", [*TRAIN, "--cv", "3", "--fold", "7"], 2, "--fold"),
    case("arg-train-fold-negative", [*TRAIN, "--cv", "3", "--fold", "-1"], 2, "--fold"),
    case("arg-train-channels-empty", [*TRAIN, "--channels", ""], 2, "channels"),
    case("arg-train-classes-one-class", [*TRAIN, "--classes", "a=2,3,5,6", "--oversample", "1"], 2, "class map",
         "two classes"),
    case("arg-train-classes-malformed", [*TRAIN, "--classes", "nonsense", "--oversample", "1"], 2, "class map"),
    case("arg-train-classes-code-twice", [*TRAIN, "--classes", "a=2;b=2"], 2, "class map", "two classes"),
    case("arg-train-lr-milestones-zero", [*TRAIN, "--lr-milestones", "0"], 2, "--lr-milestones"),
    case("arg-train-select-without-val", [*TRAIN, "--select", "val_auc"], 2, "--select", "validation"),
    case("arg-train-seed-negative", [*TRAIN, "--seed", "-1"], 2, "--seed"),
    case("arg-train-unknown-option", [*TRAIN, "--learning-rate", "0.1"], 2, "--learning-rate"),
    case("arg-unknown-command", ["frobnicate"], 2, "frobnicate"),
    case("arg-predict-device-cuda", [*PREDICT, "--device", "cuda"], 2, "--device cuda", "CUDA"),
    case("arg-predict-abstain-1.5", [*PREDICT, "--abstain", "1.5"], 2, "--abstain"),
    case("arg-predict-batch-size-zero", [*PREDICT, "--batch-size", "0"], 2, "--batch-size"),
    case("arg-predict-precision-fp64", [*PREDICT, "--precision", "fp64"], 2, "--precision"),
    case("arg-predict-int8-model-without-ranges", ["predict", "{run_noranges}", *PREDICT[2:], "--precision", "int8"], 2,
         "noranges", "--precision int8", "activation ranges"),
    case("arg-predict-threads-negative", [*PREDICT, "--threads", "-3"], 2, "--threads"),
    case("arg-evaluate-device-cuda0", ["evaluate", "{run}", "--device", "cuda:0"], 2, "--device", "CUDA"),
    case("arg-evaluate-device-tpu", ["evaluate", "{run}", "--device", "tpu"], 2, "--device", "tpu"),
    case("arg-evaluate-abstain-negative", ["evaluate", "{run}", "--abstain", "-0.1"], 2, "--abstain"),
    # the matrix's run is trained with --augment none: no symmetry group for test-time augmentation
    case("arg-evaluate-tta-without-augmentation", ["evaluate", "{run}", "--tta"], 2, "--tta", "--augment none"),
    case("arg-predict-tta-without-augmentation", [*PREDICT, "--tta"], 2, "--tta", "--augment none"),
    case("arg-report-examples-99", [*REPORT, "--examples", "99"], 2, "--examples"),
    case("arg-report-abstain-nan", [*REPORT, "--abstain", "nan"], 2, "--abstain"),
    case("arg-extract-patch-size-8", extract_mask("{mask}", "--qsm", "{qsm}", "--patch-size", "8"), 2,
         "--patch-size", "22"),
    case("arg-extract-connectivity-8", [*EXTRACT, "--connectivity", "8"], 2, "--connectivity"),
    case("arg-extract-min-volume-nan", [*EXTRACT, "--min-volume", "nan"], 2, "--min-volume"),
    case("arg-extract-min-volume-negative", [*EXTRACT, "--min-volume", "-5"], 2, "--min-volume"),
    case("arg-extract-voxel-size-two-values", [*EXTRACT, "--voxel-size", "1,2"], 2, "--voxel-size"),
    case("arg-extract-voxel-size-text", [*EXTRACT, "--voxel-size", "a,b"], 2, "--voxel-size"),
    case("arg-extract-voxel-size-zero", [*EXTRACT, "--voxel-size", "0"], 2, "--voxel-size"),
    case("arg-extract-channels-unknown", [*EXTRACT, "--channels", "t1"], 2, "--channels", "t1"),
    case("arg-extract-channels-twice", [*EXTRACT, "--channels", "qsm,qsm"], 2, "--channels"),
    case("arg-synth-patients-zero", [*SYNTH, "--patients", "0"], 2, "--patients"),
    case("arg-synth-lesions-scale-inf", [*SYNTH, "--lesions-scale", "inf"], 2, "--lesions-scale"),
    case("arg-synth-seed-negative", [*SYNTH, "--seed", "-2"], 2, "seed"),
    case("arg-synth-lesions-per-subject-negative", ["synth", "--volumes", "1", "--lesions-per-subject", "-1",
                                                    "--out", "{tmp}/vol", "--quiet"], 2, "--lesions-per-subject"),
    case("arg-ablate-cv-one", [*ABLATE, "--cv", "1"], 2, "--cv"),
    case("arg-ablate-reference-unknown", [*ABLATE, "--reference", "t2"], 2, "--reference"),
    case("arg-ablate-bootstrap-five", [*ABLATE, "--bootstrap", "5"], 2, "--bootstrap"),
    case("arg-ablate-device-tpu", [*ABLATE, "--device", "tpu"], 2, "--device"),
    case("arg-ablate-lr-nan", [*ABLATE, "--lr", "nan"], 2, "--lr"),
    case("arg-ablate-lr-milestones-not-int", [*ABLATE, "--lr-milestones", "x,2"], 2, "--lr-milestones"),
    case("arg-ablate-select-unknown", [*ABLATE, "--select", "best"], 2, "--select", "best"),
    case("arg-ablate-split-unknown", [*ABLATE, "--split", "lesion"], 2, "--split"),
    case("arg-demo-device-tpu", ["demo", "--out", "{tmp}/demo", "--device", "tpu"], 2, "--device", "tpu"),
    case("arg-demo-device-cuda", ["demo", "--out", "{tmp}/demo", "--device", "cuda"], 2, "--device", "CUDA"),
    case("arg-demo-unknown-option", ["demo", "--out", "{tmp}/demo", "--channels", "qsm"], 2, "--channels"),
    case("arg-import-channel-name", [*IMPORT, "--channel-name", "a,b"], 2, "--channel-name"),
    case("arg-import-class-names-count", [*IMPORT, "--class-names", "a,b,c"], 2, "class names"),
    case("arg-import-missing-out", ["import-medmnist", "{npz}"], 2, "--out"),
]

OUT_CASES = [
    case("out-train-existing-regular-file", [*TRAIN[:3], "{tmp}/taken", *TRAIN[4:]], 2, "taken",
         "not a folder", setup=existing_file("taken")),
    case("out-demo-under-regular-file", ["demo", "--out", "{tmp}/file/demo"], 2, "file",
         setup=existing_file("file")),
    case("out-demo-existing-regular-file", ["demo", "--out", "{tmp}/taken"], 2, "taken", "not a folder",
         setup=existing_file("taken")),
    case("out-report-existing-directory", [*REPORT[:3], "{tmp}/r.html"], 2, "r.html", "folder",
         setup=existing_dir("r.html")),
    case("out-report-existing-file", REPORT, 2, "r.html", "--overwrite", setup=existing_file("r.html")),
    case("out-export-existing-file", ["export", "{run}", "--out", "{tmp}/m.onnx"], 2, "m.onnx", "--overwrite",
         setup=existing_file("m.onnx")),
    case("out-train-existing-run", TRAIN, 2, "run", "--overwrite", setup=copy_of("run", "run")),
    case("out-predict-existing-predictions", PREDICT, 2, "pred", "--overwrite", setup=copy_of("preds", "pred")),
    case("out-predict-existing-regular-file", PREDICT, 2, "pred", "not a folder", setup=existing_file("pred")),
    case("out-extract-earlier-results", EXTRACT, 2, "--overwrite",
         setup=both(existing_file("p.h5"), existing_file("p_lesions.csv"), existing_file("p_extract.json"))),
    case("out-extract-earlier-lesion-table-only", EXTRACT, 2, "p_lesions.csv", "--overwrite",
         setup=existing_file("p_lesions.csv")),
    case("out-extract-existing-directory", [*EXTRACT[:-3], "{tmp}/p.h5", "--quiet"], 2, "p.h5", "folder",
         setup=existing_dir("p.h5")),
    case("out-synth-existing-file", SYNTH, 2, "syn.h5", "--overwrite", setup=existing_file("syn.h5")),
    case("out-synth-volumes-existing-file", ["synth", "--volumes", "1", "--out", "{tmp}/vol", "--quiet"], 2, "vol",
         "not a folder", setup=existing_file("vol")),
    case("out-import-existing-file", IMPORT, 2, "m.h5", "--overwrite", setup=existing_file("m.h5")),
    case("out-import-onto-its-source", ["import-medmnist", "{tmp}/src.npz", "--out", "{tmp}/src.npz",
                                        "--overwrite"], 2, "src.npz", "input", setup=copy_of("npz", "src.npz")),
    case("out-ablate-existing-regular-file", [*ABLATE[:3], "{tmp}/abl", *ABLATE[4:]], 2, "abl", "not a folder",
         setup=existing_file("abl")),
    case("out-train-under-regular-file", [*TRAIN[:3], "{tmp}/file/run", *TRAIN[4:]], 2, "file",
         setup=existing_file("file")),
    case("out-extract-under-regular-file", [*EXTRACT[:-3], "{tmp}/file/p.h5", "--quiet"], 2, "file",
         setup=existing_file("file")),
    case("out-predict-under-regular-file", [*PREDICT[:-3], "{tmp}/file/pred", "--quiet"], 2, "file",
         setup=existing_file("file")),
    case("out-synth-under-regular-file", [*SYNTH[:2], "{tmp}/file/syn.h5", *SYNTH[3:]], 2, "file",
         setup=existing_file("file")),
    case("out-import-under-regular-file", [*IMPORT[:3], "{tmp}/file/m.h5"], 2, "file",
         setup=existing_file("file")),
]

FAULT_CASES = [
    case("fault-extract-read-only", EXTRACT, 2, "p", "Read-only file system", fault=fail_mkstemp(errno.EROFS)),
    case("fault-extract-disk-full", EXTRACT, 1, "p", "No space left", fault=fail_mkstemp(errno.ENOSPC)),
    case("fault-extract-publish-permission", EXTRACT, 2, "Permission denied", fault=fail_replace(errno.EACCES)),
    case("fault-synth-immutable", SYNTH, 2, "syn.h5", "Operation not permitted", fault=fail_mkstemp(errno.EPERM)),
    case("fault-synth-io-error", SYNTH, 1, "syn.h5", "Input/output error", fault=fail_replace(errno.EIO)),
    case("fault-import-read-only", IMPORT, 2, "m.h5", "Read-only file system", fault=fail_replace(errno.EROFS)),
    case("fault-import-quota", IMPORT, 1, "m.h5", "quota", fault=fail_mkstemp(errno.EDQUOT)),
    case("fault-predict-permission", PREDICT, 2, "Permission denied", fault=fail_mkdtemp(errno.EACCES)),
    # the earlier predictions must survive a swap that fails half-way (replaced only when complete)
    case("fault-predict-overwrite-disk-full", [*PREDICT, "--overwrite"], 1, "No space left",
         setup=copy_of("preds", "pred"), fault=fail_replace(errno.ENOSPC)),
    case("fault-evaluate-read-only-run", ["evaluate", "{tmp}/run"], 2, "metrics.json", "Read-only file system",
         setup=copy_of("run", "run"), fault=fail_mkstemp(errno.EROFS)),
    case("fault-evaluate-file-too-large", ["evaluate", "{tmp}/run"], 1, "metrics.json", "File too large",
         setup=copy_of("run", "run"), fault=fail_mkstemp(errno.EFBIG)),
    case("fault-train-read-only-parent", TRAIN, 2, "run", "Read-only file system", fault=fail_mkdir(errno.EROFS)),
    case("fault-train-disk-full", TRAIN, 1, "run", "No space left", fault=fail_mkstemp(errno.ENOSPC)),
    case("fault-report-disk-full", [*REPORT, "--examples", "1"], 1, "r.html", "No space left",
         fault=fail_mkstemp(errno.ENOSPC)),
    case("fault-synth-volumes-read-only", ["synth", "--volumes", "1", "--out", "{tmp}/vol", "--quiet"], 2,
         "Read-only file system", fault=fail_mkdtemp(errno.EROFS)),
    case("fault-demo-read-only", ["demo", "--out", "{tmp}/demo"], 2, "demo", "Read-only file system",
         fault=fail_mkdir(errno.EROFS)),
    # a second writer fails at once, naming the holder; the first one's files are untouched
    case("fault-evaluate-run-locked", ["evaluate", "{tmp}/run"], 2, "run", "in use", "pid 4242",
         setup=copy_of("run", "run"), fault=held_lock("run")),
    case("fault-train-out-locked", TRAIN, 2, "run", "in use", "pid 4242", fault=held_lock("run")),
    case("fault-predict-out-locked", PREDICT, 2, "pred", "in use", "pid 4242", fault=held_lock("pred")),
    # h5py and torch report the OS error inside a RuntimeError's text
    case("fault-extract-errno-in-message", EXTRACT, 1, "No space left",
         fault=raise_from("mslesion.data.extract.write_patches",
                          RuntimeError("Can't write data (file write failed: errno = 28, error message = 'No space "
                                       "left on device')"))),
    case("fault-extract-unexpected-bug", EXTRACT, 1, "unexpected RuntimeError", "traceback in",
         fault=raise_from("mslesion.data.extract.write_extraction", RuntimeError("boom"))),
    case("fault-extract-ctrl-c", EXTRACT, 130, "interrupted",
         fault=raise_from("mslesion.data.extract.extract_subjects", KeyboardInterrupt())),
    case("fault-train-ctrl-c", TRAIN, 130, "interrupted", "--resume", new_ok=True,
         fault=raise_from("mslesion.train.run_epochs", KeyboardInterrupt())),
    case("fault-ablate-ctrl-c", ABLATE, 130, "interrupted", "rerun", new_ok=True,
         fault=raise_from("mslesion.ablate.train_and_evaluate_run", KeyboardInterrupt())),
]

CASES = [*HDF5_CASES, *NIFTI_CASES, *MANIFEST_CASES, *RUN_CASES, *ARG_CASES, *OUT_CASES, *FAULT_CASES]


# --- the harness --------------------------------------------------------------------------------------------


def snapshot(paths: list[Path]) -> dict[str, str]:
    """Digest of every non-hidden file, and the names of the folders, under `paths` (hidden names are bookkeeping:
    locks, temporary files), so that a changed byte, a removed file or a stray new file or folder all show."""
    digests = {}
    for root in paths:
        entries = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        for entry in entries:
            if any(part.startswith(".") for part in entry.relative_to(root.parent).parts):
                continue
            digests[str(entry)] = "folder" if entry.is_dir() else \
                hashlib.blake2b(entry.read_bytes(), digest_size=16).hexdigest()
    return digests


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    code = exit_info.value.code
    captured = capsys.readouterr()
    return (0 if code is None else int(code)), captured.out, captured.err


def expand(args: list[str], env: dict[str, str], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **env) for a in args]


@pytest.mark.parametrize(("args", "code", "fragments", "setup", "fault", "new_ok"), CASES)
def test_bad_input(args, code, fragments, setup, fault, new_ok, env, tmp_path, monkeypatch, capsys):
    tmp = tmp_path / "case"
    tmp.mkdir()
    if setup:
        setup(tmp, env)
    argv = expand(args, env, tmp)
    monkeypatch.chdir(tmp)  # a stray default output would land here and be caught by the snapshot
    monkeypatch.setattr(sys, "argv", ["mslesion", *argv])
    guard_long_work(monkeypatch)
    if fault:
        fault(monkeypatch, tmp)
    watched = [tmp, *(Path(a) for a in argv if a.startswith("/") and Path(a).exists() and tmp not in Path(a).parents)]
    before = snapshot(watched)

    try:
        got, out, err = run_main(argv, capsys)
    finally:
        while HELD_LOCKS:
            HELD_LOCKS.pop().release()
    crash_log = re.search(r"traceback in (\S+?), or rerun", err)
    if crash_log:  # read it, then tidy it away: the unexpected-error line names a log in the temporary folder
        log = Path(crash_log.group(1))
        log_text = log.read_text() if log.exists() else ""
        log.unlink(missing_ok=True)

    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, f"exit {got}, expected {code}; stderr:\n{err}"
    assert "Traceback" not in out + err
    assert "\x1b[" not in out + err, "raw terminal escape codes in the output"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for fragment in fragments:  # a tuple: any one of its words will do
        alternatives = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(a in lines[0] for a in alternatives), f"{fragment!r} not in {lines[0]!r}"
    after = snapshot(watched)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"pre-existing outputs changed or removed: {changed}"
    if not new_ok:
        assert sorted(set(after) - set(before)) == [], "a refused command left new output"
    if "traceback in" in fragments:  # the crash log existed and held the traceback
        assert crash_log and "RuntimeError: boom" in log_text
    assert not Path(env["pwned"]).exists(), "a pickled payload was executed"


def test_matrix_size():
    """The issue's floor: ≥ 150 cases, ≥ 10 distinct ones per category."""
    categories: dict[str, int] = {}
    for param in CASES:
        categories[param.id.split("-")[0]] = categories.get(param.id.split("-")[0], 0) + 1
    assert len(CASES) >= 150, categories
    assert set(categories) == {"hdf5", "nifti", "manifest", "run", "arg", "out", "fault"}
    assert min(categories.values()) >= 10, categories
    assert len({p.id for p in CASES}) == len(CASES)


# --- positive controls: the harness can pass, and accepted inputs really are accepted ---------------------------


def lesion_rows(table: Path) -> list[dict]:
    with table.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("args", [
    pytest.param(EXTRACT, id="extract-explicit-paths"),
    pytest.param(["extract", "{man_ok}", "--patch-size", str(PATCH), "--out", "{tmp}/p.h5", "--quiet"],
                 id="extract-manifest"),
    pytest.param(SYNTH, id="synth"),
    pytest.param(IMPORT, id="import-medmnist"),
    pytest.param(["evaluate", "{tmp}/run"], id="evaluate-a-copy-of-the-run"),
    pytest.param(["predict", "{run}", "{man_ok}", "--out", "{tmp}/pred", "--quiet"], id="predict-manifest"),
])
def test_valid_inputs_pass(args, env, tmp_path, monkeypatch, capsys):
    """Positive controls: the same harness, valid inputs, exit 0 and no error line."""
    monkeypatch.chdir(tmp_path)
    copy_run(Path(env["run"]), tmp_path / "run")
    code, out, err = run_main(expand(args, env, tmp_path), capsys)
    assert code == 0, f"{args[0]}: {err}"
    assert "Traceback" not in out + err and "error" not in err
    if args[0] == "extract":
        assert len(lesion_rows(tmp_path / "p_lesions.csv")) == 3


def test_mask_0_255_is_binary_with_a_note(env, tmp_path, capsys):
    code, _, _ = run_main(expand(EXTRACT, env, tmp_path), capsys)
    assert code == 0
    args = expand(extract_mask("{mask255}", "--flair", "{flair}", "--qsm", "{qsm}"), env, tmp_path / "255")
    code, _, err = run_main(args, capsys)
    assert code == 0, err
    assert "read as a binary mask" in err and "255" in err and "\x1b[" not in err
    assert len(lesion_rows(tmp_path / "255" / "p_lesions.csv")) == len(lesion_rows(tmp_path / "p_lesions.csv")) == 3


def test_instances_on_a_binary_mask_gives_a_note(env, tmp_path, capsys):
    code, _, err = run_main(expand(extract_mask("{mask}", "--qsm", "{qsm}", "--instances"), env, tmp_path), capsys)
    assert code == 0, err
    assert "several disconnected blobs" in err and "\x1b[" not in err
    assert len(lesion_rows(tmp_path / "p_lesions.csv")) == 1  # what --instances asked for, with the warning


def test_predict_overwrite_replaces(env, tmp_path, capsys):
    copy_run(Path(env["preds"]), tmp_path / "pred")
    before = (tmp_path / "pred" / "predict_config.json").read_text()
    code, _, err = run_main(expand([*PREDICT, "--overwrite", "--abstain", "0.9"], env, tmp_path), capsys)
    assert code == 0, err
    after = json.loads((tmp_path / "pred" / "predict_config.json").read_text())
    assert after["config"]["abstain"] == 0.9 and json.loads(before)["config"]["abstain"] == 0.0
    assert not [p for p in tmp_path.iterdir() if p.name != "pred"], "staging folders left behind"


def test_malicious_pickle_payload_never_runs(env):
    assert not Path(env["pwned"]).exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(Path(env["run_pickle"]) / "model.pt", weights_only=True)


def test_corrupt_gzip_stream_is_not_read_by_gzip_either(env):
    # the fixture's corruption really is inside the stream: gzip itself fails on it at the CRC
    with pytest.raises((OSError, EOFError, zlib.error)), gzip.open(env["nii_corrupt"]) as f:
        f.read()
