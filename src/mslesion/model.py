"""The paper's network (Table 2). Pure computation: no file I/O here.

image input (zero-centred by the mean training image) → 3 × [Conv3d 3×3×3, stride 1, no padding
(MATLAB's default) → BatchNorm3d → ReLU → MaxPool3d 2/2] with 64, 64, 128 maps → fully connected → logits.
Softmax/cross-entropy live in the loss. With 3 channels and 35³ input: 339,778 trainable parameters.

`arch="compact"` (an option, not the paper's): the same block type with 'same' padding and four blocks of 32, 64,
128, 256 maps, then global average pooling into the classifier. Padding keeps the patch border in every block
(valid convolutions shrink 35 → 33 → … and lose what lies at the edge), and the average over positions makes
the classifier read *whether* a pattern occurs rather than *where* in a 2³ grid, with a fifth of the
classifier weights. Its multiply-adds per 3-channel 35³ patch (≈ 0.55 G) are close to the paper net's (0.52 G).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mslesion.fast_layers import conv_bn_relu_pool
from mslesion.paper import ARCHITECTURES, PATCH_SIZE


def feature_size(patch_size: int, n_blocks: int = 3, padding: int = 0) -> int:
    """Spatial size after n blocks of (3×3×3 conv, 2/2 max-pool): valid convolutions (padding 0, the paper's)
    35 → 33 → 16 → 14 → 7 → 5 → 2; 'same' ones (padding 1) 35 → 17 → 8 → 4 → 2."""
    size = patch_size
    for _ in range(n_blocks):
        size = (size - 2 + 2 * padding) // 2
    if size < 1:
        raise ValueError(f"patch size {patch_size} is too small for {n_blocks} conv/pool blocks")
    return size


class ConvBlock(nn.Sequential):
    """Conv3d → BatchNorm3d → ReLU → MaxPool3d 2/2. With fused=True (default) the last three run as one
    fused operation (fast_layers.conv_bn_relu_pool): same parameters, same results up to rounding, far fewer
    passes over the large conv output. fused=False is the plain reference chain."""

    def __init__(self, in_channels: int, out_channels: int, fused: bool = True, padding: int = 0) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=1, padding=padding),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=2, stride=2),
        )
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and min(x.shape[2:]) < 3 and torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 weight gradient of a padded 3×3×3 convolution of a 2³ input reads uninitialised
            # memory (torch 2.13: NaN once freed memory is reused; the compact net's last block at 22-23³
            # patches). So small a block is negligible work: it runs in fp32.
            with torch.autocast("cpu", enabled=False):
                return self._block(x.float())
        return self._block(x)

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return super().forward(x)
        return conv_bn_relu_pool(x, self[0], self[1])


class LesionNet(nn.Module):
    """The paper's 3D CNN (arch="paper") or its compact variant (module docstring), for any channel count, patch
    size and class count."""

    def __init__(
        self, in_channels: int = 3, n_classes: int = 2, patch_size: int = PATCH_SIZE, fused: bool = True,
        arch: str = "paper",
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        widths, padding, self.global_pool = ARCHITECTURES[arch]
        self.in_channels, self.n_classes, self.patch_size, self.arch = in_channels, n_classes, patch_size, arch
        self.input_pad = 0  # zero input channels appended before the first convolution (pad_input)
        # 'zerocenter' normalisation: the mean training image, stored with the model (not trained).
        self.register_buffer("mean_image", torch.zeros(in_channels, patch_size, patch_size, patch_size))
        # 'zscore' adds one scale per channel (1 / its standard deviation over the training set); all ones
        # is the paper's plain 'zerocenter'. See TrainConfig.input_norm for why it is the default.
        self.register_buffer("input_scale", torch.ones(in_channels, 1, 1, 1))
        blocks, previous = [], in_channels
        for width in widths:
            blocks.append(ConvBlock(previous, width, fused, padding))
            previous = width
        self.features = nn.Sequential(*blocks)
        positions = 1 if self.global_pool else feature_size(patch_size, len(widths), padding) ** 3
        self.classifier = nn.Linear(previous * positions, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features [N, F] that the classifier reads: the last block flattened (paper), or
        averaged over its positions (compact)."""
        last = self.features(self.normalise(x))
        return last.mean(dim=(2, 3, 4)) if self.global_pool else torch.flatten(last, 1)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every conv block, first to last (the out-of-distribution features, mslesion.ood)."""
        outputs, x = [], self.normalise(x)
        for block in self.features:
            x = block(x)
            outputs.append(x)
        return outputs

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The input centred by the mean training image and scaled per channel (the net's first step), followed
        by `input_pad` zero channels (see pad_input)."""
        pad = self.input_pad
        if self.is_channels_last():  # centre and change layout in one pass
            centred = torch.empty((x.shape[0], x.shape[1] + pad, *x.shape[2:]), device=x.device,
                                  dtype=torch.result_type(x, self.mean_image), memory_format=torch.channels_last_3d)
            torch.sub(x, self.mean_image, out=centred[:, :x.shape[1]]).mul_(self.input_scale)
            if pad:
                centred[:, x.shape[1]:].zero_()
            return centred
        centred = (x - self.mean_image) * self.input_scale
        return F.pad(centred, (0, 0, 0, 0, 0, 0, 0, pad)) if pad else centred

    def pad_input(self, zero_channels: int) -> LesionNet:
        """Feed the first convolution `zero_channels` extra all-zero input channels (its weights padded with zeros
        to match): the same values up to rounding, and on some CPUs a much faster kernel (oneDNN on AMX runs a
        3×3×3 convolution of 4 input channels ~2× faster than of 3; mslesion.precision measures it per machine).
        A speed setting like channels_last: the parameters and state_dict are unchanged; returns self."""
        if zero_channels and not self.can_pad_input():
            raise ValueError("input padding needs the fused conv blocks (the plain chain's Conv3d checks its channels)")
        self.input_pad = zero_channels
        return self

    def can_pad_input(self) -> bool:
        """Whether pad_input can feed this net zero channels: only the fused blocks pad the conv weight to match."""
        return all(block.fused for block in self.features)

    def channels_last(self, enabled: bool = True) -> LesionNet:
        """Conv weights and activations in channels-last 3D layout (oneDNN's fast path on CPU; cuDNN's on
        GPU). The mean image and the state_dict's values are unaffected; returns self."""
        self.features.to(memory_format=torch.channels_last_3d if enabled else torch.contiguous_format)
        self._channels_last = enabled  # a flag: with one input channel both layouts look 'contiguous'
        return self

    def is_channels_last(self) -> bool:
        return getattr(self, "_channels_last", False)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def set_population_batchnorm(model: nn.Module, batches, device: torch.device | str = "cpu",
                             autocast_dtype: torch.dtype | None = None) -> None:
    """Replace BN running averages by population statistics over the whole training set.

    MATLAB's trainNetwork finalises batch-norm layers this way after training. With few steps and inputs in
    ppm the exponential running averages stay near their initial values, and the evaluated net collapses
    to one class even when training accuracy is 100%. Cumulative averaging (momentum=None) over one
    no-grad pass gives the population mean and the mean per-batch variance.

    autocast_dtype: the precision the net was trained in (bf16 or None = fp32). The pass then sees the conv
    outputs training saw, at training's speed; the statistics themselves are accumulated in fp32 either way.
    """
    layers = batchnorm_layers(model)
    saved = [(layer.momentum, layer.training) for layer in layers]
    was_training = model.training
    model.train()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        for batch in batches:
            model(batch.to(device, non_blocking=True))
    for layer, (momentum, _) in zip(layers, saved, strict=True):
        layer.momentum = momentum
    model.train(was_training)
