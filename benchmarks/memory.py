"""Training from a patch file larger than memory: peak resident memory and throughput, streamed vs in memory.

    python benchmarks/memory.py --folder /tmp/mslesion-memory              # 6 GiB file, then a 1 GiB one
    python benchmarks/memory.py --folder /tmp/m --big-gib 6 --small-gib 1 --window 512 --windows 2 --batch-size 32

1. Writes a patch file of `--big-gib` GiB (3 × 35³ float32 patches, uncompressed, one HDF5 chunk per patch, written
   a block at a time so that writing it needs little memory) and trains on it with `--in-memory no`: the real
   training state (`train.start_training`: split, input normalisation — one full pass over the training patches —
   model, optimiser) and then the first `--windows` windows of epoch 1 (`train.epoch_windows`, `train.train_epoch`).
   Each run is a fresh process; its peak resident memory is `resource.getrusage(...).ru_maxrss`.
2. On a file of `--small-gib` GiB that fits in memory, trains the same number of windows in memory and streamed,
   alternating fresh processes, and reports samples/s of both (the training steps only; the normalisation pass
   is timed separately).

The patches are a pool of seeded noise patches with a class-dependent blob, cycled: the content does not matter
for memory or speed, only the bytes. The page cache is left as it is (the file was just written, so on a machine
with enough RAM its pages may still be cached; resident memory does not count them).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

PATCH = 35
CHANNELS = ("flair", "qsm", "mask")
PATCH_BYTES = len(CHANNELS) * PATCH**3 * 4


def write_big_file(path: Path, gib: float, block: int = 64) -> int:
    """A valid patch file of about `gib` GiB, written block by block; returns the number of patches."""
    n = int(gib * 2**30 // PATCH_BYTES)
    rng = np.random.default_rng(0)
    codes = np.array([2, 3, 5, 6])
    labels = codes[np.arange(n) % 4]
    grid = np.indices((PATCH,) * 3) - PATCH // 2
    blob = (np.sqrt((grid**2).sum(0)) <= 6).astype(np.float32)
    pool = rng.normal(0, 0.3, (block, len(CHANNELS), PATCH, PATCH, PATCH)).astype(np.float32)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, len(CHANNELS), PATCH, PATCH, PATCH), dtype="f4",
                                  chunks=(1, len(CHANNELS), PATCH, PATCH, PATCH))
        images.attrs["channels"] = list(CHANNELS)
        for start in range(0, n, block):
            rows = min(block, n - start)
            chunk = pool[:rows].copy()
            sign = np.where(np.isin(labels[start:start + rows], (3, 5)), 1.0, -1.0).astype(np.float32)
            chunk[:, 1] += sign[:, None, None, None] * blob
            chunk[:, 2] = blob
            images[start:start + rows] = chunk
        f.create_dataset("label", data=labels.astype(np.int64))
        f.create_dataset("patient", data=np.asarray([f"sub-{i % 1000:04d}" for i in range(n)], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("lesion", data=(np.arange(n) // 1000).astype(np.int64))
        f.attrs["voxel_size_mm"] = np.ones(3)
        f.attrs["format_version"] = 2
        f.attrs["source"] = "benchmarks/memory.py"
    return n


def worker(data: str, mode: str, window: int, windows: int, batch_size: int, threads: int, out: str) -> dict:
    """In this fresh process: the training state as `train` builds it, one warm-up step (oneDNN's kernel choice and
    first touch of the activations, which would otherwise be timed in the first window), then the first windows of
    epoch 1, timed."""
    import torch

    from mslesion import distributed
    from mslesion import train as train_module
    from mslesion.config import TrainConfig
    from mslesion.data.task import load_task
    from mslesion.runtime import set_threads

    set_threads(threads)
    # fp32: no `auto` measurement inside the timed process, and the same arithmetic in every run
    cfg = TrainConfig(data=data, out=out, augment="random", batch_size=batch_size, in_memory=mode,
                      shuffle_window=window, seed=0, precision="fp32")
    started = time.perf_counter()
    task = load_task(data, cfg.channels, cfg.classes, mode).check_trainable()
    loaded = time.perf_counter() - started
    Path(out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    state = train_module.start_training(cfg, task, Path(out), torch.device("cpu"), None, distributed.DistContext())
    setup = time.perf_counter() - started
    plan = train_module.epoch_windows(state.items, cfg.augment, 1, cfg.seed, cfg.shuffle_window)[:windows]
    first = plan[0]
    warm = train_module.EpochWindow(np.unique(first.items[:batch_size].numpy()), first.items[:batch_size],
                                    first.ks[:batch_size])
    train_module.train_epoch(state, [warm])
    started = time.perf_counter()
    stats = train_module.train_epoch(state, plan)
    seconds = time.perf_counter() - started
    return {"mode": task.in_memory, "patches_in_file": len(task), "training_patches": len(state.items),
            "load_seconds": loaded, "setup_seconds (split, normalisation pass, model)": setup,
            "samples": stats["samples"], "train_seconds": seconds, "samples_per_s": stats["samples"] / seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_worker(data: Path, mode: str, args: argparse.Namespace, folder: Path) -> dict:
    out = tempfile.mkdtemp(prefix=f"run-{mode}-", dir=folder)
    command = [sys.executable, __file__, "--worker", str(data), mode, "--window", str(args.window),
               "--windows", str(args.windows), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--out", out]
    result = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])
    print(f"  {data.name} {mode}: {result['samples_per_s']:.1f} samples/s, peak RSS {result['peak_rss_gib']:.2f} GiB",
          file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("benchmark-memory"),
                        help="where the patch files and runs are written (the files are removed after use)")
    parser.add_argument("--big-gib", type=float, default=6.0)
    parser.add_argument("--small-gib", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=512, help="--shuffle-window of every run")
    parser.add_argument("--windows", type=int, default=2, help="windows of epoch 1 trained per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating in-memory/streamed runs on the small file")
    parser.add_argument("--parts", default="big,small")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.window, args.windows, args.batch_size,
                                args.threads, args.out)))
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    results: dict = {"window": args.window, "windows": args.windows, "batch_size": args.batch_size,
                     "threads": args.threads}
    parts = set(args.parts.split(","))
    if "big" in parts:
        big = args.folder / "big.h5"
        started = time.perf_counter()
        n = write_big_file(big, args.big_gib)
        results["big_file"] = {"gib": big.stat().st_size / 2**30, "patches": n,
                               "write_seconds": time.perf_counter() - started}
        print(f"wrote {big} ({results['big_file']['gib']:.2f} GiB, {n} patches)", file=sys.stderr, flush=True)
        results["big_streamed"] = run_worker(big, "no", args, args.folder)
        big.unlink()
    if "small" in parts:
        small = args.folder / "small.h5"
        n = write_big_file(small, args.small_gib)
        results["small_file"] = {"gib": small.stat().st_size / 2**30, "patches": n}
        runs: dict[str, list[dict]] = {"yes": [], "no": []}
        for _ in range(args.rounds):
            for mode in ("yes", "no"):
                runs[mode].append(run_worker(small, mode, args, args.folder))
        for mode, name in (("yes", "small_in_memory"), ("no", "small_streamed")):
            results[name] = {"samples_per_s_median": statistics.median(r["samples_per_s"] for r in runs[mode]),
                             "peak_rss_gib_max": max(r["peak_rss_gib"] for r in runs[mode]), "runs": runs[mode]}
        results["streamed_over_in_memory"] = (results["small_streamed"]["samples_per_s_median"]
                                              / results["small_in_memory"]["samples_per_s_median"])
        small.unlink()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
