"""Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits by minimising the NLL."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T > 0 that minimises cross-entropy of softmax(logits / T); searched over log T in [1e-2, 1e2]."""
    logits, targets = logits.double(), targets.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / np.exp(log_t), targets))

    result = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded")
    return float(np.exp(result.x))
