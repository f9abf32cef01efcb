"""The process's runtime: which device, which precision, how many threads, and the allocator and cuDNN settings
the speed benchmarks justify (README, "Speed"). Every stage asks here instead of deciding for itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

from mslesion.errors import InputError


def parse_device(text: str) -> torch.device:
    """cpu, cuda or cuda:N, checked against what this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {text} but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {text} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def set_threads(threads: int) -> None:
    """CPU threads for torch (0 = leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision: bf16, or None for fp32 (`auto` is resolved by
    `mslesion.precision`, which measures what is faster here)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"resolve precision {precision!r} first (mslesion.precision.resolve)")
    return torch.bfloat16 if precision == "bf16" else None


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def tune_for(device: torch.device) -> None:
    """Process-wide settings for fast training and inference on `device`."""
    if device.type == "cpu":
        keep_freed_memory()  # large activations: reuse freed heap memory instead of fresh zero-filled pages
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest 3D conv kernels


def keep_freed_memory() -> bool:
    """Let glibc reuse freed memory for large tensors instead of returning it to the OS (Linux only).

    By default every tensor above 32 MB is a fresh mmap whose pages the kernel zero-fills on first touch;
    with this net's 33³×64-map activations that page-faulting costs as much as the arithmetic. The setting is
    process-wide and only changes how memory is recycled (peak use is unchanged). Returns True if applied.
    """
    return _mallopt(mmap_max=0, trim_threshold=2**31 - 1)


def restore_default_memory() -> bool:
    """glibc's default behaviour again (mmap for large blocks, trimming freed memory); for benchmarks."""
    return _mallopt(mmap_max=65536, trim_threshold=128 * 1024)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _mallopt(mmap_max: int, trim_threshold: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
