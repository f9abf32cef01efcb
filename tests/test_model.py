"""The paper's net: parameter count, shapes, and the batch-norm population pass."""

from __future__ import annotations

import pytest
import torch

from mslesion.model import LesionNet, count_trainable, feature_size, set_population_batchnorm


def test_paper_parameter_count():
    # 3·27·64+64 + 2·64 + 64·27·64+64 + 2·64 + 64·27·128+128 + 2·128 + 128·2³·2+2
    assert count_trainable(LesionNet(3, 2, 35)) == 339_778


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_parameter_count_by_channel_count(channels):
    assert count_trainable(LesionNet(channels, 2, 35)) == 339_778 - (3 - channels) * 27 * 64


def test_feature_size_follows_valid_conv_and_pooling():
    assert feature_size(35) == 2
    assert feature_size(28) == 1
    with pytest.raises(ValueError):
        feature_size(12)


@pytest.mark.parametrize(("patch", "padding", "expected"), [(35, 1, 2), (28, 1, 1), (23, 1, 1), (16, 1, 1)])
def test_feature_size_with_same_padding_halves_per_block(patch, padding, expected):
    assert feature_size(patch, 4, padding) == expected


def test_compact_architecture_reads_globally_pooled_features():
    model = LesionNet(3, 6, 35, arch="compact").eval()
    assert [block[0].out_channels for block in model.features] == [32, 64, 128, 256]
    assert all(block[0].padding == (1, 1, 1) for block in model.features)
    assert model.classifier.in_features == 256  # one average per map, whatever the patch size
    x = torch.randn(2, 3, 35, 35, 35)
    with torch.no_grad():
        assert model(x).shape == (2, 6)
        assert model.embed(x).shape == (2, 256)
    assert LesionNet(1, 2, 28, arch="compact").classifier.in_features == 256  # MedMNIST's 28³: the same head


def test_compact_costs_about_what_the_paper_net_costs():
    """Multiply-adds of the convolutions per 3-channel 35³ patch, counted from the layers' shapes."""
    def conv_macs(model: LesionNet) -> int:
        total, size = 0, 35
        for block in model.features:
            conv = block[0]
            size = size + 2 * conv.padding[0] - 2
            total += conv.in_channels * conv.out_channels * 27 * size**3
            size //= 2
        return total
    paper, compact = conv_macs(LesionNet(3, 2, 35)), conv_macs(LesionNet(3, 2, 35, arch="compact"))
    assert 0.9 < compact / paper < 1.2


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        LesionNet(3, 2, 35, arch="resnet")


def test_output_shape_and_mean_image_is_a_buffer():
    model = LesionNet(2, 3, 35).eval()
    assert model(torch.randn(4, 2, 35, 35, 35)).shape == (4, 3)
    assert "mean_image" in dict(model.named_buffers())
    assert "mean_image" not in dict(model.named_parameters())


def test_zero_centring_subtracts_the_mean_image():
    model = LesionNet(1, 2, 23).eval()
    x = torch.randn(3, 1, 23, 23, 23)
    reference = model(x)
    model.mean_image.fill_(5.0)
    assert torch.allclose(model(x + 5.0), reference, atol=1e-4)


def test_population_batchnorm_matches_whole_set_statistics():
    torch.manual_seed(0)
    model = LesionNet(1, 2, 23)
    data = torch.randn(32, 1, 23, 23, 23) * 0.02 + 0.03  # ppm-scale input
    set_population_batchnorm(model, data.split(8))
    first_conv, first_bn = model.features[0][0], model.features[0][1]
    with torch.no_grad():
        activations = first_conv(data - model.mean_image)
    assert torch.allclose(first_bn.running_mean, activations.mean(dim=(0, 2, 3, 4)), atol=1e-5)
    # the mean of per-batch (unbiased) variances: close to the population variance
    assert torch.allclose(first_bn.running_var, activations.var(dim=(0, 2, 3, 4)), rtol=0.1)
    assert first_bn.momentum == 0.1  # restored


def test_population_batchnorm_in_bf16_stays_within_rounding_of_fp32():
    """train.finish runs the pass in the training precision: the fp32-accumulated statistics of bf16 conv outputs
    differ from fp32's by rounding only, and stay fp32 tensors."""
    torch.manual_seed(0)
    fp32 = LesionNet(2, 2, 23)
    bf16 = LesionNet(2, 2, 23)
    bf16.load_state_dict(fp32.state_dict())
    data = torch.randn(24, 2, 23, 23, 23)
    set_population_batchnorm(fp32, data.split(8))
    set_population_batchnorm(bf16, data.split(8), autocast_dtype=torch.bfloat16)
    assert not torch.is_autocast_enabled("cpu")
    for a, b in zip(bf16.features, fp32.features, strict=True):
        assert a[1].running_mean.dtype == a[1].running_var.dtype == torch.float32
        scale = b[1].running_var.sqrt()
        assert ((a[1].running_mean - b[1].running_mean).abs() / scale).max() < 0.02
        assert ((a[1].running_var - b[1].running_var).abs() / b[1].running_var).max() < 0.03
    assert not torch.equal(bf16.features[1][1].running_var, fp32.features[1][1].running_var)  # bf16 really ran
