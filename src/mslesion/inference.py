"""Batched inference shared by evaluate, predict and report."""

from __future__ import annotations

import numpy as np
import torch

from mslesion.transforms import N_SYMMETRIES, apply_symmetry


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 where it is fast (CUDA; a CPU with native bf16), else None (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 256,
    device: str | torch.device = "cpu", symmetry: int = 0, precision: str = "fp32",
) -> torch.Tensor:
    """Logits [N, n_classes] (fp32, on CPU) for images [N, C, D, H, W], optionally in cube symmetry k."""
    device = torch.device(device)
    model.eval().to(device)
    images = torch.as_tensor(images)
    dtype = autocast_dtype(device, precision)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        if symmetry:
            batch = apply_symmetry(batch, symmetry).contiguous()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out.append(model(batch).float().cpu())
    n_classes = getattr(model, "n_classes", 2)
    return torch.cat(out) if out else torch.empty(0, n_classes)


def predict_probabilities(
    model: torch.nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 256,
    device: str | torch.device = "cpu", tta: bool = False, temperature: float = 1.0, precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities [N, K]; with tta, the mean over the 48 cube symmetries and their spread (std)."""
    if not tta:
        logits = predict_logits(model, images, batch_size, device, 0, precision)
        return torch.softmax(logits / temperature, dim=1).numpy(), None
    per_symmetry = torch.stack([
        torch.softmax(predict_logits(model, images, batch_size, device, k, precision) / temperature, dim=1)
        for k in range(N_SYMMETRIES)
    ])
    return per_symmetry.mean(0).numpy(), per_symmetry.std(0).numpy()
