"""int8 inference (`predict --precision int8`): the quantised net against the fp32 one, its calibration, and the
errors of models and devices it cannot serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_patches
from test_extract import run_cli, write_subject
from test_predict import make_run, read_rows

from mslesion import precision
from mslesion.config import TrainConfig
from mslesion.data.patches import read_patches, write_patches
from mslesion.inference import predict_probabilities
from mslesion.model import LesionNet
from mslesion.quantized import ActivationRanges, Int8LesionNet, activation_ranges, uint8_params
from mslesion.runs import load_trained
from mslesion.train import train
from mslesion.transforms import N_SYMMETRIES, apply_symmetry, gather_augmented


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained 3 epochs on the toy set (QSM carries the class), and its patch file."""
    folder = tmp_path_factory.mktemp("int8")
    data = folder / "toy.h5"
    write_patches(data, toy_patches(n_per_code={2: 40, 3: 30, 5: 30, 6: 10}, size=23))
    cfg = TrainConfig(data=str(data), out=str(folder / "run"), channels=("flair", "qsm"), augment="random",
                      epochs=3, batch_size=32, seed=0, threads=2)
    return train(cfg, show_progress=False), data


def test_training_stores_the_activation_ranges_of_its_patches(trained):
    run, _ = trained
    model = load_trained(run)
    ranges = model.activation_ranges
    assert len(ranges) == len(model.model.features) + 1  # the normalised input, then every block
    low, high = ranges[0]
    assert low < 0 < high  # a centred input has both signs
    assert all(low == 0 <= high for low, high in ranges[1:])  # after ReLU: zero or more, and some positive
    assert any(high > 0 for _, high in ranges[1:])


def test_ranges_cover_what_the_net_computes_on_those_patches():
    torch.manual_seed(0)
    model = LesionNet(2, 2, 23).eval()
    x = torch.randn(12, 2, 23, 23, 23)
    ranges = activation_ranges(model, [x[:5], x[5:]])
    with torch.no_grad():
        tensors = [model.normalise(x)] + model.block_outputs(x)
    assert ranges == [(float(t.min()), float(t.max())) for t in tensors]
    with pytest.raises(ValueError, match="at least one batch"):
        ActivationRanges().ranges()


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions")
@pytest.mark.parametrize(("low", "high"), [(-3.0, 5.0), (0.0, 2.5), (1.0, 4.0), (-2.0, -1.0), (0.0, 0.0)])
def test_uint8_codes_cover_the_range_and_hold_zero_exactly(low, high):
    scale, zero_point = uint8_params(low, high)
    assert 0 <= zero_point <= 255 and scale > 0
    codes = torch.quantize_per_tensor(torch.tensor([min(low, 0.0), 0.0, max(high, 0.0)]), scale, zero_point,
                                      torch.quint8)
    values = codes.dequantize()
    assert values[1] == 0  # zero padding and ReLU's zeros stay exact
    assert torch.allclose(values, torch.tensor([min(low, 0.0), 0.0, max(high, 0.0)]), atol=scale / 2 + 1e-7)


def test_int8_follows_the_fp32_net_of_a_trained_model(trained):
    run, data = trained
    model = load_trained(run)
    images = torch.from_numpy(read_patches(data, ("flair", "qsm")).images)
    fp32, _ = predict_probabilities(model.model, images, precision="fp32")
    int8, _ = predict_probabilities(Int8LesionNet(model.model, model.activation_ranges), images, precision="fp32")
    # quantisation error, not rounding: measured here 0.01-0.02 at most; a wrong scale or a missed batch-norm
    # fold moves probabilities by tenths
    assert np.abs(int8 - fp32).max() < 0.06
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.97


def test_zero_input_channels_change_nothing_in_integers(trained):
    run, data = trained
    model = load_trained(run)
    images = torch.from_numpy(read_patches(data, ("flair", "qsm")).images[:16])
    plain = Int8LesionNet(model.model, model.activation_ranges)(images)
    padded = Int8LesionNet(model.model, model.activation_ranges, input_pad=2)(images)
    assert torch.equal(plain, padded)  # zero codes times zero weights: exact integer sums


def test_wrong_number_of_ranges_is_refused():
    with pytest.raises(ValueError, match="need 4 activation ranges"):
        Int8LesionNet(LesionNet(2, 2, 23), [(0.0, 1.0)] * 3)


def test_predict_in_int8_gives_the_calls_of_fp32_on_a_trained_model(trained, tmp_path, monkeypatch, capsys):
    run, data = trained
    rows = {}
    for name in ("fp32", "int8"):
        code, text = run_cli(["predict", run, data, "--out", tmp_path / name, "--precision", name, "--quiet"],
                             monkeypatch, capsys)
        assert code == 0, text
        rows[name] = read_rows(tmp_path / name / "lesion_predictions.csv")
    calls = {name: [r["call"] for r in table] for name, table in rows.items()}
    agree = np.mean([a == b for a, b in zip(calls["fp32"], calls["int8"], strict=True)])
    assert agree >= 0.97
    record = json.loads((tmp_path / "int8" / "predict_config.json").read_text())
    assert record["precision_used"] == "int8" and record["config"]["precision"] == "int8"


def test_int8_refuses_a_model_without_ranges_and_a_gpu(tmp_path, monkeypatch, capsys):
    old = make_run(tmp_path / "old", channels=("flair", "mask"))  # a model.pt as before 0.4.7: no ranges
    s = write_subject(tmp_path / "s", "sub-1")
    for extra, words in (([], "stores no activation ranges"), (["--device", "cuda"], "")):
        out = tmp_path / "out"
        code, text = run_cli(["predict", old, "--mask", s.mask, "--flair", s.flair, "--out", out, "--quiet",
                              "--precision", "int8", *extra], monkeypatch, capsys)
        lines = [line for line in text.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and words in lines[0], text
        assert not out.exists()


def test_training_refuses_int8(tmp_path, monkeypatch, capsys):
    code, text = run_cli(["train", tmp_path / "x.h5", "--out", tmp_path / "r", "--precision", "int8"],
                         monkeypatch, capsys)
    assert code == 2 and "--precision" in text and "int8" in text


def test_int8_input_padding_is_measured_once_and_cached(monkeypatch):
    calls = []

    def fake_measure(channels: int) -> dict:
        calls.append(channels)
        return {"pad": 1, "seconds": {}}

    monkeypatch.setattr(precision, "measure_int8_input_pad", fake_measure)
    assert precision.int8_input_pad(7) == precision.int8_input_pad(7) == 1
    assert calls == [7]


def test_a_real_int8_padding_measurement_times_every_candidate():
    result = precision.measure_int8_input_pad(3, repeats=1, batch=2)
    assert set(result["seconds"]) == {"0", "1"} and result["pad"] in (0, 1)


def test_tta_encodes_each_lesion_once_with_the_same_result(trained):
    # training averages the mean image over its symmetry group, so normalising commutes with the group: encoded
    # codes permuted per symmetry give what permuting the raw patches and encoding them gives
    run, data = trained
    model = load_trained(run)
    quantized = Int8LesionNet(model.model, model.activation_ranges)
    images = torch.from_numpy(read_patches(data, ("flair", "qsm")).images[:6])
    ks = torch.arange(N_SYMMETRIES).repeat_interleave(6)
    idx = torch.arange(6).repeat(N_SYMMETRIES)
    assert quantized.commutes_with(ks)
    encoded, _ = predict_probabilities(quantized, images, tta=True, precision="fp32")
    with torch.no_grad():
        logits = torch.cat([quantized(gather_augmented(images, idx[s:s + 64], ks[s:s + 64]))
                            for s in range(0, len(idx), 64)])
    plain = torch.softmax(logits, 1).view(N_SYMMETRIES, 6, -1).mean(0).numpy()
    assert np.abs(encoded - plain).max() < 1e-3


def test_a_mean_image_without_the_symmetry_is_not_encoded_once():
    torch.manual_seed(0)
    model = LesionNet(1, 2, 23).eval()
    model.mean_image.copy_(torch.arange(23.0).view(1, 23, 1, 1).expand(1, 23, 23, 23))  # a ramp along one axis
    quantized = Int8LesionNet(model, [(-30.0, 30.0), (0.0, 5.0), (0.0, 5.0), (0.0, 5.0)])
    assert quantized.commutes_with(torch.tensor([0]))
    assert not quantized.commutes_with(torch.arange(48))


def test_int8_says_so_where_this_torch_has_no_int8_3d_kernels(trained, tmp_path, monkeypatch, capsys):
    import mslesion.quantized as quantized

    assert quantized.int8_available()  # the x86 builds this project pins
    run, data = trained
    monkeypatch.setattr(quantized, "int8_available", lambda: False)
    code, text = run_cli(["predict", run, data, "--out", tmp_path / "p", "--precision", "int8", "--quiet"],
                         monkeypatch, capsys)
    assert code == 2 and "no int8 3D convolution" in text and not (tmp_path / "p").exists()


@pytest.mark.parametrize("arch", ["paper", "compact"])
def test_int8_tracks_fp32_on_both_architectures(arch):
    torch.manual_seed(0)
    model = LesionNet(2, 3, 23, arch=arch)
    x = torch.randn(24, 2, 23, 23, 23)
    model.train()
    with torch.no_grad():
        model(x)  # batch-norm statistics of these patches, so the folded convolutions see realistic scales
    model.eval()
    with torch.no_grad():
        reference = model(x)
        logits = Int8LesionNet(model, activation_ranges(model, [x]))(x)
    correlation = np.corrcoef(reference.flatten().numpy(), logits.flatten().numpy())[0, 1]
    assert correlation > 0.98


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
def test_gathered_codes_are_the_codes_in_each_symmetry(channels):
    # channel counts of 1, 2, 4 (8) bytes are gathered as one integer per voxel, the others byte rows: both equal
    # the codes permuted by apply_symmetry, cropped to what the first block's pool reads
    quantized = Int8LesionNet(LesionNet(1, 2, 23), [(-1.0, 1.0)] + [(0.0, 1.0)] * 3)
    codes = torch.randint(0, 256, (3, 23, 23, 23, channels), dtype=torch.uint8)
    idx, ks = torch.tensor([0, 2, 1, 2]), torch.tensor([0, 5, 17, 47])
    gathered = quantized.gather_codes(codes, idx, ks)
    s = quantized.region_size(23)
    assert s == 22 and gathered.shape == (4, s, s, s, channels)
    for row, (i, k) in enumerate(zip(idx.tolist(), ks.tolist(), strict=True)):
        expected = apply_symmetry(codes[i].permute(3, 0, 1, 2), k)[:, :s, :s, :s].permute(1, 2, 3, 0)
        assert torch.equal(gathered[row], expected)


def test_no_lesions_give_an_empty_table_of_the_models_classes():
    quantized = Int8LesionNet(LesionNet(1, 6, 23), [(-1.0, 1.0)] + [(0.0, 1.0)] * 3)
    probabilities, _ = predict_probabilities(quantized, torch.zeros(0, 1, 23, 23, 23), precision="fp32")
    assert probabilities.shape == (0, 6)
