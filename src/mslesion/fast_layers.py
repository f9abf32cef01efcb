"""Fused batch-norm → ReLU → 2/2 max-pool for the paper's conv blocks.

Why: in a naive training step of this net the convolutions are a minority of the time. The first block's
conv output (64 maps of 33³ per sample) is read and written a dozen times by batch norm, ReLU, max-pool and
their backward passes, and max-pool's backward zero-fills a full-size gradient before scattering into it.

The fused block does the same mathematics with far fewer passes over that tensor:

* ReLU commutes with max-pool, and per channel batch norm is y = a·x + b with a = γ/σ. So
  maxpool(relu(bn(x))) = relu(a·maxpool(x) + b) where a > 0, and relu(a·minpool(x) + b) where a < 0.
  The forward reads x twice (batch statistics, pooling), writes nothing full-size, and works on the 8×
  smaller pooled tensor after.
* The backward of batch norm with a sparse upstream gradient G (non-zero only at the pooled positions) is
  dx = a·G − a·mean(G) − a·x̂·mean(G·x̂): a per-channel affine function of x plus a scatter of a·g.
  It is written in one pass (aten's batch-norm kernel in inference form) plus one scatter; both means come
  from the pooled tensor alone.

Results equal the plain nn.BatchNorm3d → nn.ReLU → nn.MaxPool3d chain up to rounding (see
tests/test_speed_paths.py); running statistics follow nn.BatchNorm3d's rules (momentum, or cumulative when
momentum is None), so model files and set_population_batchnorm are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1, 1)


def _storage_offsets(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Offsets into x's dense storage (any layout) of max_pool3d's flat per-map spatial indices, in the
    storage order of `indices` (one pass; see _flat)."""
    b = torch.arange(indices.shape[0], device=x.device).view(-1, 1, 1, 1, 1) * x.stride(0)
    c = torch.arange(indices.shape[1], device=x.device).view(1, -1, 1, 1, 1) * x.stride(1)
    offsets = torch.empty_like(indices)
    return _flat(torch.add(b + c, indices, alpha=x.stride(4), out=offsets))


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous() \
        else torch.contiguous_format


def _flat(x: torch.Tensor) -> torch.Tensor:
    """The dense storage of x (contiguous or channels-last) as a 1-D view."""
    return x.as_strided((x.numel(),), (1,))


def _max_pool(x: torch.Tensor, return_indices: bool = False):
    """2/2 max-pool in x's own dtype. Under CPU autocast max_pool3d is on PyTorch's fp32 list: a bf16 conv
    output (589 MB for 128 patches) would be cast to a fresh fp32 copy twice its size, pooled, and cast back by
    the next conv; measured, that made bf16 inference 2× slower than fp32 on an AVX512-BF16 CPU (2.2 GB of new
    pages per forward). A max selects values, so pooling in bf16 gives exactly the bf16 values of the fp32 pool."""
    with torch.autocast(x.device.type, enabled=False):
        return F.max_pool3d(x, 2, 2, return_indices=return_indices)


def _extreme_pool(x: torch.Tensor, negative: torch.Tensor, sync_free: bool | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """2/2 max-pool of x with flat spatial indices; min-pool instead on the channels flagged negative.

    On the CPU the (rare, γ < 0) negative channels are found and pooled again on their own. On a GPU that
    lookup would make the host wait for the device three times a step, so both pools run and a select
    picks per channel: more bandwidth, no synchronisation.
    """
    sync_free = x.device.type != "cpu" if sync_free is None else sync_free
    values, indices = _max_pool(x, return_indices=True)
    if sync_free:
        low, low_indices = _max_pool(-x, return_indices=True)
        flip = _per_channel(negative)
        return torch.where(flip, -low, values), torch.where(flip, low_indices, indices)
    channels = negative.nonzero().squeeze(1)
    if len(channels):
        low, low_indices = _max_pool(-x.index_select(1, channels), return_indices=True)
        values, indices = values.clone(), indices.clone()
        values[:, channels], indices[:, channels] = -low, low_indices
    return values, indices


class _BNReLUPool(torch.autograd.Function):
    """relu(bn(x + conv_bias)) max-pooled 2/2 with batch statistics (training mode), x = the conv output
    without its bias. Returns (out, mean of x + conv_bias, biased var) per channel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, conv_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float):
        # aten's batch-norm statistics kernel: fp32 accumulation, one pass, fast in every layout and dtype
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        mean, var = mean.float(), var.float()
        invstd = torch.rsqrt(var + eps)
        scale = weight.float() * invstd
        # the pooled voxel of relu(a·x + b) is x's max where a > 0 and its min where a < 0
        pooled, indices = _extreme_pool(x, scale < 0)
        # the affine map of the pooled voxels by aten's batch-norm kernel: fp32 math, one pass, x's dtype
        # (out of place: an in-place relu_ is ~3× slower on a bf16 channels-last tensor)
        out = F.relu(torch.batch_norm(pooled, weight, bias, mean, var, False, 0.0, eps, False))
        ctx.save_for_backward(x, _storage_offsets(x, indices), pooled, out, mean, invstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return out, mean + conv_bias.float(), var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, offsets, pooled, out, mean, invstd, weight = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        layout = _layout(pooled)
        # ReLU's derivative by its own kernel (a `where` on the mask is ~4× slower on bf16 channels-last)
        g = torch.ops.aten.threshold_backward(grad_out, out, 0).contiguous(memory_format=layout)
        # Σg and Σg·x̂ over the pooled positions (every other position has zero upstream gradient): aten's
        # batch-norm backward reduction, one pass over g and the pooled values, fp32 accumulation in any dtype
        _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            g, pooled, weight, None, None, mean, invstd, True, 0.0, [False, True, True])
        scale = weight.float() * invstd
        # dx = a·G − a·Σg/N − a·x̂·Σ(g·x̂)/N = (x − μ)·c1 + c0 + scatter(a·g), with a = γ/σ. Every per-channel
        # affine map below is aten's batch-norm kernel in inference form (var 1, eps 0): one pass, fp32 math, x's
        # dtype out (a mixed-dtype `addcmul` with an fp32 per-channel factor is ~7× slower on bf16). The pooled
        # positions are then overwritten with their full value, the dense map plus a·g.
        c1 = -scale * invstd * grad_weight.float() / count
        c0 = -scale * grad_bias.float() / count
        ones, zeros = torch.ones_like(mean), torch.zeros_like(mean)
        grad_x = torch.batch_norm(x, c1, c0, mean, ones, False, 0.0, 0.0, False)
        at_pooled = torch.batch_norm(pooled, c1, c0, mean, ones, False, 0.0, 0.0, False).add_(
            torch.batch_norm(g, scale, zeros, zeros, ones, False, 0.0, 0.0, False))
        # the offsets are distinct (2/2 pool windows do not overlap): a plain copy, no accumulation
        _flat(grad_x).index_copy_(0, offsets, _flat(at_pooled.contiguous(memory_format=layout)))
        # A bias before training-mode batch norm cancels exactly: its true gradient is zero.
        return grad_x, torch.zeros_like(weight), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None


def batch_norm_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """γ/σ per channel of an evaluation-mode batch norm: y = scale·(x − running mean) + β."""
    return bn.weight * torch.rsqrt(bn.running_var + bn.eps)


def folded_batch_norm(conv: nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of conv followed by the evaluation-mode bn, as one convolution: w·γ/σ, (b − μ)·γ/σ + β
    (the fused inference path and int8 inference, mslesion.quantized)."""
    scale = batch_norm_scale(bn)
    weight = conv.weight * scale.view((-1,) + (1,) * (conv.weight.ndim - 1))
    bias = ((conv.bias if conv.bias is not None else 0) - bn.running_mean) * scale + bn.bias
    return weight, bias


def padded_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The conv weight with zero input channels appended up to `in_channels` (LesionNet.pad_input): the zero
    channels of the input meet zero weights, so the output is the same up to rounding."""
    extra = in_channels - weight.shape[1]
    return F.pad(weight, (0, 0, 0, 0, 0, 0, 0, extra)) if extra else weight


def conv_bn_relu_pool(x: torch.Tensor, conv: nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """maxpool3d(relu(bn(conv(x))), 2, 2) the fused way; updates bn's running statistics as bn would.

    In training mode the conv bias is left out of the convolution: batch norm subtracts the batch mean, so
    the bias cancels exactly (its gradient is exactly zero, not rounding noise that Adam would amplify into
    a random walk of the bias). It is added to the running mean, so evaluation mode is unchanged.
    """
    if bn.training:
        y = conv._conv_forward(x, padded_weight(conv.weight, x.shape[1]), None)
        out, mean, var = _BNReLUPool.apply(y, conv.bias, bn.weight, bn.bias, bn.eps)
        _update_running_stats(bn, mean, var, y.numel() // y.shape[1])
        return out
    # inference: fold batch norm into the conv where its scale is positive (then max-pool and ReLU commute
    # with it), so the full-size conv output is read once, by the pool
    x = pooled_input_region(x, conv)
    if x.device.type == "cpu" and bool((batch_norm_scale(bn) > 0).all()):  # (the check would stall a GPU)
        weight, bias = folded_batch_norm(conv, bn)
        return F.relu(_max_pool(conv._conv_forward(x, padded_weight(weight, x.shape[1]), bias)))
    return _max_pool(F.relu(bn(conv._conv_forward(x, padded_weight(conv.weight, x.shape[1]), conv.bias))))


def pooled_input_region(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """The part of x whose conv output the 2/2 pool reads. The pool floors: of an odd-sized conv output (33³ in
    the paper's first block, 5³ in its third) the last plane of each axis is never read. Without training-mode
    batch statistics (which average over every output voxel) nothing else depends on it, so the conv need not
    compute it: 8.8% of the first conv's work and half of the third's. Same values, a view of x."""
    if any(conv.padding):  # a padded conv's last output plane reads the padding: cropping x would change it
        return x
    # valid convolution of stride 1 (the paper's blocks): output = input − (kernel − 1) per axis
    keep = [size - (size - kernel + 1) % 2 for size, kernel in zip(x.shape[2:], conv.kernel_size, strict=True)]
    return x[:, :, :keep[0], :keep[1], :keep[2]]


@torch.no_grad()
def _update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                          count: int) -> None:
    """nn.BatchNorm's rule: exponential average (momentum) or cumulative average (momentum None)."""
    if not bn.track_running_stats:
        return
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    unbiased = var * count / max(count - 1, 1)
    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
