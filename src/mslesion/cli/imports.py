"""Commands: import-medmnist (third-party 3D patch sets into the project's HDF5 format)."""

from __future__ import annotations

from mslesion.cli.app import app  # noqa: F401
