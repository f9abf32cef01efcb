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


@pytest.mark.parametrize(("channels", "candidates"),
                         [(1, [0, 1, 3]), (2, [0, 2]), (3, [0, 1]), (4, [0]), (5, [0, 1, 3])])
def test_input_padding_candidates_round_up_to_2_and_4_channels(channels, candidates):
    assert precision.pad_candidates(channels) == candidates


def test_input_padding_is_measured_once_per_precision_and_channel_count(cache: Path, monkeypatch):
    calls = []

    def fake_measure(channels: int, dtype) -> dict:
        calls.append((channels, dtype))
        return {"pad": 1 if dtype == torch.bfloat16 else 0, "seconds": {}}

    monkeypatch.setattr(precision, "measure_input_pad", fake_measure)
    cpu = torch.device("cpu")
    assert precision.inference_input_pad(cpu, torch.bfloat16, 3) == 1
    assert precision.inference_input_pad(cpu, torch.bfloat16, 3) == 1  # from the cache
    assert precision.inference_input_pad(cpu, None, 3) == 0
    assert precision.inference_input_pad(cpu, torch.bfloat16, 1) == 1
    assert calls == [(3, torch.bfloat16), (3, None), (1, torch.bfloat16)]
    assert len(json.loads(cache.read_text())) == 3
    assert precision.inference_input_pad(torch.device("cuda"), torch.bfloat16, 3) == 0 and len(calls) == 3


def test_a_real_input_padding_measurement_keeps_a_pad_only_when_clearly_faster():
    result = precision.measure_input_pad(1, None, repeats=1, batch=2)
    assert set(result["seconds"]) == {"0", "1", "3"} and all(s > 0 for s in result["seconds"].values())
    assert result["pad"] in (0, 1, 3)
    if result["pad"]:
        assert result["seconds"][str(result["pad"])] < precision.INPUT_PAD_MARGIN * result["seconds"]["0"]
