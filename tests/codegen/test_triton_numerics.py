"""Numerics of generated kernels at the edges: fully masked rows, large logits, cross-attention
lengths, 16-bit inputs, tile configurations and the hand-written one-pass cascade."""

import pytest
import sympy
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.ir import parse_cascade


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


def run(c, q, k, v, **options):
    f = einfuse.compile(c, decode=False, **options)
    out = f(q, k, v)
    ref = run_cascade(c, {"Q": q, "K": k, "V": v})[c.outputs[0]]
    return out, ref, f


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid"])
def test_fully_masked_rows_give_zero_not_nan(normalization):
    # queries 0..4 see no key at all; their rows must be exactly 0 (the reference's absent rows)
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 5, normalization=normalization)
    q, k, v = rand(1, 2, 40, 24, seed=1), rand(1, 2, 40, 24, seed=2), rand(1, 2, 40, 24, seed=3)
    out, ref, _ = run(c, q, k, v)
    assert not torch.isnan(out).any()
    assert torch.all(out[:, :, :5] == 0)
    assert rel_err(out.numpy(), ref) < 2e-5


def test_large_logits_stay_finite_and_exact():
    c = einfuse.load_spec("causal")
    q, k, v = rand(1, 2, 41, 32, seed=4, scale=30.0), rand(1, 2, 41, 32, seed=5, scale=30.0), rand(1, 2, 41, 32)
    out, ref, _ = run(c, q, k, v)
    assert torch.isfinite(out).all()
    assert rel_err(out.numpy(), ref) < 1e-4


def test_cross_attention_with_different_lengths_and_bottom_right_causal_mask():
    c = einfuse.load_spec("decode:causal=true,head_dim=24")  # key m visible to query p when m <= p + M - P
    q, k, v = rand(2, 4, 19, 24, seed=6), rand(2, 1, 70, 24, seed=7), rand(2, 1, 70, 24, seed=8)
    out, ref, _ = run(c, q, k, v)
    assert rel_err(out.numpy(), ref) < 2e-5


def test_mask_with_negative_floor_and_mod_uses_floor_semantics():
    # q - kv is negative for half the pairs: Triton's // and % truncate, sympy's floor/Mod do not
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: sympy.Eq(sympy.Mod(q - kv, 3), 0)
                          | (sympy.floor((q - kv) / 4) == -2))
    q, k, v = rand(1, 2, 37, 16, seed=9), rand(1, 2, 37, 16, seed=10), rand(1, 2, 37, 16, seed=11)
    out, ref, _ = run(c, q, k, v)
    assert rel_err(out.numpy(), ref) < 2e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_sixteen_bit_inputs(dtype, tol):
    c = einfuse.load_spec("sliding_window:window=20,head_dim=32")
    q, k, v = (rand(1, 2, 50, 32, seed=s, dtype=dtype) for s in (12, 13, 14))
    out, ref, _ = run(c, q, k, v)
    assert out.dtype == dtype
    assert rel_err(out.float().numpy(), ref) < tol


@pytest.mark.parametrize("block_m,block_n", [(16, 64), (64, 16)])
def test_any_tile_configuration_gives_the_same_result(block_m, block_n):
    c = einfuse.load_spec("alibi:head_dim=24")
    q, k, v = rand(1, 4, 53, 24, seed=15), rand(1, 2, 53, 24, seed=16), rand(1, 2, 53, 24, seed=17)
    out, ref, f = run(c, q, k, v, block_m=block_m, block_n=block_n)
    assert (f.kernel.last_config.block_m, f.kernel.last_config.block_n) == (block_m, block_n)
    assert rel_err(out.numpy(), ref) < 2e-5


def test_hand_written_one_pass_cascade_compiles_as_is(flash_text):
    c = parse_cascade(flash_text)
    q, k, v = (rand(2, 2, 37, 24, seed=s) for s in (18, 19, 20))
    out, ref, f = run(c, q, k, v)
    assert f.lowered is c
    assert torch.all(out[:, :, :3] == 0)
    assert rel_err(out.numpy(), ref) < 2e-5


def test_runs_under_torch_compile():
    f = einfuse.compile("causal:head_dim=16")
    q, k, v = (rand(1, 2, 33, 16, seed=s) for s in (21, 22, 23))
    eager = f(q, k, v)
    compiled = torch.compile(lambda a, b, c: f(a, b, c) + 1.0, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(q, k, v), eager + 1.0)


def test_graphs_hold_the_custom_op_and_eager_calls_launch_directly(monkeypatch):
    from einfuse.codegen import torch_op

    f = einfuse.compile("causal:head_dim=16")
    q, k, v = (rand(1, 2, 33, 16, seed=s) for s in (27, 28, 29))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    traced = torch.compile(lambda a, b, c: f(a, b, c) * 2.0, backend=backend, fullgraph=True)(q, k, v)
    assert graphs and "einfuse.attention" in graphs[0]
    # eagerly, the op's dispatch (about 0.1 ms of CPU per call) is skipped
    monkeypatch.setattr(torch_op, "call", lambda *a: (_ for _ in ()).throw(AssertionError("custom op used")))
    assert torch.allclose(f(q, k, v) * 2.0, traced)


@pytest.mark.parametrize("spec", ["causal:head_dim=32", "sigmoid:causal=true", "na2d:shape=8x8,kernel=5"])
def test_whole_key_tiles_skip_bounds_checks_and_stay_exact(spec):
    # 64 keys in 32-key tiles (or 4x8 boxes of the 8x8 grid): partial tiles run without bounds checks
    c = einfuse.load_spec(spec)
    q, k, v = (rand(1, 2, 64, 32, seed=s) for s in (24, 25, 26))
    out, ref, _ = run(c, q, k, v, block_m=32, block_n=32)
    assert rel_err(out.numpy(), ref) < 2e-5


def test_range_test_printing_of_window_conjuncts():
    from einfuse.codegen.triton.index_printer import IndexPrinter
    from einfuse.frontends.dsl import m, p

    pr = IndexPrinter({p: "qi", m: "ki"})
    code = pr.predicate((m >= p - 3) & (m < p + 5))
    assert code == "(((ki + 3 - qi)).to(tl.uint32) < 8)"  # one unsigned compare for two bounds
