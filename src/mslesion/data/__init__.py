"""Data: the HDF5 patch contract, the synthetic cohort, NIfTI extraction and splits."""
