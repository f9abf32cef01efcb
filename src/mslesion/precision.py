"""`--precision auto`: bf16 only where it is faster on this machine, for this use (training, inference).

bf16 autocast is a win on GPUs and on CPUs with AMX, but on CPUs that only emulate parts of it in AVX-512 it can be
slower than fp32 (measured: inference 2.5× naive in bf16 against 3.6× in fp32 on a Zen 4 core). So `auto` does
not trust a hardware flag: the first time it is asked on a machine, it times a few steps of the paper's net in
both precisions and keeps bf16 only when it is at least 10% faster; the choice is cached per CPU model, torch
version, thread count and use in `$MSLESION_CACHE_DIR/precision.json` (default `~/.cache/mslesion`), so every later
run on the machine makes the same choice (same seed ⇒ same weights) without measuring again. The same file holds
inference's other per-machine choice, the first convolution's input padding (inference_input_pad).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch

from mslesion.atomic import write_json
from mslesion.model import LesionNet
from mslesion.quantized import Int8LesionNet, preferred_engine
from mslesion.runtime import autocast_dtype, cpu_has_fast_bf16

CACHE_ENV = "MSLESION_CACHE_DIR"
USES = ("training", "inference")
BF16_MARGIN = 0.9  # bf16 must take at most 90% of fp32's time: a tie is not worth the rounding
# Part of the cache key: a change to the code being timed makes earlier choices stale. 2: the conv blocks pool in
# bf16 (before, autocast sent every bf16 pool through an fp32 copy, and bf16 inference measured slower than fp32).
MEASUREMENT_VERSION = 2


def resolve(device: torch.device, precision: str, use: str) -> str:
    """fp32 or bf16: the explicit choice, or what `auto` means here."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"  # tensor cores: always faster, and what the CUDA path was written for
    if not cpu_has_fast_bf16():
        return "fp32"
    return measured_choice(use)["choice"]


def cache_path() -> Path:
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mslesion"
    return Path(base) / "precision.json"


def machine_key(use: str) -> str:
    return (f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {use} | "
            f"measurement {MEASUREMENT_VERSION}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_choice(use: str) -> dict:
    """The cached measurement for this machine and use, measuring (once) when there is none."""
    return _cached(machine_key(use), lambda: measure(use))


def _cached(key: str, measure_now) -> dict:
    path = cache_path()
    cached = _read_cache(path)
    if key not in cached:
        cached[key] = measure_now()
        with suppress(OSError):  # an unwritable cache only costs a measurement next time
            write_json(path, cached)
    return cached[key]


# --- zero input channels for the first convolution (LesionNet.pad_input) -------------------------------------------

INPUT_PAD_MARGIN = 0.95  # a padded input must save at least 5% of the inference time to be used


def inference_input_pad(device: torch.device, dtype: torch.dtype | None, in_channels: int) -> int:
    """How many zero channels inference appends to the input on this machine (LesionNet.pad_input).

    oneDNN picks its 3D convolution kernel by the input channel count: on a CPU with AMX, bf16 inference of the
    paper's net ran 12% faster with 3 channels padded to 4, while fp32 ran 8% slower (one subject's TTA, 2 threads);
    on an AVX512-BF16 CPU without AMX padding the first convolution changed nothing. So, like `auto` precision,
    it is measured once per machine, precision and channel count, and cached beside the precision choice.
    """
    if device.type != "cpu":
        return 0
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    key = f"{machine_key('inference')} | input pad | {precision} | {in_channels} channels"
    return int(_cached(key, lambda: measure_input_pad(in_channels, dtype))["pad"])


def int8_input_pad(in_channels: int) -> int:
    """inference_input_pad for `--precision int8` (mslesion.quantized): oneDNN's int8 kernels pick by channel count
    too, so the same measurement, of the quantised net, cached under its own key."""
    key = f"{machine_key('inference')} | input pad | int8 {preferred_engine()} | {in_channels} channels"
    return int(_cached(key, lambda: measure_int8_input_pad(in_channels))["pad"])


def measure_int8_input_pad(in_channels: int, repeats: int = 3, batch: int = 16) -> dict:
    """Seconds per int8 inference batch of the paper's net with each candidate padding; the fastest, with a margin."""
    model, x = _timing_net(in_channels, batch, training=False)
    ranges = [(-4.0, 4.0)] + [(0.0, 4.0)] * len(model.features)  # any calibration times the same

    def padded_step(pad: int) -> Callable[[], None]:
        quantized = Int8LesionNet(model, ranges, input_pad=pad)
        return lambda: quantized(x)

    return _fastest_pad(_best_seconds({pad: padded_step(pad) for pad in pad_candidates(in_channels)}, repeats))


def pad_candidates(in_channels: int) -> list[int]:
    """No padding, and the zero channels that round the count up to a multiple of 2 and of 4."""
    return sorted({0, -in_channels % 2, -in_channels % 4})


def measure_input_pad(in_channels: int, dtype: torch.dtype | None, repeats: int = 3, batch: int = 16) -> dict:
    """Seconds per inference batch of the paper's net with each candidate padding; the fastest, with a margin."""
    model, x = _timing_net(in_channels, batch, training=False)

    def padded_step(pad: int) -> Callable[[], None]:
        return lambda: _step(model.pad_input(pad), x, dtype, "inference")

    return _fastest_pad(_best_seconds({pad: padded_step(pad) for pad in pad_candidates(in_channels)}, repeats))


def _fastest_pad(seconds: dict[int, float]) -> dict:
    """The padding to use: the fastest, if it saves at least 1 − INPUT_PAD_MARGIN of no padding's time."""
    fastest = min(seconds, key=seconds.get)
    pad = fastest if seconds[fastest] < INPUT_PAD_MARGIN * seconds[0] else 0
    return {"pad": pad, "seconds": {str(k): round(v, 5) for k, v in seconds.items()},
            "measured": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measure(use: str, repeats: int = 3) -> dict:
    """Seconds per step of the paper's net (3 × 35³ input) in fp32 and bf16; the faster, with a margin for bf16."""
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, got {use!r}")
    model, x = _timing_net(3, 32 if use == "training" else 8, training=use == "training")

    def step_in(name: str) -> Callable[[], None]:
        return lambda: _step(model, x, autocast_dtype(torch.device("cpu"), name), use)

    seconds = _best_seconds({name: step_in(name) for name in ("fp32", "bf16")}, repeats)
    choice = "bf16" if seconds["bf16"] < BF16_MARGIN * seconds["fp32"] else "fp32"
    return {"choice": choice, "fp32_s": round(seconds["fp32"], 5), "bf16_s": round(seconds["bf16"], 5),
            "measured": time.strftime("%Y-%m-%d %H:%M:%S")}


def _timing_net(channels: int, batch: int, training: bool) -> tuple[LesionNet, torch.Tensor]:
    """A seeded paper net in its fast layout and a batch of 35³ patches, without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LesionNet(channels, 2, 35).channels_last().train(training)
        return model, torch.randn(batch, channels, 35, 35, 35)


def _best_seconds(runs: dict, repeats: int) -> dict:
    """Each run's fastest of `repeats` timed calls, interleaved so that a busy moment hurts all; round 0 warms up."""
    times: dict = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: min(kept) for name, kept in times.items()}


def _step(model: LesionNet, x: torch.Tensor, dtype: torch.dtype | None, use: str) -> None:
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        if use == "inference":
            with torch.no_grad():
                model(x)
            return
        logits = model(x)
    logits.float().sum().backward()
    model.zero_grad(set_to_none=True)
