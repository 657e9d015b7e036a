"""Generated chunked linear-attention kernels against the float64 reference executor.

On a machine without a GPU these run in the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), at small ragged shapes: N not a multiple of the chunk, D not a power of two.
"""

from __future__ import annotations

import pytest
from _helpers import rel_err

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.codegen.triton.linear import build_linear
from einfuse.errors import CodegenError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5 if DEVICE == "cpu" else 3e-3  # the GPU runs float32 dots as tf32


def _check(cascade: einfuse.Cascade, B: int, H: int, Hkv: int, N: int, D: int, DV: int,
           seed: int, tol: float | None = None, **options: object) -> None:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=gen)
    k = torch.randn(B, Hkv, N, D, generator=gen)
    v = torch.randn(B, Hkv, N, DV, generator=gen)
    fn = build_linear(cascade, **options)
    out = fn(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE))
    assert out.shape == (B, H, N, DV)
    ref = run_cascade(cascade, {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(out, ref) < (tol or TOL)


@pytest.mark.parametrize("spec,N,D,chunk", [
    ("lightning", 37, 24, 16),
    ("lightning", 70, 64, 32),
    ("linear", 45, 24, 16),
    ("linear:normalize=true", 53, 24, 16),
    ("linear:feature_map=relu,normalize=true", 40, 32, 16),
    ("linear:feature_map=exp,causal=false,normalize=true", 37, 24, 16),
    ("linear:feature_map=identity,causal=false", 50, 24, 32),
])
def test_builtin_linear_variants_match_reference(spec: str, N: int, D: int, chunk: int) -> None:
    _check(einfuse.load_spec(spec), B=2, H=4, Hkv=4, N=N, D=D, DV=D - 4, seed=N,
           chunk=chunk, block_k=16, block_v=16)


def test_lightning_with_gqa_and_split_output_block() -> None:
    _check(einfuse.load_spec("lightning"), B=1, H=4, Hkv=2, N=61, D=24, DV=40, seed=3,
           chunk=16, block_k=16, block_v=16, block_o=16)


@pytest.mark.parametrize("spec", ["lightning", "linear:normalize=true"])
def test_states_stored_every_few_chunks(spec: str) -> None:
    """state_chunk > chunk: queries also read earlier key blocks of their state chunk directly."""
    _check(einfuse.load_spec(spec), B=1, H=2, Hkv=1, N=70, D=24, DV=16, seed=6,
           chunk=16, state_chunk=32, block_k=16, block_v=16)
    _check(einfuse.load_spec(spec), B=1, H=2, Hkv=2, N=45, D=16, DV=16, seed=7,
           chunk=16, state_chunk=64, block_k=16, block_v=16)


def test_lightning_fp32_states_and_single_chunk() -> None:
    _check(einfuse.load_spec("lightning"), B=1, H=2, Hkv=2, N=13, D=16, DV=16, seed=4,
           chunk=16, block_k=16, block_v=16, state_dtype="fp32")


_CUSTOM = """cascade decay9
ranks P, E, M, F
attr family = "linear"
input Q[P,E]
input K[M,E]
input V[M,F]
output O[P,F]
tensor QK[M,P]
tensor A[M,P]
QK[m,p] = Q[p,e] * K[m,e] * 0.5 : m < p
A[m,p] = QK[m,p] * idx(DECAY)
O[p,f] = A[m,p] * V[m,f]
"""


def test_decay_and_strict_mask_come_from_the_cascade() -> None:
    """A decay with another base and rate, a strict mask and a scale: nothing Lightning-specific."""
    c = einfuse.parse_cascade(_CUSTOM.replace("DECAY", "(9/10)**((h + 1)*(p - m))"))
    fn = build_linear(c, chunk=16)
    assert "(m < p)" in fn.source and "DECAY" not in fn.source
    _check(c, B=1, H=3, Hkv=3, N=39, D=16, DV=24, seed=5, chunk=16, block_k=16, block_v=16)


@pytest.mark.parametrize("decay", ["1/(1 + p - m)", "exp(-(p - m)**2)", "exp(-(p + m))"])
def test_decay_that_a_chunked_state_cannot_carry_is_refused(decay: str) -> None:
    c = einfuse.parse_cascade(_CUSTOM.replace("DECAY", decay))
    with pytest.raises(CodegenError, match="decay"):
        build_linear(c)


def test_non_causal_mask_and_wrong_family_and_bad_option_are_refused() -> None:
    window = einfuse.parse_cascade(_CUSTOM.replace("m < p", "(m <= p) & (p - m < 8)").replace("DECAY", "1"))
    with pytest.raises(CodegenError, match="causal"):
        build_linear(window)
    with pytest.raises(CodegenError, match="family"):
        build_linear(einfuse.load_spec("softmax"))
    with pytest.raises(CodegenError, match="valid"):
        build_linear(einfuse.load_spec("lightning"), chunkk=32)
    with pytest.raises(CodegenError, match="power of two"):
        build_linear(einfuse.load_spec("lightning"), chunk=48)
    with pytest.raises(CodegenError, match="multiple"):
        build_linear(einfuse.load_spec("lightning"), chunk=64, state_chunk=32)


def test_kernel_follows_the_lightning_split_cascade() -> None:
    fn = build_linear(einfuse.load_spec("lightning"), chunk=64)
    assert fn.lowering == "lowered by split_lightning" and fn.cascade.attrs["lowered"] == "lightning"
    src = fn.source
    assert "A[m,p] = QK[m,p] * idx(exp(" in src  # the cascade as written, in the header
    assert "KV[p1+1,e,f] = KV[p1,e,f] * idx(exp(" in src  # the lowered Einsums the decays come from
    for name in ("intra_decay(p0, m0, h, H, P0)", "key_decay(m0, h, H, P0)", "state_decay(h, H, P0)",
                 "query_decay(p0, h, H, P0)", "linear_states(", "linear_output("):
        assert f"def {name}" in src
    assert fn.cascade.params["P0"] == 128  # split with the state block (2 x chunk)


def test_pass_and_analysis_must_agree_and_no_mask_is_not_split() -> None:
    assert "no mask" in build_linear(einfuse.load_spec("linear:causal=false")).lowering
    c = einfuse.parse_cascade(_CUSTOM.replace("DECAY", "(9/10)**((h + 1)*(p - m))"))
    assert build_linear(c).lowering  # split or derived from g, but always cross-checked against g


@pytest.mark.parametrize("feature_map", ["elu1", "exp"])
def test_normalised_strict_mask_row_without_keys_is_zero_not_nan(feature_map: str) -> None:
    # query 0 sees no key under m < p: its sums are empty, so the reference's output there is 0
    c = einfuse.linear_attention(feature_map=feature_map, normalize=True, mask_mod=lambda b, h, q, kv: kv < q)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=gen) for _ in range(3))
    out = einfuse.compile(c)(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)).cpu()
    assert torch.isfinite(out).all() and (out[:, :, 0] == 0).all()
    assert rel_err(out, run_cascade(c, {"Q": q, "K": k, "V": v})["O"]) < TOL
