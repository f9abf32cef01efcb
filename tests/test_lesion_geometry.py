"""Synthetic lesion geometry against the real held-out consensus masks (needs ../shared; skipped without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mslesion.config import SynthConfig
from mslesion.data.lesions import component_geometry
from mslesion.data.synth.shapes import BUILD_MASKS, HELD_OUT_MASKS, load_bank

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "open_ms_data"


def real_mask(name: str) -> np.ndarray:
    nib = pytest.importorskip("nibabel")
    full = SHARED / name / "lesion_mask.nii.gz"
    path = full if full.exists() else SHARED / "masks_only" / f"{name}_lesion_mask.nii.gz"
    return np.asarray(nib.load(path).dataobj) > 0


def test_bank_is_built_from_the_build_masks_only():
    assert len(BUILD_MASKS) == 20 and len(HELD_OUT_MASKS) == 10 and not set(BUILD_MASKS) & set(HELD_OUT_MASKS)
    bank = load_bank()
    assert len(bank.singles) > 1000 and bank.n_groups > 10
    assert 0.01 < bank.confluent_fraction < 0.1
    assert all(2 <= len(bank.group_parts(g)) <= 5 for g in range(bank.n_groups))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/open_ms_data not available")
def test_synthetic_volumes_match_held_out_real_lesions(tmp_path):
    """Measured alike (6-connected components >= 10 mm³ at 1 mm, a confluent union counted once)."""
    nib = pytest.importorskip("nibabel")
    from mslesion.data.synth.volumes import generate_subject_volumes

    real = [component_geometry(real_mask(name)) for name in HELD_OUT_MASKS]
    folders = generate_subject_volumes(SynthConfig(seed=1), tmp_path, 16)
    synthetic = [component_geometry(np.asarray(nib.load(f / "anat" / f"{f.name}_label-lesion_mask.nii.gz").dataobj)
                                    > 0) for f in folders]
    real_volume, real_sphericity = (np.concatenate(x) for x in zip(*real, strict=True))
    volume, sphericity = (np.concatenate(x) for x in zip(*synthetic, strict=True))
    ks_volume = stats.ks_2samp(np.log(real_volume), np.log(volume)).statistic
    ks_shape = stats.ks_2samp(real_sphericity, sphericity).statistic
    print(f"real {len(real_volume)} synthetic {len(volume)} lesions; KS log-volume {ks_volume:.3f}, sphericity "
          f"{ks_shape:.3f}; p50/p90/p99 real {np.percentile(real_volume, [50, 90, 99]).round()} synthetic "
          f"{np.percentile(volume, [50, 90, 99]).round()}")
    assert ks_volume <= 0.10
    assert ks_shape <= 0.15
    assert np.percentile(volume, 99) >= 1000
