"""A tiny run's outputs, pinned: refactors must not change a single bit of what training and evaluation produce.

The pin (tests/data/pinned_run.json) holds the SHA-256 of every tensor of model.pt and the full metrics.json of a
two-epoch fp32 run on a seeded toy file, trained in a fresh process on one thread. Floating-point kernels differ
between CPU generations (AVX-512, AMX, ...), so the pin also records a numerics fingerprint: the bytes of one
seeded forward and backward pass of the net. Where this machine reproduces the fingerprint, the run must be
bit-identical; elsewhere the metrics must agree to 1e-4 and the weights to a relative 1e-3.

A change that alters numerics on purpose re-pins in the same commit and says why:
    .venv/bin/python tests/test_pinned_run.py --repin
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import toy_patches  # noqa: E402

from mslesion.data.patches import write_patches  # noqa: E402

PIN = Path(__file__).parent / "data" / "pinned_run.json"
TRAIN_ARGS = ("--channels", "qsm,mask", "--augment", "random", "--epochs", "2", "--batch-size", "16",
              "--lr-milestones", "2", "--val-fraction", "0.2", "--seed", "3", "--precision", "fp32",
              "--threads", "1", "--quiet")


def numerics_fingerprint() -> str:
    """SHA-256 of one seeded forward and backward pass of the net: equal ⇒ this CPU computes like the pinning one."""
    from mslesion.model import LesionNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LesionNet(2, 2, 23).channels_last()
    x = torch.randn(4, 2, 23, 23, 23)
    loss = model(x).square().sum()
    loss.backward()
    digest = hashlib.sha256(loss.detach().numpy().tobytes())
    for p in model.parameters():
        digest.update(p.grad.numpy().tobytes())
    return digest.hexdigest()


def run_pinned(folder: Path) -> dict:
    """Train and evaluate the pinned run in a fresh process; its tensors' hashes and sums and its metrics."""
    data = folder / "pinned.h5"
    write_patches(data, toy_patches(n_per_code={2: 24, 3: 16, 5: 16, 6: 8}, size=23, n_patients=8, seed=5))
    run = folder / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", "from mslesion.cli import main; main()", "train", str(data),
                    "--out", str(run), *TRAIN_ARGS], check=True, env=env, capture_output=True)
    state = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("data", "model", "model_sha256", "mslesion_version", "format_version", "synth_version",
                "precision_used"):
        metrics.pop(key, None)  # where the results came from (a tmp path, the version), not the results
    return {
        "fingerprint": subprocess.run([sys.executable, __file__, "--fingerprint"], check=True, env=env,
                                      capture_output=True, text=True).stdout.strip(),
        "tensors": {k: {"sha256": hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest(),
                        "sum": float(v.double().sum()), "abs_sum": float(v.double().abs().sum())}
                    for k, v in state.items()},
        "metrics": metrics,
    }


@pytest.mark.slow
def test_a_tiny_run_reproduces_its_pinned_outputs(tmp_path: Path):
    pinned = json.loads(PIN.read_text())
    now = run_pinned(tmp_path)
    assert now["tensors"].keys() == pinned["tensors"].keys()
    if now["fingerprint"] == pinned["fingerprint"]:
        assert now["metrics"] == pinned["metrics"]
        changed = [k for k in now["tensors"] if now["tensors"][k]["sha256"] != pinned["tensors"][k]["sha256"]]
        assert not changed, f"tensors differ bit for bit: {changed}"
        return
    assert _flatten(now["metrics"]) == pytest.approx(_flatten(pinned["metrics"]), abs=1e-4)
    for key, values in pinned["tensors"].items():
        assert now["tensors"][key]["abs_sum"] == pytest.approx(values["abs_sum"], rel=1e-3, abs=1e-6), key


def _flatten(value, prefix: str = "") -> dict[str, float]:
    if isinstance(value, dict):
        return {k2: v2 for k, v in value.items() for k2, v2 in _flatten(v, f"{prefix}{k}.").items()}
    if isinstance(value, list):
        return {k2: v2 for i, v in enumerate(value) for k2, v2 in _flatten(v, f"{prefix}{i}.").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value) if np.isfinite(value) else -1.0}
    return {}


if __name__ == "__main__":
    if "--fingerprint" in sys.argv:
        print(numerics_fingerprint())
    elif "--repin" in sys.argv:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            PIN.write_text(json.dumps(run_pinned(Path(folder)), indent=1, sort_keys=True) + "\n")
        print(f"wrote {PIN}")
