"""The C++ index printer (CUTLASS back end) against sympy's exact evaluation, on the host.

The printed expressions are compiled with the host C++ compiler (the helpers are ``inline`` there and
``__host__ __device__`` under nvcc), run over the same grid and cases as the Triton printer's test
(``_helpers.INDEX_CASES``: floor/Mod of negatives, sizes as divisors, fractions over a common
denominator, the unsigned path, range tests, integer Piecewise), and compared exactly. Also: the
score expressions and masks of the built-in variants print, and C++ spellings are used throughout.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import sympy
from _helpers import A_SYM as A
from _helpers import INDEX_A_VALUE, INDEX_CASES, INDEX_H_VALUE, INDEX_NM, INDEX_NP, H, m, p

from einfuse.codegen.cutlass.printer import HELPERS, CppIndexPrinter, cpp_float

NAMES = {p: "p", m: "m", H: "H", A: "A"}


def _exact(e: sympy.Basic) -> np.ndarray:
    env = {H: sympy.Integer(INDEX_H_VALUE), A: sympy.Integer(INDEX_A_VALUE)}
    vals = [e.xreplace({**env, p: sympy.Integer(i), m: sympy.Integer(j)})
            for i in range(INDEX_NP) for j in range(INDEX_NM)]
    return np.array([float(bool(v)) if isinstance(v, sympy.logic.boolalg.BooleanAtom) else float(v)
                     for v in vals]).reshape(INDEX_NP, INDEX_NM)


@pytest.fixture(scope="module")
def host_results(tmp_path_factory):
    """Every case evaluated by the printed C++ on the grid: {name: array}."""
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    pr = CppIndexPrinter(NAMES, context="test", tensors=(p, m))
    body = []
    for name, e, how in INDEX_CASES:
        code = {"value": pr.value, "float": pr.float_value, "predicate": pr.predicate}[how](e)
        fmt = '"%.9g "' if how == "float" else '"%d "'
        cast = "(double)" if how == "float" else "(int)"
        body.append(f'  printf("{name} "); for (int p = 0; p < {INDEX_NP}; ++p) for (int m = 0; m < {INDEX_NM}; ++m)'
                    f' printf({fmt}, {cast}({code})); printf("\\n");')
    src = ("#include <cstdio>\n#include <cmath>\n#include <cstdlib>\n#include <algorithm>\n"
           "using std::max; using std::min;\n" + HELPERS
           + f"int main() {{\n  const int H = {INDEX_H_VALUE}; const int A = {INDEX_A_VALUE};\n"
           + "\n".join(body) + "\n  return 0;\n}\n")
    d = tmp_path_factory.mktemp("cpp_printer")
    (d / "t.cpp").write_text(src)
    subprocess.run([cxx, "-std=c++17", "-O1", "-o", str(d / "t"), str(d / "t.cpp")], check=True)
    out = subprocess.run([str(d / "t")], capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.strip().splitlines():
        name, *vals = line.split()
        res[name] = np.array([float(v) for v in vals]).reshape(INDEX_NP, INDEX_NM)
    return res


@pytest.mark.parametrize("name,e,how", INDEX_CASES, ids=[c[0] for c in INDEX_CASES])
def test_printed_cpp_index_expression_is_exact(host_results, name, e, how):
    want = _exact(e)
    if how == "float":
        np.testing.assert_allclose(host_results[name], want, rtol=1e-6)
    else:
        np.testing.assert_array_equal(host_results[name], want)


def test_cpp_spellings():
    pr = CppIndexPrinter(NAMES, context="test", tensors=(p, m))
    assert pr.value(sympy.floor((p + 3 * m) / 8)).startswith("((int)((unsigned)(") and "/ 8u))" in \
        pr.value(sympy.floor((p + 3 * m) / 8))
    assert "ef_floordiv" in pr.value(sympy.floor((p - m) / 3))
    assert pr.predicate(sympy.And(m >= p - 3, m < p + 5)) == "((unsigned)((m + 3 - p)) < 8u)"
    assert "?" in pr.value(sympy.Piecewise((p, p > m), (m, True)))
    assert pr.float_value(sympy.Integer(3)) == "3.0f" and pr.float_value(A) == "((float)(A))"
    assert cpp_float(float("-inf")) == "(-INFINITY)" and cpp_float(0.5) == "0.5f"
    assert pr.value(sympy.Max(p / 2, m)) == "(max(p, (2 * m)) / 2.0f)"  # one common denominator
    assert pr.value(sympy.Max(p, sympy.pi * m)).startswith("fmaxf(((float)(p)), ")  # one type for C++
