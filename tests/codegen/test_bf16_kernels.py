"""bfloat16 inputs to the linear-attention and decode kernels against the float64 reference.

The Triton CPU interpreter computes bf16 ``tl.dot`` wrongly (relative error ~1e9 before the kernels
got their UPCAST switch); on a machine without a GPU these run in the interpreter (conftest sets
TRITON_INTERPRET=1), on a GPU they check the native bf16 path. Small ragged shapes: N not a multiple
of the chunk or key block, D not a power of two, GQA. The reference runs on the bf16-rounded inputs,
so the tolerance only covers bf16 rounding of intermediate operands and the output.
"""

from __future__ import annotations

import pytest
from _helpers import rel_err

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.codegen.triton.decode import build_decode
from einfuse.codegen.triton.linear import build_linear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-2


def _inputs(B: int, H: int, Hkv: int, NQ: int, NK: int, D: int, DV: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, NQ, D, generator=gen).bfloat16()
    k = torch.randn(B, Hkv, NK, D, generator=gen).bfloat16()
    v = torch.randn(B, Hkv, NK, DV, generator=gen).bfloat16()
    ref_in = {"Q": q.double(), "K": k.double(), "V": v.double()}
    return (q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)), ref_in


@pytest.mark.parametrize("spec,Hkv,N,D,DV,options", [
    ("lightning", 4, 37, 24, 20, {}),
    ("lightning", 2, 45, 24, 40, {"state_chunk": 32}),
    ("linear:feature_map=elu1,normalize=true", 4, 41, 24, 20, {}),
    ("linear:feature_map=elu1,causal=false,normalize=true", 2, 29, 24, 16, {}),
])
def test_linear_bf16_matches_reference(spec: str, Hkv: int, N: int, D: int, DV: int, options: dict) -> None:
    c = einfuse.load_spec(spec)
    (q, k, v), ref_in = _inputs(2, 4, Hkv, N, N, D, DV, seed=N)
    out = build_linear(c, chunk=16, block_k=16, block_v=16, **options)(q, k, v)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, run_cascade(c, ref_in)["O"]) < TOL


@pytest.mark.parametrize("spec,H,Hkv,NQ,NK,splits", [
    ("decode", 4, 1, 1, 53, 3),
    ("decode:causal=true", 4, 2, 3, 45, 2),
])
def test_decode_bf16_matches_reference(spec: str, H: int, Hkv: int, NQ: int, NK: int, splits: int) -> None:
    c = einfuse.load_spec(spec)
    (q, k, v), ref_in = _inputs(2, H, Hkv, NQ, NK, 24, 32, seed=NK)
    out = build_decode(c, block_n=16)(q, k, v, splits=splits)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, run_cascade(c, ref_in)["O"]) < TOL
