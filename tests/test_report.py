"""The HTML report: parses, has every section and embedded images, renders in a headless browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_patches

from mslesion.ablate import ablate
from mslesion.config import AblationConfig, ReportConfig, TrainConfig
from mslesion.data.patches import write_patches
from mslesion.errors import InputError
from mslesion.report import SECTIONS, write_report
from mslesion.runs import run_folder


class Outline(HTMLParser):
    """Section ids, image sources and unclosed tags of a document."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[tuple[str, str]] = []  # (section id, src)
        self.open: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
        if tag == "img":
            self.images.append((self.sections[-1] if self.sections else "", attrs.get("src", "")))
        if tag in ("script", "link") or (tag == "img" and not attrs.get("src", "").startswith("data:")):
            self.external.append(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    write_patches(root / "toy.h5", toy_patches(size=23, n_patients=12))
    cfg = AblationConfig(data=str(root / "toy.h5"), out=str(root / "ablation"), channel_sets=("qsm", "flair,qsm,mask"),
                         cv_folds=2, n_bootstrap=20,
                         train=TrainConfig(augment="none", epochs=2, batch_size=16, threads=1, val_fraction=0.15))
    ablate(cfg, show_progress=False)
    return Path(cfg.out)


def browser_screenshot(page: Path, screenshot: Path, height: int, width: int = 1200) -> np.ndarray:
    """The page rendered by headless Chromium, as pixels [height, width, channels]; skips without Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (scripts/install_test_browser.sh installs it where apt works)")
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={screenshot}",
                             f"--window-size={width},{height}", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[:2] == (height, width)
    return pixels


def outline(path: Path) -> Outline:
    parser = Outline()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.open == [], f"unclosed tags {parser.open}"
    return parser


@pytest.mark.slow
def test_ablation_report_has_every_section_and_embedded_images(ablation_dir: Path, tmp_path: Path) -> None:
    out = write_report(ReportConfig(folder=str(ablation_dir), out=str(tmp_path / "report.html"), abstain=0.7))
    parsed = outline(out)
    assert parsed.sections == list(SECTIONS)
    assert {section for section, _ in parsed.images} == set(SECTIONS) - {"summary", "configuration"}
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for _, src in parsed.images)
    assert parsed.external == []  # self-contained: opens offline
    text = html.unescape(out.read_text())
    assert "coverage at --abstain 0.7" in text and "89.31" in text  # abstention summary, paper's Table 3
    assert "scikit-learn" in text and '"cv_folds": 2' in text  # software versions and configuration
    assert "over qsm" in text  # saliency over QSM for a model with a QSM channel


@pytest.mark.slow
def test_run_report_and_browser_rendering(ablation_dir: Path, tmp_path: Path) -> None:
    run = run_folder(ablation_dir, "flair,qsm,mask", 0, 1)
    out = write_report(ReportConfig(folder=str(run), out=str(tmp_path / "run.html")))
    parsed = outline(out)
    assert parsed.sections == [s for s in SECTIONS if s != "ablation"]
    text = html.unescape(out.read_text())
    # the summary's CIs: estimate, then [low, high] around it
    for metric in ("accuracy", "ROC AUC"):
        row = rf"<td>{metric}</td><td>([\d.]+)</td><td>\[([\d.]+), ([\d.]+)\]</td>"
        estimate, low, high = map(float, re.search(row, text).groups())
        assert low <= estimate <= high  # the toy task is easy: [1.000, 1.000] is possible
    pixels = browser_screenshot(out, tmp_path / "shot.png", height=2400)
    assert pixels.std() > 0.05  # not a blank page: text and figures were drawn


def test_report_of_a_missing_or_foreign_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        write_report(ReportConfig(folder=str(tmp_path / "nope"), out=str(tmp_path / "r.html")))
    with pytest.raises(InputError, match="neither a run folder"):
        write_report(ReportConfig(folder=str(tmp_path), out=str(tmp_path / "r.html")))
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("bad", [dict(abstain=1.0), dict(abstain=-0.1), dict(examples=0)])
def test_bad_report_settings(bad: dict) -> None:
    with pytest.raises(InputError):
        ReportConfig(folder="x", **bad)


def test_montage_shows_a_small_mask_on_a_fixed_scale() -> None:
    from mslesion.report_figures import mid_slices

    rng = np.random.default_rng(0)
    patch = rng.normal(size=(2, 23, 23, 23)).astype(np.float32)
    patch[1] = 0
    patch[1, 11, 10:12, 10:12] = 1  # 4 pixels of the mid slice: below the 99th percentile's reach
    image = mid_slices(patch, ("qsm", "mask"))
    mask_panel = image[:, 24:]
    assert mask_panel.max() == 1 and (mask_panel == 1).sum() == 4
    assert mid_slices(patch)[:, 24:].max() == 0  # what a percentile scale did to it


def test_roc_legend_names_the_positive_class_of_the_pr_auc() -> None:
    from mslesion.metrics import classification_metrics
    from mslesion.report_figures import roc_figure

    targets = np.array([0] * 10 + [1] * 30)  # class 0 is rare: the PR AUC's positive class
    probabilities = np.random.default_rng(0).dirichlet([1, 1], size=40)
    names = ("demyelinating", "remyelinating")
    metrics = classification_metrics(targets, probabilities, names)
    assert metrics["positive_class"] == "demyelinating"
    figure = roc_figure(targets, probabilities, names, positive=names.index(metrics["positive_class"]))
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("positive: demyelinating (AUC")


def test_saliency_is_the_input_gradient_of_the_predicted_logit() -> None:
    import torch

    from mslesion.inference import input_saliency
    from mslesion.model import LesionNet

    torch.manual_seed(0)
    model = LesionNet(2, 2, 23).eval()
    patch = np.random.default_rng(0).normal(size=(2, 23, 23, 23)).astype(np.float32)
    saliency = input_saliency(model, patch)
    x = torch.as_tensor(patch[None]).requires_grad_(True)
    logits = model(x)
    (gradient,) = torch.autograd.grad(logits[0, logits.argmax()], x)
    assert saliency.shape == (23, 23, 23)
    np.testing.assert_allclose(saliency, gradient[0].abs().amax(0).numpy(), rtol=1e-5)


def test_report_shows_its_progress_over_the_sections(tmp_path: Path, capsys) -> None:
    """The report of a run takes seconds to minutes (montage and saliency load the patch file and the model):
    a bar over its sections; without a terminal, one plain line."""
    import re

    from test_train import toy_config

    from mslesion.config import EvaluateConfig
    from mslesion.evaluate import evaluate
    from mslesion.train import train

    run = train(toy_config(tmp_path, "run", epochs=1), show_progress=False)
    evaluate(EvaluateConfig(run=str(run)))
    capsys.readouterr()
    write_report(ReportConfig(folder=str(run), out=str(tmp_path / "r.html")))
    assert re.fullmatch(r"report sections: 9/9 in [\d.]+ s\n", capsys.readouterr().out)
    write_report(ReportConfig(folder=str(run), out=str(tmp_path / "q.html")), show_progress=False)
    assert capsys.readouterr().out == ""
