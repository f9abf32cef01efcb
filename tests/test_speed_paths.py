"""Every fast path against the plain reference: fused blocks, channels-last, batched augmentation, bf16."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import toy_patches

from mslesion.config import EvaluateConfig, TrainConfig
from mslesion.data.patches import write_patches
from mslesion.evaluate import evaluate
from mslesion.model import LesionNet, count_trainable, set_population_batchnorm
from mslesion.runtime import keep_freed_memory
from mslesion.train import train
from mslesion.transforms import (
    apply_symmetries,
    batched_gather,
    gather_augmented,
    per_sample_gather,
    symmetry_index_maps,
)


def reference_and_fused(seed: int = 0, negative_gamma: bool = True, arch: str = "paper"
                        ) -> tuple[LesionNet, LesionNet]:
    torch.manual_seed(seed)
    reference = LesionNet(2, 2, 23, fused=False, arch=arch)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm3d):  # non-trivial affine parameters, some γ < 0
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
                if negative_gamma:
                    module.weight[:3] *= -1
        reference.mean_image.normal_(0, 0.1)
    fused = LesionNet(2, 2, 23, arch=arch)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 23, 23, 23, generator=generator), torch.randint(0, 2, (n,), generator=generator)


def step_gradients(model: LesionNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.train()
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# "compact": padded convolutions on odd sizes (23 → 11 → 5 → 2 → 1), where the pool drops a plane that the padding fed
@pytest.mark.parametrize("arch", ["paper", "compact"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_training_step_equals_reference(channels_last: bool, arch: str):
    reference, fused = reference_and_fused(arch=arch)
    if channels_last:
        fused.channels_last()
        assert fused.is_channels_last()
    x, y = batch()
    ref_logits, ref_grads = step_gradients(reference, x, y)
    logits, grads = step_gradients(fused, x, y)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for name, grad in ref_grads.items():
        if name.endswith("0.bias"):  # conv bias before batch norm: exactly zero in the fused path
            assert torch.count_nonzero(grads[name]) == 0
            assert grad.abs().max() < 1e-5 * ref_grads[name.replace("bias", "weight")].abs().max()
        else:
            assert relative_error(grads[name], grad) < 1e-4, name
    for ref_bn, bn in zip(reference.features, fused.features, strict=True):
        torch.testing.assert_close(bn[1].running_mean, ref_bn[1].running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn[1].running_var, ref_bn[1].running_var, rtol=1e-5, atol=1e-6)
        assert int(bn[1].num_batches_tracked) == int(ref_bn[1].num_batches_tracked) == 1


@pytest.mark.parametrize("arch", ["paper", "compact"])
@pytest.mark.parametrize("negative_gamma", [False, True])
def test_fused_inference_equals_reference(negative_gamma: bool, arch: str):
    reference, fused = reference_and_fused(negative_gamma=negative_gamma, arch=arch)
    x, _ = batch()
    for model in (reference, fused):  # give the running statistics realistic values
        set_population_batchnorm(model, [x[:3], x[3:]])
    reference.eval()
    fused.eval().channels_last()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-5)


def test_fused_and_reference_train_to_the_same_weights():
    reference, fused = reference_and_fused(negative_gamma=False)
    fused.channels_last()
    x, y = batch(4)
    for model in (reference, fused):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for (name, p), q in zip(fused.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-3, atol=1e-5, msg=name)


def test_parameter_count_and_state_dict_keys_unchanged():
    fused, reference = LesionNet(3, 2, 35), LesionNet(3, 2, 35, fused=False)
    assert count_trainable(fused) == 339_778
    assert list(fused.state_dict()) == list(reference.state_dict())
    loaded = LesionNet(3, 2, 35, fused=False)
    loaded.load_state_dict(fused.channels_last().state_dict())  # a channels-last model's file loads anywhere


def test_bf16_fused_gradients_are_no_worse_than_bf16_reference():
    reference, fused = reference_and_fused(negative_gamma=False)
    x, y = batch(4)
    x = x * 0.01  # ppm-scale inputs, where bf16 rounding matters most
    _, exact = step_gradients(copy.deepcopy(reference), x, y)
    errors = {}
    for name, model in (("reference", reference), ("fused", fused.channels_last())):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        errors[name] = max(relative_error(p.grad, exact[n]) for n, p in model.named_parameters()
                           if not n.endswith("0.bias"))
    assert errors["fused"] < max(1.5 * errors["reference"], 0.05)


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_and_per_sample_augmentation_equal_grouped_symmetries(channels: int):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(10, channels, 7, 7, 7, generator=generator)
    idx = torch.randint(0, 10, (40,), generator=generator)
    ks = torch.arange(40) % 48
    expected = apply_symmetries(images[idx], ks)
    assert torch.equal(gather_augmented(images, idx, ks), expected)
    flat, maps = images.reshape(10, channels, -1), symmetry_index_maps(7)
    assert torch.equal(batched_gather(flat, maps, idx, ks).view_as(expected), expected)  # the GPU path
    assert torch.equal(per_sample_gather(flat, maps, idx, ks).view_as(expected), expected)


def test_symmetry_index_maps_are_permutations():
    maps = symmetry_index_maps(5)
    assert maps.shape == (48, 125)
    assert all(sorted(row.tolist()) == list(range(125)) for row in maps)
    assert len({tuple(row.tolist()) for row in maps}) == 48


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_compact_step_on_the_smallest_patches_reads_no_stale_memory(fused: bool):
    """The compact net's last block sees 2³ at 22-23³ patches, where oneDNN's bf16 weight gradient of a padded
    conv read uninitialised memory: with freed memory reused (as training keeps it), NaN gradients. Freed
    memory is filled with NaN first, so a stale read cannot go unnoticed."""
    def free_nan_filled_memory() -> None:
        for n in (1 << 20, 1 << 23, 1 << 25, 1 << 27):
            for dtype in (torch.float32, torch.bfloat16):
                stale = torch.full((n,), float("nan"), dtype=dtype)
                del stale

    keep_freed_memory()
    torch.manual_seed(0)
    model = LesionNet(2, 2, 23, fused=fused, arch="compact").channels_last().train()
    x, y = torch.randn(32, 2, 23, 23, 23), torch.randint(0, 2, (32,))
    free_nan_filled_memory()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    free_nan_filled_memory()
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_keep_freed_memory_is_harmless():
    assert keep_freed_memory() in (True, False)
    x = torch.ones(20_000_000)  # above glibc's mmap threshold
    del x
    assert torch.ones(20_000_000).sum() == 20_000_000


@pytest.mark.slow
def test_bf16_learns_ppm_inputs_full_size_patches(tmp_path: Path):
    """The paper's patch size, inputs in ppm (~0.01): bf16 training must still separate the classes."""
    data = tmp_path / "ppm.h5"
    write_patches(data, toy_patches(n_per_code={2: 24, 3: 16, 5: 16, 6: 8}, size=35, scale=0.01))
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), channels=("qsm",), augment="random",
                      epochs=3, batch_size=16, precision="bf16", seed=0, threads=2)
    run = train(cfg, show_progress=False)
    history = json.loads((run / "history.json").read_text())
    metrics = evaluate(EvaluateConfig(run=str(run)))
    assert history[-1]["accuracy"] > 0.8
    assert metrics["accuracy"] > 0.8  # chance is 0.5 (balanced toy classes)


def test_gpu_style_sync_free_pooling_equals_cpu_pooling():
    from mslesion.fast_layers import _extreme_pool

    x = torch.randn(2, 5, 9, 9, 9, generator=torch.Generator().manual_seed(3))
    negative = torch.tensor([False, True, False, True, True])
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        xl = x.contiguous(memory_format=layout)
        cpu_values, cpu_indices = _extreme_pool(xl, negative, sync_free=False)
        gpu_values, gpu_indices = _extreme_pool(xl, negative, sync_free=True)
        assert torch.equal(cpu_values, gpu_values) and torch.equal(cpu_indices, gpu_indices)
    assert torch.equal(cpu_values[:, 1], -F.max_pool3d(-x[:, 1:2], 2, 2)[:, 0])  # a min-pool where γ < 0


@pytest.mark.parametrize("negative_gamma", [False, True])  # the folded path, and the fallback with γ < 0
def test_bf16_inference_pools_in_bf16_exactly(negative_gamma: bool):
    # CPU autocast runs max_pool3d in fp32: a block must not send its bf16 conv output through an fp32 copy
    # (twice the memory, fresh pages every forward); pooling in bf16 selects the same values exactly
    _, fused = reference_and_fused(negative_gamma=negative_gamma)
    block = fused.eval().channels_last().features[0]
    conv, bn = block[0], block[1]
    x = fused.normalise(torch.randn(4, 2, 23, 23, 23).contiguous(memory_format=torch.channels_last_3d))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        if negative_gamma:
            pre_pool = F.relu(bn(conv(x)))
        else:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            folded = conv.weight * scale.view(-1, 1, 1, 1, 1)
            pre_pool = conv._conv_forward(x, folded, (conv.bias - bn.running_mean) * scale + bn.bias)
    assert pre_pool.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    assert torch.equal(out, F.relu(F.max_pool3d(pre_pool.float(), 2, 2)).to(torch.bfloat16))


@pytest.mark.parametrize("arch", ["paper", "compact"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pad", [1, 2])
def test_zero_input_channels_change_the_net_only_by_rounding(pad: int, channels_last: bool, arch: str):
    _, plain = reference_and_fused(arch=arch)
    padded = copy.deepcopy(plain).pad_input(pad)
    if channels_last:
        plain.channels_last()
        padded.channels_last()
    x, y = batch()
    logits, grads = step_gradients(plain, x, y)
    padded_logits, padded_grads = step_gradients(padded, x, y)
    torch.testing.assert_close(padded_logits, logits, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():  # the padded weight's gradient comes back to the real weight, same shape
        assert padded_grads[name].shape == grad.shape
        assert relative_error(padded_grads[name], grad) < 1e-5 or grad.abs().max() == 0, name
    assert {k: v.shape for k, v in padded.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.eval()
    padded.eval()
    with torch.no_grad():
        torch.testing.assert_close(padded(x), plain(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(padded.embed(x), plain.embed(x), rtol=1e-5, atol=1e-6)


def test_input_padding_needs_the_fused_blocks():
    with pytest.raises(ValueError, match="fused"):
        LesionNet(2, 2, 23, fused=False).pad_input(1)
    assert LesionNet(2, 2, 23, fused=False).pad_input(0).input_pad == 0


def test_inference_runs_with_the_measured_padding_and_restores_the_models_own(monkeypatch):
    import mslesion.inference as inference

    _, model = reference_and_fused()
    x, _ = batch()
    set_population_batchnorm(model, [x[:3], x[3:]])
    expected, _ = inference.predict_probabilities(model, x, precision="fp32")  # measured choice for this machine
    model.pad_input(1)  # the model's own setting, kept after inference
    seen = []
    forward = model.forward
    model.forward = lambda batch_: seen.append(model.input_pad) or forward(batch_)
    monkeypatch.setattr(inference, "inference_input_pad", lambda device, dtype, channels: 2)
    probabilities, _ = inference.predict_probabilities(model, x, batch_size=4, tta=True, symmetries=8)
    assert seen and set(seen) == {2}
    assert model.input_pad == 1
    plain, _ = inference.predict_probabilities(copy.deepcopy(model).pad_input(0), x, tta=False, precision="fp32")
    torch.testing.assert_close(torch.as_tensor(plain), torch.as_tensor(expected), rtol=1e-5, atol=1e-6)
    assert probabilities.shape == expected.shape
