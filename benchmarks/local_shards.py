"""The channel ablation on one machine: one process with every thread against N local shards with a share each.

    python benchmarks/local_shards.py --folder /tmp/mslesion-shards            # 2 shards × 1 thread vs 1 × 2
    python benchmarks/local_shards.py --folder /tmp/s --patients 60 --cv 3 --epochs 4 --json shards.json

A grid's runs are independent, so on a CPU whose threads scale imperfectly (memory-bound passes, OpenMP
barriers, serial Python between kernels) N processes with T/N threads each may finish it sooner than one process
with T threads. This times both on the same labelled synthetic cohort and grid, in fresh output folders:
`mslesion ablate --threads T` against N concurrent `mslesion ablate --shard I/N --threads T/N` into one folder
(the locking of `--shard`; the last shard to finish writes the results), `--rounds` times alternating. Results
differ only by rounding (the thread count changes the order of reductions), which it reports as the largest
difference of a pooled metric between the two. It also times one training step at batch 32 with T threads
against N concurrent processes of T/N threads, for the throughput the grid cannot go beyond.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import cpu_description  # noqa: E402

METRICS = ("accuracy", "balanced_accuracy", "roc_auc")


def mslesion(*args: str) -> list[str]:
    return [sys.executable, "-m", "mslesion", *args]


def ablate_command(args: argparse.Namespace, cohort: Path, out: Path, threads: int) -> list[str]:
    return mslesion("ablate", str(cohort), "--out", str(out), "--channel-sets", args.channel_sets, "--cv",
                    str(args.cv), "--epochs", str(args.epochs), "--batch-size", "32", "--augment", "random",
                    "--threads", str(threads), "--bootstrap", "100", "--quiet")


def timed(commands: list[list[str]]) -> float:
    """Wall time of the commands run concurrently, until the last one exits (each must succeed)."""
    started = time.perf_counter()
    processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    for p, c in zip(processes, commands, strict=True):
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{' '.join(c)} failed:\n{err}")
    return time.perf_counter() - started


def one_process(args, cohort: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return timed([ablate_command(args, cohort, out, args.threads)])


def shards(args, cohort: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    per_shard = max(args.threads // args.shards, 1)
    seconds = timed([ablate_command(args, cohort, out, per_shard) + ["--shard", f"{i}/{args.shards}"]
                     for i in range(1, args.shards + 1)])
    if not (out / "results.json").exists():  # every shard finished its own runs before another's last one
        subprocess.run(ablate_command(args, cohort, out, per_shard) + ["--collect"], check=True, capture_output=True)
    return seconds


def pooled_metrics(out: Path) -> dict[str, dict[str, float]]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {row["channels"]: {m: row[m] for m in METRICS} for row in rows}


def step_worker(threads: int) -> None:
    """In a fresh process: samples/s of 20 training steps of batch 32 (train_speed.py's "ours") with `threads`."""
    import torch
    from train_speed import our_train_step

    from mslesion import runtime

    torch.set_num_threads(threads)
    runtime.keep_freed_memory()
    step = our_train_step(32, "auto")
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(20):
        step()
    print(20 * 32 / (time.perf_counter() - started))


def step_throughput(threads: int, processes: int) -> float:
    """Samples/s of `processes` concurrent step workers of `threads` threads each, added up."""
    command = [sys.executable, __file__, "--step-worker", str(threads)]
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(float(p.communicate()[0].split()[-1]) for p in running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="work folder (cohort and both grids)")
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--channel-sets", default="qsm;flair,qsm,mask")
    parser.add_argument("--cv", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the one process")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--step-worker", type=int, help=argparse.SUPPRESS)  # internal: one step-timing process
    args = parser.parse_args()
    if args.step_worker:
        return step_worker(args.step_worker)
    if args.folder is None:
        parser.error("--folder is required")
    args.folder.mkdir(parents=True, exist_ok=True)
    cohort = args.folder / "cohort.h5"
    if not cohort.exists():
        subprocess.run(mslesion("synth", "--patients", str(args.patients), "--labelled-only", "--quiet", "--out",
                                str(cohort)), check=True)
    per_shard = max(args.threads // args.shards, 1)
    times: dict[str, list[float]] = {"one": [], "shards": []}
    for _ in range(args.rounds):
        times["one"].append(one_process(args, cohort, args.folder / "one"))
        times["shards"].append(shards(args, cohort, args.folder / "shards"))
    one, sharded = pooled_metrics(args.folder / "one"), pooled_metrics(args.folder / "shards")
    difference = max(abs(one[s][m] - sharded[s][m]) for s in one for m in METRICS)
    steps = {"one": step_throughput(args.threads, 1), "shards": step_throughput(per_shard, args.shards)}
    result = {"cpu": cpu_description(), "grid": {"channel_sets": args.channel_sets, "cv": args.cv,
                                                 "epochs": args.epochs, "patients": args.patients},
              "threads": args.threads, "shards": args.shards, "threads_per_shard": per_shard,
              "seconds": times, "step_samples_per_s": steps, "largest_metric_difference": difference,
              "metrics": {"one": one, "shards": sharded}}
    best_one, best_shards = min(times["one"]), min(times["shards"])
    print(f"{result['cpu']['model']}, grid {args.channel_sets} × {args.cv} folds, {args.epochs} epochs")
    print(f"| what | one process, {args.threads} threads | {args.shards} shards × {per_shard} thread(s) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| whole grid (s, best of {args.rounds}) | {best_one:.1f} | {best_shards:.1f} | "
          f"{best_one / best_shards:.2f}× |")
    print(f"| training step, batch 32 (samples/s) | {steps['one']:.1f} | {steps['shards']:.1f} | "
          f"{steps['shards'] / steps['one']:.2f}× |")
    print(f"largest difference of a pooled metric (accuracy, balanced accuracy, ROC AUC): {difference:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
