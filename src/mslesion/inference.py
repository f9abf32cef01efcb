"""Batched inference shared by evaluate, predict and report: probabilities, test-time augmentation and saliency."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from mslesion.config import INFERENCE_BATCH_SIZE
from mslesion.data.patches import PatchReader
from mslesion.model import LesionNet
from mslesion.precision import inference_input_pad, resolve
from mslesion.quantized import Int8LesionNet
from mslesion.runtime import autocast_dtype, keep_freed_memory
from mslesion.transforms import N_SYMMETRIES, gather_augmented


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, images: torch.Tensor | np.ndarray | PatchReader, batch_size: int = INFERENCE_BATCH_SIZE,
    device: str | torch.device = "cpu", symmetry: int = 0, precision: str = "fp32",
) -> torch.Tensor:
    """Logits [N, n_classes] (fp32, on CPU) for images [N, C, D, H, W], optionally in cube symmetry k.

    `images` may be a PatchReader (a file larger than memory): each batch is then read as it is needed."""
    images = as_patch_source(images)
    ks = torch.full((len(images),), symmetry, dtype=torch.long)
    return _logits_of_pairs(model, images, torch.arange(len(images)), ks, batch_size, device, precision)


def as_patch_source(images: torch.Tensor | np.ndarray | PatchReader) -> torch.Tensor | PatchReader:
    return images if isinstance(images, PatchReader) else torch.as_tensor(images)


def _batch(images: torch.Tensor | PatchReader, idx: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """images[idx[i]] in symmetry ks[i]; a reader's rows are read first (the same values as in memory)."""
    if isinstance(images, PatchReader):
        images, idx = torch.from_numpy(images.read(idx.numpy())), torch.arange(len(idx))
    return images[idx] if bool((ks == 0).all()) else gather_augmented(images, idx, ks)


@torch.no_grad()
def _logits_of_pairs(model, images, idx, ks, batch_size, device, precision,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Logits of images[idx[i]] in symmetry ks[i], batched; the model runs in its fast layout. progress(n) is called
    after each batch of n passes."""
    device = torch.device(device)
    model.eval().to(device)
    if hasattr(model, "channels_last"):
        model.channels_last()  # oneDNN/cuDNN's fast 3D conv layout; values are unchanged
    if device.type == "cpu":
        keep_freed_memory()
    dtype = autocast_dtype(device, resolve(device, precision, "inference"))
    gather, forward = _batch, model
    if isinstance(model, Int8LesionNet) and isinstance(images, torch.Tensor) and model.commutes_with(ks):
        # each lesion normalised and quantised once, its uint8 codes gathered per symmetry (Int8LesionNet.encode)
        images, gather, forward = model.encode(images), model.gather_codes, model.forward_codes
    out = []
    with _padded_input(model, device, dtype):
        for start in range(0, len(idx), batch_size):
            i, k = idx[start:start + batch_size], ks[start:start + batch_size]
            batch = gather(images, i, k)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out.append(forward(batch.to(device, non_blocking=True)).float().cpu())
            if progress is not None:
                progress(len(i))
    n_classes = getattr(model, "n_classes", 2)
    return torch.cat(out) if out else torch.empty(0, n_classes)


@contextmanager
def _padded_input(model, device: torch.device, dtype: torch.dtype | None):
    """The input padding this machine runs fastest (precision.inference_input_pad) for the duration of the
    passes, then the model's own setting again (a validation pass must not change how training convolves)."""
    if not isinstance(model, LesionNet) or not model.can_pad_input():
        yield
        return
    before = model.input_pad
    model.pad_input(inference_input_pad(device, dtype, model.in_channels))
    try:
        yield
    finally:
        model.pad_input(before)


def predict_probabilities(
    model: torch.nn.Module, images: torch.Tensor | np.ndarray | PatchReader, batch_size: int = INFERENCE_BATCH_SIZE,
    device: str | torch.device = "cpu", tta: bool = False, temperature: float = 1.0, precision: str = "fp32",
    progress: Callable[[int], None] | None = None, symmetries: int = N_SYMMETRIES,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities [N, K]; with tta, the mean over symmetries 0..symmetries−1 (the 48 of the cube, or the
    8 axis flips of a model trained with --augment flips: transforms.AUGMENTATION_GROUPS) and their spread (std).
    progress(n) is called after each batch of n forward passes (N passes in all, symmetries·N with tta)."""
    images = as_patch_source(images)
    if not tta:
        logits = _logits_of_pairs(model, images, torch.arange(len(images)), torch.zeros(len(images), dtype=torch.long),
                                  batch_size, device, precision, progress)
        return torch.softmax(logits / temperature, dim=1).numpy(), None
    if not 1 <= symmetries <= N_SYMMETRIES:
        raise ValueError(f"symmetries must be 1..{N_SYMMETRIES}, got {symmetries}")
    # all symmetries·N (symmetry, lesion) pairs in full batches, not one pass of N per symmetry: small subjects
    # fill batches too
    n = len(images)
    ks = torch.arange(symmetries).repeat_interleave(n)
    idx = torch.arange(n).repeat(symmetries)
    logits = _logits_of_pairs(model, images, idx, ks, batch_size, device, precision, progress)
    per_symmetry = torch.softmax(logits / temperature, dim=1).view(symmetries, n, -1)
    return per_symmetry.mean(0).numpy(), per_symmetry.std(0).numpy()


def input_saliency(model: torch.nn.Module, patch: np.ndarray) -> np.ndarray:
    """Vanilla gradient saliency (Simonyan et al., 2014): |∂ logit of the predicted class / ∂ input|, maximum
    over channels, [D, H, W]."""
    model.eval()
    x = torch.as_tensor(patch[None]).float().requires_grad_(True)
    logits = model(x)
    logits[0, int(logits.argmax())].backward()
    return x.grad[0].abs().amax(0).numpy()
