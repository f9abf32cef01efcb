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
