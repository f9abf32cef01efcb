"""export: the ONNX graph reproduces `predict --precision fp32`, carries its metadata, takes any batch size; and
predict's default precision stays within 1e-2 of fp32."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_patches
from test_extract import run_cli
from test_train import toy_config

from mslesion.data.patches import read_patches, write_patches
from mslesion.export import TOLERANCE, plain_twin
from mslesion.inference import predict_logits
from mslesion.model import ConvBlock
from mslesion.runs import MODEL, load_torch, load_trained, save_torch
from mslesion.train import train

onnx = pytest.importorskip("onnx", reason="the [onnx] extra is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny trained run: real batch-norm statistics, mean image and channel scales.

    The toy set is separable, so the temperature fitted on its validation lesions is tiny and saturates every
    probability at 0 or 1, which would hide any difference between two computations. The run's temperature is set
    instead so that the logits land in softmax's sensitive range (|logit difference| / T ≤ 4)."""
    root = tmp_path_factory.mktemp("export")
    run = Path(train(toy_config(root, "run", epochs=1), show_progress=False))
    trained = load_trained(run)
    logits = predict_logits(trained.model, read_patches(Path(trained.config.data), trained.channels).images)
    model = load_torch(run / MODEL)
    model["temperature"] = float((logits[:, 1] - logits[:, 0]).abs().max()) / 4
    save_torch(model, run / MODEL)
    return run


@pytest.fixture(scope="module")
def few_lesions(tmp_path_factory) -> str:
    """16 lesions: bf16 is emulated (slow) on CPUs without AVX-512 BF16."""
    path = tmp_path_factory.mktemp("few") / "few.h5"
    write_patches(path, toy_patches(n_per_code={2: 4, 3: 4, 5: 4, 6: 4}, size=23, seed=3))
    return str(path)


def predicted(run: Path, data: str, out: Path, precision: str, monkeypatch, capsys) -> np.ndarray:
    code, text = run_cli(["predict", run, data, "--out", out, "--precision", precision, "--quiet"], monkeypatch,
                         capsys)
    assert code == 0, text
    rows = list(csv.DictReader((out / "lesion_predictions.csv").open()))
    return np.array([[float(r["p_remyelinating"]), float(r["p_demyelinating"])] for r in rows])


def test_onnxruntime_matches_predict_fp32_on_any_batch_size(trained_run, tmp_path, monkeypatch, capsys):
    model_path = tmp_path / "model.onnx"
    code, text = run_cli(["export", trained_run, "--out", model_path], monkeypatch, capsys)
    assert code == 0, text
    trained = load_trained(trained_run)
    data = load_trained(trained_run).config.data
    expected = predicted(trained_run, data, tmp_path / "pred", "fp32", monkeypatch, capsys)
    patches = read_patches(Path(data), trained.channels).images

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    batch_axis = session.get_inputs()[0].shape[0]
    assert isinstance(batch_axis, str), "the batch size must be dynamic"
    whole = session.run(None, {"patches": patches})[0]
    one_by_one = np.concatenate([session.run(None, {"patches": patches[i:i + 1]})[0] for i in range(7)])
    # predict's CSV rounds to 5 decimals: 5e-6 of the 1e-4 are that rounding
    assert np.abs(whole - expected).max() <= TOLERANCE
    assert np.abs(one_by_one - expected[:7]).max() <= TOLERANCE
    assert len(whole) == len(patches) > 100
    # the temperature is inside the graph (softmax of logits / T), and the probabilities are not all saturated
    assert trained.temperature != pytest.approx(1.0, abs=1e-3)
    assert np.allclose(whole.sum(1), 1, atol=1e-5)
    assert ((expected > 0.02) & (expected < 0.98)).mean() > 0.5

    meta = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    assert meta["channels"] == "flair,qsm"
    assert meta["class_names"] == "remyelinating,demyelinating"
    assert int(meta["patch_size"]) == 23
    assert float(meta["temperature"]) == pytest.approx(trained.temperature, rel=1e-12)
    from mslesion import __version__

    assert meta["mslesion_version"] == __version__


def test_a_compact_net_exports_with_its_architecture_and_same_probabilities(tmp_path, monkeypatch, capsys):
    """--arch compact (padded blocks, global average pooling) through train → export → onnxruntime."""
    run = Path(train(toy_config(tmp_path, "compact", epochs=1, arch="compact"), show_progress=False))
    trained = load_trained(run)
    assert trained.model.arch == "compact" and trained.config.arch == "compact"
    model_path = tmp_path / "compact.onnx"
    code, text = run_cli(["export", run, "--out", model_path], monkeypatch, capsys)
    assert code == 0, text
    expected = predicted(run, trained.config.data, tmp_path / "pred", "fp32", monkeypatch, capsys)
    patches = read_patches(Path(trained.config.data), trained.channels).images
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"patches": patches})[0] - expected).max() <= TOLERANCE
    assert {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}["arch"] == "compact"


def test_default_precision_stays_within_1e_2_of_fp32(trained_run, few_lesions, tmp_path, monkeypatch, capsys):
    """`auto` is fp32 or bf16 depending on the machine: bf16, the only other choice, is held to the bound too."""
    data = few_lesions
    fp32 = predicted(trained_run, data, tmp_path / "fp32", "fp32", monkeypatch, capsys)
    differences = {precision: np.abs(predicted(trained_run, data, tmp_path / precision, precision, monkeypatch,
                                               capsys) - fp32).max() for precision in ("auto", "bf16")}
    print(", ".join(f"{name}: largest |p - p_fp32| = {value:.2e}" for name, value in differences.items()))
    assert max(differences.values()) <= 1e-2
    assert differences["bf16"] > 0, "bf16 must actually have run (identical to fp32 to 5 decimals)"


def test_the_exported_copy_runs_the_plain_blocks_with_the_same_values(trained_run):
    trained = load_trained(trained_run)
    twin = plain_twin(trained.model)
    assert all(not b.fused for b in twin.modules() if isinstance(b, ConvBlock))
    assert all(b.fused for b in trained.model.modules() if isinstance(b, ConvBlock)), "the original is left fused"
    x = torch.randn(4, 2, 23, 23, 23)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), trained.model(x), atol=1e-5, rtol=1e-5)


def test_without_onnx_one_line_and_exit_2(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if it were not installed
    code, text = run_cli(["export", trained_run, "--out", tmp_path / "m.onnx"], monkeypatch, capsys)
    assert code == 2
    assert text.strip().count("\n") == 0 and "pip install 'mslesion[onnx]'" in text
    assert not (tmp_path / "m.onnx").exists()


def test_an_existing_file_is_kept_without_overwrite(trained_run, tmp_path, monkeypatch, capsys):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"earlier")
    code, text = run_cli(["export", trained_run, "--out", target], monkeypatch, capsys)
    assert code == 2 and str(target) in text
    assert target.read_bytes() == b"earlier"


def test_the_readme_recipe_without_mslesion_reproduces_predict(tmp_path, monkeypatch, capsys):
    """docs/run_onnx.py (shown verbatim in the README) cuts the patches itself, with nibabel, numpy and scipy, and
    runs the exported graph: its probabilities are predict's (fp32) for every lesion of an LPI-stored subject."""
    import subprocess

    from test_extract import write_subject
    from test_predict import make_run

    from mslesion.runs import LESION_PREDICTIONS

    recipe = Path(__file__).resolve().parents[1] / "docs" / "run_onnx.py"
    readme = (recipe.parents[1] / "README.md").read_text()
    assert recipe.read_text().split('"""\n\n', 1)[1] in readme, "the README shows docs/run_onnx.py as it is"

    run = make_run(tmp_path / "run", temperature=1.3)
    s = write_subject(tmp_path / "s", "sub-1")
    model_path = tmp_path / "model.onnx"
    assert run_cli(["export", run, "--out", model_path], monkeypatch, capsys)[0] == 0
    code, text = run_cli(["predict", run, "--mask", s.mask, "--flair", s.flair, "--qsm", s.qsm, "--out",
                          tmp_path / "pred", "--precision", "fp32", "--quiet"], monkeypatch, capsys)
    assert code == 0, text
    expected = {int(r["lesion"]): (float(r["p_remyelinating"]), float(r["p_demyelinating"]))
                for r in csv.DictReader((tmp_path / "pred" / LESION_PREDICTIONS).open())}  # sub-1's lesions
    result = subprocess.run([sys.executable, str(recipe), str(model_path), str(s.mask), f"flair={s.flair}",
                             f"qsm={s.qsm}"], capture_output=True, text=True, check=True)
    got = {int(r["lesion"]): (float(r["p_remyelinating"]), float(r["p_demyelinating"]))
           for r in csv.DictReader(result.stdout.splitlines())}
    assert sorted(got) == sorted(expected) and len(got) == 3
    assert max(abs(a - b) for lesion in got for a, b in zip(got[lesion], expected[lesion], strict=True)) <= TOLERANCE
    assert len({round(p[0], 4) for p in got.values()}) == 3  # three different lesions, three different answers
