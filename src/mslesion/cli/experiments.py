"""Commands: ablate and report (channel ablation with CIs, HTML report)."""

from __future__ import annotations

from mslesion.cli.app import app  # noqa: F401
