"""Commands: extract and predict (NIfTI/BIDS subjects in, lesion patches and per-lesion predictions out)."""

from __future__ import annotations

from mslesion.cli.app import app  # noqa: F401
