"""GEMM cycles against SCALE-Sim, when a python that can import scalesim is around (not on CI).

Point ``SCALESIM_PYTHON`` at it (default ``/tmp/scalesim-venv/bin/python``; see
benchmarks/scalesim_compare.py for the one-line setup)."""

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

PY = os.environ.get("SCALESIM_PYTHON", "/tmp/scalesim-venv/bin/python")


def _has_scalesim() -> bool:
    if not os.path.exists(PY):
        return False
    p = subprocess.run([PY, "-c", "import scalesim"], capture_output=True, check=False)
    return p.returncode == 0


@pytest.mark.skipif(not _has_scalesim(), reason="scalesim is not importable (see benchmarks/scalesim_compare.py)")
def test_gemm_cycles_match_scalesim():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "scalesim_compare.py"
    spec = importlib.util.spec_from_file_location("scalesim_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.compare(PY, mod.SHAPES[-2:], [(16, 16)])
    assert len(rows) == 6
    for r in rows:
        # SCALE-Sim reports one cycle less than the cycles its folds span
        assert r["difference_quirk_corrected"] == 0, r
