"""Training and inference speed: naive PyTorch vs mslesion's real path, side by side in one run.

    python benchmarks/train_speed.py                     # batch 128, 3 alternating rounds of 3 steps, 2 threads
    python benchmarks/train_speed.py --rounds 5 --json speed.json

Naive reference: the same architecture as plain modules (BatchNorm3d → ReLU → MaxPool3d), fp32, eager,
contiguous layout, glibc's default allocator behaviour, one pre-built batch already in memory.
Ours: mslesion.train.train_epoch on a one-batch epoch plan — the augmentation gather from the data set in
memory, the fused channels-last net, autocast as `--precision auto` picks it, loss, backward, Adam step.
Each contender runs in its own fresh Python process, one process per round, and the processes alternate
(A B C A B C ...) so that load from other jobs hits all of them; the ratio of medians is reported. Separate
processes matter: the allocator setting is process-wide and memory one contender leaves in the heap changes
the next one's page faults (in one process the naive step swung between 0.5 and 1.4 s at batch 32). In each
process a contender runs one untimed call (kernel selection, first-touch of its memory), then `--steps` timed
ones.
Whole command (`--parts command`): `mslesion train` as a user runs it (a fresh process: start-up, loading the
patch file, training with its augmentation gather, the batch-norm population pass, out-of-distribution
statistics, checkpoints, and the test evaluation the command prints) against an equivalent naive loop in its own
fresh process: the same net as plain fp32 eager modules, Adam, batch 128, the same number of epochs over every
labelled patch of the same file, held in memory. Ratio = naive wall time / ours.
Accuracy: both paths train the same short protocol on the same synthetic data and are evaluated on the same
test split, so that speed is never bought with a worse model.

Peaks: in the same run, `torch.matmul` of 2048² matrices in fp32 and bf16 (best of `--gemm-reps` after a warm-up,
same threads) gives the machine's GEMM peaks; the net's FLOPs per sample are counted from its actual convolution
and linear layers (forward hooks on a 3-channel patch of `--patch` voxels; a training step is 3 × forward minus
the first convolution's input gradient, which nothing needs). The table shows each throughput as GFLOP/s and as
a share of both peaks, beside the CPU model and its ISA flags (/proc/cpuinfo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mslesion import distributed, paper, runtime
from mslesion import train as train_module
from mslesion.config import EvaluateConfig, TrainConfig
from mslesion.evaluate import evaluate
from mslesion.inference import predict_logits, predict_probabilities
from mslesion.model import LesionNet
from mslesion.precision import int8_input_pad, resolve
from mslesion.quantized import Int8LesionNet, activation_ranges
from mslesion.runtime import autocast_dtype


def allocator(fast: bool) -> None:
    """Ours runs with freed memory kept in the heap; the naive reference with glibc's defaults."""
    if fast:
        runtime.keep_freed_memory()
    else:
        runtime.restore_default_memory()


def naive_train_step(batch_size: int):
    torch.manual_seed(0)
    model = LesionNet(3, 2, 35, fused=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch_size, 3, 35, 35, 35) * 0.02, torch.randint(0, 2, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def our_train_step(batch_size: int, precision: str):
    cfg = TrainConfig(batch_size=batch_size, precision=precision)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(256, 3, 35, 35, 35, generator=generator) * 0.02  # the data set, in memory
    targets = torch.randint(0, 2, (256,), generator=generator)
    torch.manual_seed(0)
    model = LesionNet(3, 2, 35).channels_last()
    optimizer = train_module.build_optimizer(model, cfg)
    dtype = autocast_dtype(torch.device("cpu"), resolve(torch.device("cpu"), precision, "training"))
    # only what an epoch reads: no task, split or run folder (nothing is written)
    state = train_module.TrainingState(cfg, None, {}, model, model, optimizer, images, targets, np.arange(256),
                                       torch.device("cpu"), dtype, distributed.DistContext(), Path("."))
    epoch = [0]

    def step() -> None:
        epoch[0] += 1  # a fresh shuffled (patch, symmetry) plan each time, cut to one batch
        items, ks = train_module.epoch_plan(np.arange(256), "full", epoch[0], seed=0)
        window = train_module.EpochWindow(np.unique(items[:batch_size].numpy()), items[:batch_size], ks[:batch_size])
        train_module.train_epoch(state, [window])

    return step


def naive_inference(batch_size: int):
    torch.manual_seed(0)
    model = LesionNet(3, 2, 35, fused=False).eval()
    x = torch.randn(batch_size, 3, 35, 35, 35) * 0.02

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def our_inference(batch_size: int, precision: str):
    torch.manual_seed(0)
    model = LesionNet(3, 2, 35).eval()
    x = torch.randn(batch_size, 3, 35, 35, 35) * 0.02
    return lambda: predict_logits(model, x, batch_size, "cpu", precision=precision)


CONTENDERS = {  # name: (factory(batch_size) -> callable, keep freed memory)
    "naive fp32": (naive_train_step, False),
    "naive fp32, freed memory kept": (naive_train_step, True),
    "ours": (lambda b: our_train_step(b, "auto"), True),
    "naive fp32 inference": (naive_inference, False),
    "ours fp32 inference": (lambda b: our_inference(b, "fp32"), True),
    "ours auto inference": (lambda b: our_inference(b, "auto"), True),
}


def worker(name: str, batch_size: int, steps: int) -> list[float]:
    """In this (fresh) process: build one contender, one untimed call, then `steps` timed calls."""
    factory, fast = CONTENDERS[name]
    allocator(fast)
    fn = factory(batch_size)
    fn()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def alternate(names: list[str], rounds: int, steps: int, batch_size: int, threads: int) -> dict[str, list[float]]:
    """Seconds per call of each contender: per round, one fresh process per contender, in turn."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(1, rounds + 1):
        for name in names:
            command = [sys.executable, __file__, "--worker", name, "--batch-size", str(batch_size),
                       "--steps", str(steps), "--threads", str(threads)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            times[name] += json.loads(result.stdout.strip().splitlines()[-1])
            print(f"  round {r} {name}: " + " ".join(f"{t:.2f}" for t in times[name][-steps:]) + " s",
                  file=sys.stderr, flush=True)
    return times


def throughput(times: dict[str, list[float]], samples: int) -> dict[str, float]:
    return {name: samples / statistics.median(ts) for name, ts in times.items()}


def tta_subject_inputs() -> tuple[LesionNet, torch.Tensor]:
    """The TTA part's seeded net and subject: 50 lesions of 3 × 35³ (2,400 patch evaluations with 48 symmetries)."""
    torch.manual_seed(0)
    return LesionNet(3, 2, 35).eval(), torch.randn(50, 3, 35, 35, 35) * 0.02


def tta_subject(precision: str) -> float:
    """Seconds for one subject: 50 lesions × 48 symmetries = 2,400 patch evaluations. int8 runs the quantised net
    as `predict --precision int8` does (with this machine's measured input padding), calibrated on the subject
    itself: the calibration changes values, not the time."""
    model, lesions = tta_subject_inputs()
    if precision == "int8":
        ranges = activation_ranges(model, [lesions])
        model, precision = Int8LesionNet(model, ranges, input_pad=int8_input_pad(model.in_channels)), "fp32"
    predict_probabilities(model, lesions[:2], 128, "cpu", tta=True, precision=precision)  # warm-up
    started = time.perf_counter()
    predict_probabilities(model, lesions, 128, "cpu", tta=True, precision=precision)
    return time.perf_counter() - started


def accuracy_data(path: Path) -> str:
    """A small synthetic cohort (physically simulated QSM/FLAIR, labelled classes only) in 23³ patches,
    so that both paths can train a few epochs in minutes on a shared 2-core machine."""
    from mslesion.config import SynthConfig
    from mslesion.data.synth import write_cohort

    write_cohort(SynthConfig(patients=40, lesions_scale=0.5, labelled_only=True, patch_size=23, seed=0), path)
    return str(path)


def accuracy(epochs: int, folder: Path, seed: int) -> dict[str, dict[str, float]]:
    """Train the same short protocol with the naive path and with ours; test metrics of both."""
    data = accuracy_data(folder / "cohort.h5")
    results = {}
    original_build = train_module.build_model
    for name, precision, fused in (("naive fp32", "fp32", False), ("ours", "auto", True)):
        def build(cfg, task, fused=fused):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                return LesionNet(len(task.channels), len(task.class_map.names), task.images.shape[-1], fused=fused)

        train_module.build_model = build
        allocator(fused)
        cfg = TrainConfig(data=data, out=str(folder / name.replace(" ", "_")), channels=("qsm",), augment="random",
                          epochs=epochs, lr_milestones=(epochs // 2, epochs - 1), batch_size=32,
                          precision=precision, seed=seed)
        started = time.perf_counter()
        run = train_module.train(cfg, show_progress=False)
        seconds = time.perf_counter() - started
        metrics = evaluate(EvaluateConfig(run=str(run)))
        results[name] = {"test_accuracy": metrics["accuracy"], "test_roc_auc": metrics["roc_auc"],
                         "train_seconds": seconds}
    train_module.build_model = original_build
    allocator(False)
    return results


def naive_command(data: str, epochs: int, batch_size: int, threads: int) -> None:
    """The equivalent naive loop (run with --naive-command in a fresh process): every labelled patch of the file
    in memory, plain fp32 eager modules, Adam, `epochs` shuffled passes of `batch_size`."""
    import h5py

    torch.set_num_threads(threads)
    with h5py.File(data, "r") as f:
        labels = f["label"][:]
        rows = np.flatnonzero(np.isin(labels, paper.TRAINED_CODES))
        images = torch.from_numpy(f["images"][:][rows]).float()  # float16 storage is widened, as train does
    targets = torch.as_tensor(np.isin(labels[rows], paper.DEMYELINATING_CODES).astype(np.int64))
    torch.manual_seed(0)
    model = LesionNet(images.shape[1], 2, images.shape[-1], fused=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(model(images[batch]), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def whole_command(folder: Path, patients: int, epochs: int, batch_size: int, threads: int) -> dict:
    """Wall seconds of `mslesion train` and of the naive loop on the same synthetic file, each in a fresh process."""
    from mslesion.config import SynthConfig
    from mslesion.data.synth import write_cohort

    data = folder / "cohort.h5"
    patches = write_cohort(SynthConfig(patients=patients, labelled_only=True, seed=0), data)
    ours_command = [sys.executable, "-m", "mslesion", "train", str(data), "--out", str(folder / "run"),
                    "--epochs", str(epochs), "--batch-size", str(batch_size), "--augment", "random",
                    "--lr-milestones", str(epochs), "--threads", str(threads), "--quiet"]
    naive_command_line = [sys.executable, __file__, "--naive-command", str(data), "--epochs-naive", str(epochs),
                          "--batch-size", str(batch_size), "--threads", str(threads)]
    seconds = {}
    for name, command in (("naive loop", naive_command_line), ("mslesion train", ours_command)):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        seconds[name] = time.perf_counter() - started
        print(f"  {name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)
    history = json.loads((folder / "run" / "history.json").read_text())
    return {"patients": patients, "labelled_patches": int(len(patches)), "epochs": epochs,
            "samples_per_epoch_ours": history[0]["samples"], "seconds": seconds,
            "ratio": seconds["naive loop"] / seconds["mslesion train"]}


ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm")


def cpu_description() -> dict[str, object]:
    """CPU model and the ISA flags that decide the kernels oneDNN can use (x86 and Arm names)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            if key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return {"model": model, "logical_cpus": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags]}


def gemm_peak(dtype: torch.dtype, reps: int, size: int = 2048, budget_s: float = 20.0) -> float:
    """GFLOP/s of torch.matmul of two size² matrices: the best of up to `reps` timed calls after one warm-up.

    Where the precision has no native kernel (bf16 on a CPU without AVX512-BF16 or AMX: ~0.3 GFLOP/s measured on
    this project's AVX2 machine) one call takes about a minute: the reps stop once `budget_s` is spent, and a
    warm-up longer than that is itself the measurement."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    started = time.perf_counter()
    torch.matmul(a, b)
    best = spent = time.perf_counter() - started
    if spent < budget_s:
        best = float("inf")
        for _ in range(reps):
            started = time.perf_counter()
            torch.matmul(a, b)
            seconds = time.perf_counter() - started
            best, spent = min(best, seconds), spent + seconds
            if spent > budget_s:
                break
    return 2 * size**3 / best / 1e9


def net_flops(channels: int = 3, patch: int = 35) -> dict[str, float]:
    """FLOPs per sample of the paper's net, from its layers' real shapes: 2 per multiply-add.

    Forward: every Conv3d (output voxels × out channels × in channels × kernel volume) and Linear. Training step:
    forward + weight gradients (as many multiply-adds again) + input gradients (again, except for the first
    convolution, whose input is the data)."""
    model = LesionNet(channels, 2, patch, fused=False)
    macs: list[tuple[str, int]] = []

    def count(module: torch.nn.Module, inputs, output) -> None:
        if isinstance(module, torch.nn.Conv3d):
            per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            macs.append(("conv", output[0].numel() * per_output))
        elif isinstance(module, torch.nn.Linear):
            macs.append(("linear", module.in_features * module.out_features))

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.Linear)]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, channels, patch, patch, patch))
    for hook in hooks:
        hook.remove()
    forward = 2 * sum(m for _, m in macs)
    first_input_gradient = 2 * macs[0][1]
    return {"forward_gflop": forward / 1e9, "train_step_gflop": (3 * forward - first_input_gradient) / 1e9,
            "conv_mmac": [m / 1e6 for kind, m in macs if kind == "conv"]}


def speed_table(results: dict) -> str:
    """The human-readable summary: samples/s, ratio to naive, GFLOP/s and its share of both GEMM peaks."""
    peaks, flops, cpu = results["gemm_peak_gflops"], results["flops"], results["cpu"]
    lines = [f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs, {results['threads']} threads used); "
             f"ISA: {' '.join(cpu['isa']) or 'none of the listed'}",
             f"GEMM peak (torch.matmul 2048², best of {results['gemm_reps']}): fp32 {peaks['fp32']:.0f} GFLOP/s, "
             f"bf16 {peaks['bf16']:.0f} GFLOP/s",
             f"FLOP model (from the net's layers, 3 × 35³): forward {flops['forward_gflop']:.2f} GFLOP/sample, "
             f"training step {flops['train_step_gflop']:.2f} GFLOP/sample "
             f"(convolutions {' + '.join(f'{m:.0f}' for m in flops['conv_mmac'])} M multiply-adds)",
             f"batch {results['batch_size']}, median of {results['rounds']} rounds × {results['steps']} steps; "
             f"`--precision auto` resolves to {results['auto_precision']} here",
             "",
             "| what | samples/s | ratio to naive | GFLOP/s | % of fp32 peak | % of bf16 peak |",
             "|---|---:|---:|---:|---:|---:|"]
    sections = (("train", "training step", "naive fp32", flops["train_step_gflop"]),
                ("inference", "inference", "naive fp32 inference", flops["forward_gflop"]))
    for key, label, naive, gflop in sections:
        for name, rate in results.get(key, {}).items():
            if name.startswith("ratio"):
                continue
            ratio = rate / results[key][naive]
            gflops = rate * gflop
            lines.append(f"| {label}: {name} | {rate:.1f} | {ratio:.1f}× | {gflops:.0f} | "
                         f"{gflops / peaks['fp32']:.0%} | {gflops / peaks['bf16']:.0%} |")
    if "tta_subject_seconds" in results:
        floor = 2400 * flops["forward_gflop"] / peaks["bf16"]
        for precision, seconds in results["tta_subject_seconds"].items():
            gflops = 2400 * flops["forward_gflop"] / seconds
            lines.append(f"| one subject, 50 lesions × 48 TTA, {precision}: {seconds:.1f} s (bf16 peak: {floor:.1f} s) "
                         f"| {2400 / seconds:.1f} | | {gflops:.0f} | {gflops / peaks['fp32']:.0%} | "
                         f"{gflops / peaks['bf16']:.0%} |")
    if "command" in results:
        c = results["command"]
        naive, ours = c["seconds"]["naive loop"], c["seconds"]["mslesion train"]
        lines += ["", f"Whole command, {c['epochs']} epochs of batch {results['batch_size']} on "
                  f"{c['labelled_patches']} labelled patches of {c['patients']} synthetic patients (ours trains on "
                  f"its split's {c['samples_per_epoch_ours']} oversampled samples per epoch, then evaluates): "
                  f"naive loop {naive:.1f} s, `mslesion train` {ours:.1f} s: **{c['ratio']:.1f}×**"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed calls per contender and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accuracy-epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="training seed of the accuracy comparison")
    parser.add_argument("--parts", default="train,inference,tta,command,accuracy", help="comma-separated subset to run")
    parser.add_argument("--gemm-reps", type=int, default=5, help="timed 2048² matmuls per precision for the peaks")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--command-patients", type=int, default=30, help="synthetic patients of the command part")
    parser.add_argument("--command-epochs", type=int, default=2, help="epochs of the command part")
    parser.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--naive-command", help=argparse.SUPPRESS)
    parser.add_argument("--epochs-naive", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b = args.batch_size
    if args.naive_command:
        naive_command(args.naive_command, args.epochs_naive, b, args.threads)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, b, args.steps)))
        return
    precision = "auto"
    print(f"torch {torch.__version__}, {args.threads} threads, batch {b}, autocast on CPU: "
          f"{resolve(torch.device('cpu'), precision, 'training')}", flush=True)
    results: dict = {"batch_size": b, "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
                     "gemm_reps": args.gemm_reps, "cpu": cpu_description(), "flops": net_flops(),
                     "auto_precision": resolve(torch.device("cpu"), precision, "training")}
    print("GEMM peaks (torch.matmul 2048²)...", flush=True)
    results["gemm_peak_gflops"] = {"fp32": gemm_peak(torch.float32, args.gemm_reps),
                                   "bf16": gemm_peak(torch.bfloat16, args.gemm_reps)}

    parts = set(args.parts.split(","))
    if "train" in parts:
        print("training step (samples/s, median of rounds)...", flush=True)
        # the middle contender separates the process-wide allocator setting from the rest of our path
        names = ["naive fp32", "naive fp32, freed memory kept", "ours"]
        results["train"] = throughput(alternate(names, args.rounds, args.steps, b, args.threads), b)
        naive = results["train"]["naive fp32"]
        results["train"]["ratio"] = results["train"]["ours"] / naive
        results["train"]["ratio naive, freed memory kept"] = results["train"]["naive fp32, freed memory kept"] / naive
    if "inference" in parts:
        print("inference (samples/s)...", flush=True)
        names = ["naive fp32 inference", "ours fp32 inference", "ours auto inference"]
        results["inference"] = throughput(alternate(names, args.rounds, args.steps, b, args.threads), b)
        for name in names[1:]:
            results["inference"][f"ratio {name}"] = results["inference"][name] / results["inference"][names[0]]
    if "tta" in parts:
        results["tta_subject_seconds"] = {p: tta_subject(p) for p in ("fp32", precision, "int8")}
    if "command" in parts:
        print("whole command (mslesion train vs the naive loop)...", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            results["command"] = whole_command(Path(folder), args.command_patients, args.command_epochs, b,
                                               args.threads)
    if "accuracy" in parts:
        with tempfile.TemporaryDirectory() as folder:
            results["accuracy"] = accuracy(args.accuracy_epochs, Path(folder), args.seed)
    print(json.dumps(results, indent=2))
    print()
    print(speed_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
