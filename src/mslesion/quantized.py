"""int8 inference of the paper's net (`--precision int8`, an explicit choice for predict): pure computation.

Why: a CPU inference pass of this net is bounded by block 1, whose 64×33³ conv output per patch is written by the
convolution and read again by the pool. In int8 that tensor has half the bytes of bf16, and the integer kernels
of oneDNN (AMX-INT8, AVX512-VNNI) do twice the multiply-adds per cycle of bf16.

How: post-training static quantisation, the standard recipe (Jacob et al. 2018; PyTorch's eager-mode
quantisation). Each block's batch norm is folded into its convolution (w' = w·γ/σ, b' = (b − μ)·γ/σ + β), so a
block is conv → ReLU → 2/2 max-pool, which quantised kernels run exactly in that order: the quantised
ReLU-convolution writes uint8 codes, the pool selects among them. Weights are int8 per output channel; the input
and each block's output are uint8 over the range the training patches reached (`activation_ranges`, stored in
model.pt by training). The classifier (a few thousand multiply-adds per patch) stays fp32.

Unlike bf16 this changes predictions by more than rounding, so `auto` never picks it; the README reports the
measured change in probabilities and calls.

PyTorch 2.13 marks its quantised tensors deprecated (to be removed in a later release; pytorch#184982) in favour of
torchao's compiled flows, which need a C++ toolchain at run time. mslesion pins torch exactly, so these kernels
stay; the warning is silenced here (it would print on every int8 prediction), and tests/test_quantized.py fails
first if an upgrade removes them.
"""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager

import torch
from torch import nn
from torch.ao.nn.intrinsic.quantized import ConvReLU3d

from mslesion.fast_layers import folded_batch_norm, padded_weight, pooled_input_region
from mslesion.model import LesionNet
from mslesion.transforms import apply_symmetry, per_sample_gather, symmetry_index_maps

UINT8_LEVELS = 255
INT8_WEIGHT_LEVELS = 127
WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # C' channel bytes read as one integer


def preferred_engine() -> str:
    """oneDNN's int8 kernels where this torch has them (on a CPU with AMX its block-1 convolution ran 1.8× faster
    than the default x86 engine's), else the default."""
    engines = torch.backends.quantized.supported_engines
    return "onednn" if "onednn" in engines else torch.backends.quantized.engine


@contextmanager
def quantized_engine(engine: str):
    """Run quantised kernels with `engine`, then restore the process's setting (and without the deprecation
    warning of the module docstring)."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated",
                                    category=UserWarning)
            yield
    finally:
        torch.backends.quantized.engine = before


@functools.cache
def int8_available() -> bool:
    """Whether this PyTorch runs a quantised 3D ReLU-convolution and max-pool (x86 builds do; some ARM builds'
    engines have no 3D kernels): one tiny pass, once per process."""
    try:
        with quantized_engine(preferred_engine()):
            layer = quantized_conv_relu(torch.ones(2, 1, 3, 3, 3), torch.zeros(2), 0, (0.0, 1.0))
            x = torch.quantize_per_tensor(torch.ones(1, 1, 4, 4, 4), 0.1, 0, torch.quint8)
            torch.nn.functional.max_pool3d(layer(x), 2, 2)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def uint8_params(low: float, high: float) -> tuple[float, int]:
    """Scale and zero point of uint8 codes covering [low, high] (widened to include 0, so that zero padding and
    ReLU's zeros are exact)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max(high - low, 1e-8) / UINT8_LEVELS
    zero_point = int(round(-low / scale))
    return scale, min(max(zero_point, 0), UINT8_LEVELS)


def quantized_conv_relu(weight: torch.Tensor, bias: torch.Tensor, padding: int, out_range: tuple[float, float],
                        ) -> ConvReLU3d:
    """A quantised conv → ReLU: int8 weights per output channel (symmetric), uint8 output over out_range."""
    out_channels, in_channels = weight.shape[:2]
    layer = ConvReLU3d(in_channels, out_channels, kernel_size=3, padding=padding)
    weight_scale = weight.abs().amax(dim=(1, 2, 3, 4)).clamp_min(1e-12) / INT8_WEIGHT_LEVELS
    q_weight = torch.quantize_per_channel(weight, weight_scale.double(), torch.zeros(out_channels, dtype=torch.long),
                                          0, torch.qint8)
    layer.set_weight_bias(q_weight, bias)
    layer.scale, layer.zero_point = uint8_params(*out_range)
    return layer


class Int8LesionNet(nn.Module):
    """A trained LesionNet (arch 'paper' or 'compact') quantised for CPU inference: the same input (raw patches,
    normalised inside) and output (logits); values differ from fp32 by quantisation (see the module docstring).

    activation_ranges: [(low, high)] of the normalised input and of each block's output over training patches
    (ActivationRanges). input_pad: zero input channels appended (oneDNN's kernel choice, as LesionNet.pad_input)."""

    def __init__(self, model: LesionNet, activation_ranges: list[tuple[float, float]], input_pad: int = 0,
                 engine: str | None = None) -> None:
        super().__init__()
        if len(activation_ranges) != len(model.features) + 1:
            raise ValueError(f"need {len(model.features) + 1} activation ranges (input and each block), "
                             f"got {len(activation_ranges)}")
        self.engine = engine or preferred_engine()
        self.input_scale = model.input_scale.detach().float()
        self.shift = -model.mean_image.detach().float() * self.input_scale  # (x − mean)·scale = x·scale + shift
        self.n_classes, self.input_pad, self.global_pool = model.n_classes, input_pad, model.global_pool
        self.input_qparams = uint8_params(*activation_ranges[0])
        self.crop_convs = [block[0] for block in model.features]  # pooled_input_region reads kernel and padding
        layers = []
        with quantized_engine(self.engine):
            for conv, bn, out_range in zip(self.crop_convs, (block[1] for block in model.features),
                                           activation_ranges[1:], strict=True):
                weight, bias = folded_batch_norm(conv, bn)
                if not layers:  # the first convolution meets the zero input channels
                    weight = padded_weight(weight, weight.shape[1] + input_pad)
                layers.append(quantized_conv_relu(weight.detach().float(), bias.detach().float(),
                                                  int(conv.padding[0]), out_range))
        self.blocks = nn.ModuleList(layers)
        self.classifier = model.classifier
        self._region_maps: dict[int, tuple[int, torch.Tensor]] = {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_codes(self.read_region(self.encode(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """The uint8 codes of the normalised patches, (x − mean image)·scale, channels last and followed by the
        `input_pad` zero channels (code = zero point): [N, D, H, W, C + input_pad], whole patches.

        Test-time augmentation can encode each lesion once and gather its codes per symmetry (gather_codes;
        valid where commutes_with): an eighth of the bytes of an fp32 gather, one normalisation per lesion."""
        scale, zero_point = self.input_qparams
        channels = x.shape[1]
        codes = torch.empty((x.shape[0], *x.shape[2:], channels + self.input_pad), dtype=torch.uint8)
        codes[..., channels:] = zero_point
        with quantized_engine(self.engine):
            for start in range(0, len(x), chunk):
                z = torch.addcmul(self.shift, x[start:start + chunk].float(), self.input_scale)
                codes[start:start + chunk, ..., :channels] = torch.quantize_per_tensor(
                    z, scale, zero_point, torch.quint8).int_repr().permute(0, 2, 3, 4, 1)
        return codes

    def region_size(self, size: int) -> int:
        """Edge of the part of a size³ input that the first block's pool reads (fast_layers.pooled_input_region)."""
        probe = torch.empty((1, 1, size, size, size), device="meta")
        return pooled_input_region(probe, self.crop_convs[0]).shape[-1]

    def read_region(self, codes: torch.Tensor) -> torch.Tensor:
        """The codes of that region, contiguous."""
        s = self.region_size(codes.shape[1])
        return codes[:, :s, :s, :s].contiguous()

    def gather_codes(self, codes: torch.Tensor, idx: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
        """Region codes of lesion idx[i] in cube symmetry ks[i] ([B, s, s, s, C']): one index_select per pair,
        over voxels whose C' channel bytes are read as one integer where C' is 1, 2, 4 or 8 (a byte-wise
        gather ran slower than the fp32 one it replaced)."""
        n, size, channels = codes.shape[0], codes.shape[1], codes.shape[-1]
        s, maps = self.region_maps(size)
        word = WORDS.get(channels)
        flat = codes.view(n, size**3, channels)
        if word is not None:
            flat = flat.view(word).view(n, size**3, 1)
        # transforms' per-sample gather selects along the last axis: [N, 1 or C', V] → [B, 1 or C', s³]
        gathered = per_sample_gather(flat.transpose(1, 2), maps, idx, ks)
        out = gathered.view(len(idx), s**3, 1) if word is not None else gathered.transpose(1, 2).contiguous()
        return out.view(torch.uint8).view(len(idx), s, s, s, channels)

    def region_maps(self, size: int) -> tuple[int, torch.Tensor]:
        """The region's edge and, per symmetry, the source voxel of each region voxel [48, s³] (cached)."""
        if size not in self._region_maps:
            s, full = self.region_size(size), symmetry_index_maps(size)
            self._region_maps[size] = s, full.view(-1, size, size, size)[:, :s, :s, :s].reshape(len(full), -1)
        return self._region_maps[size]

    @torch.no_grad()
    def forward_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits of region codes [B, s, s, s, C'] (read_region or gather_codes): the quantised blocks."""
        scale, zero_point = self.input_qparams
        with quantized_engine(self.engine):
            q = torch._make_per_tensor_quantized_tensor(codes.permute(0, 4, 1, 2, 3), scale, zero_point)
            for i, (conv, layer) in enumerate(zip(self.crop_convs, self.blocks, strict=True)):
                if i:  # (the first block's input is cropped by read_region and gather_codes)
                    q = pooled_input_region(q, conv).contiguous(memory_format=torch.channels_last_3d)
                q = torch.nn.functional.max_pool3d(layer(q), 2, 2)
            last = q.dequantize()
        return self.classifier(last.mean(dim=(2, 3, 4)) if self.global_pool else torch.flatten(last, 1))

    def commutes_with(self, symmetries: torch.Tensor) -> bool:
        """Whether normalising commutes with these cube symmetries, so that encode-then-permute equals
        permute-then-encode: true when the mean image is invariant under them, as training makes it for the
        symmetry group it trained with (train.input_normalisation averages it over that group)."""
        tolerance = 1e-5 * float(self.shift.abs().max()) + 1e-12
        return all(torch.allclose(apply_symmetry(self.shift, int(k)), self.shift, rtol=0, atol=tolerance)
                   for k in torch.unique(symmetries))


class ActivationRanges:
    """Running (min, max) of the normalised input and of each block's output (fp32, evaluation mode): the ranges
    Int8LesionNet's uint8 codes cover. A block's pooled output has the same extremes as its ReLU'd convolution
    output (a max-pool only selects), so the pooled outputs suffice."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, model: LesionNet, x: torch.Tensor, blocks: list[torch.Tensor]) -> None:
        """Take in a batch x of raw patches and its block outputs (model.block_outputs(x), which the caller has)."""
        tensors = [model.normalise(x), *blocks]
        lows = torch.stack([t.amin().float().cpu() for t in tensors])
        highs = torch.stack([t.amax().float().cpu() for t in tensors])
        self.low = lows if self.low is None else torch.minimum(self.low, lows)
        self.high = highs if self.high is None else torch.maximum(self.high, highs)

    def ranges(self) -> list[tuple[float, float]]:
        if self.low is None or self.high is None:
            raise ValueError("activation ranges need at least one batch of patches")
        return [(float(a), float(b)) for a, b in zip(self.low, self.high, strict=True)]


@torch.no_grad()
def activation_ranges(model: LesionNet, batches) -> list[tuple[float, float]]:
    """ActivationRanges over batches of raw patches."""
    model.eval()
    tracker = ActivationRanges()
    for batch in batches:
        x = batch.float()
        tracker.add(model, x, model.block_outputs(x))
    return tracker.ranges()
