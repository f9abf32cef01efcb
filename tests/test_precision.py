"""`--precision auto`: measured once per machine and use, cached where the environment says, never re-decided."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mslesion import precision


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path))
    return tmp_path / "precision.json"


def test_explicit_precisions_are_kept_and_cuda_is_bf16(cache: Path):
    cpu = torch.device("cpu")
    assert precision.resolve(cpu, "fp32", "training") == "fp32"
    assert precision.resolve(cpu, "bf16", "inference") == "bf16"
    assert precision.resolve(torch.device("cuda"), "auto", "training") == "bf16"
    assert not cache.exists()  # nothing measured for an explicit choice


def test_auto_is_fp32_without_native_bf16(cache: Path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve(torch.device("cpu"), "auto", "training") == "fp32"
    assert not cache.exists()


@pytest.mark.parametrize(("fp32_s", "bf16_s", "choice"), [(1.0, 0.5, "bf16"), (1.0, 0.95, "fp32"), (1.0, 1.5, "fp32")])
def test_auto_keeps_bf16_only_when_clearly_faster_and_caches_the_choice(cache: Path, monkeypatch, fp32_s, bf16_s,
                                                                         choice):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    calls = []

    def fake_measure(use: str) -> dict:
        calls.append(use)
        chosen = "bf16" if bf16_s < precision.BF16_MARGIN * fp32_s else "fp32"
        return {"choice": chosen, "fp32_s": fp32_s, "bf16_s": bf16_s}

    monkeypatch.setattr(precision, "measure", fake_measure)
    cpu = torch.device("cpu")
    assert precision.resolve(cpu, "auto", "inference") == choice
    assert precision.resolve(cpu, "auto", "inference") == choice
    assert calls == ["inference"]  # the second call reads the cache
    stored = json.loads(cache.read_text())
    assert [entry["choice"] for entry in stored.values()] == [choice]
    assert precision.resolve(cpu, "auto", "training") == choice and calls == ["inference", "training"]


def test_a_real_measurement_times_both_precisions():
    result = precision.measure("inference", repeats=1)
    assert result["choice"] in ("fp32", "bf16") and result["fp32_s"] > 0 and result["bf16_s"] > 0
    if result["choice"] == "bf16":
        assert result["bf16_s"] < precision.BF16_MARGIN * result["fp32_s"]


def test_an_unwritable_cache_still_gives_a_choice(tmp_path: Path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(precision.CACHE_ENV, str(blocker / "below-a-file"))
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure", lambda use: {"choice": "fp32", "fp32_s": 1.0, "bf16_s": 1.0})
    assert precision.resolve(torch.device("cpu"), "auto", "training") == "fp32"


def test_a_choice_measured_by_older_code_is_measured_again(cache: Path, monkeypatch):
    # a cached choice is only as good as the code it timed: entries of another measurement version are ignored
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    stale_key = precision.machine_key("inference").replace(f"measurement {precision.MEASUREMENT_VERSION}",
                                                           "measurement 1")
    cache.write_text(json.dumps({stale_key: {"choice": "fp32", "fp32_s": 1.0, "bf16_s": 2.0}}))
    monkeypatch.setattr(precision, "measure", lambda use: {"choice": "bf16", "fp32_s": 1.0, "bf16_s": 0.5})
    assert precision.resolve(torch.device("cpu"), "auto", "inference") == "bf16"
    assert stale_key in json.loads(cache.read_text())  # kept beside the new entry, for an older install
