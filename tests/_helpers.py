"""Small helpers shared by test modules.

Importable as ``from _helpers import ...`` because pytest (prepend import mode, no ``__init__.py``)
puts ``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``, which it always does first.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_f64(x: Any) -> np.ndarray:
    """NumPy float64 view of an array or a (CPU or GPU) torch tensor, so errors are measured exactly."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_err(got: Any, want: Any) -> float:
    """Relative error ``||got - want||_2 / ||want||_2`` (Frobenius over all elements), in float64.

    One norm-wise metric for every kernel-vs-reference check, so tolerances mean the same thing across
    the suite. Non-finite results fail loudly here rather than as an opaque ``nan < tol``; the floor
    on the denominator only matters for an all-zero reference.
    """
    g, w = _as_f64(got), _as_f64(want)
    assert np.isfinite(g).all(), "result has non-finite values"
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))
