"""The chunked linear-attention backward (linear, lightning, DSL linear_attention) in the Triton
interpreter: gradients of ``einfuse.compile`` outputs against autograd of a float64 torch reference
of the same plan (its forward checked against the golden executor), on ragged sizes (N not a multiple
of the chunk, odd head dims), decay on and off, GQA, normalised plans, masks with an empty first row,
bf16, gradcheck in float64, torch.compile, and the printed backward plan."""

import pytest
import torch
from _helpers import rel_err
from _torch_reference import linear_plan_attention
from click.testing import CliRunner

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()


def grads(spec, B=1, H=4, Hkv=2, N=45, D=24, DV=None, dtype=torch.float32, check_fwd=False,
          backward_options=None, **options):
    """(compiled, out, reference out, (dq, dk, dv), reference grads) on fresh random inputs."""
    f = einfuse.compile(spec, chunk=16, block_k=16, block_v=16, backward_options=backward_options, **options)
    q = rand(B, H, N, D, seed=1, scale=0.5, dtype=dtype)
    k, v = rand(B, Hkv, N, D, seed=2, scale=0.5, dtype=dtype), rand(B, Hkv, N, DV or D, seed=3, dtype=dtype)
    out = f(q, k, v)
    do = rand(*out.shape, seed=4).detach().to(dtype)
    got = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = linear_plan_attention(f.plan, q64, k64, v64)
    if check_fwd:  # the torch reference computes what the golden executor computes
        kk, vv = (t.detach().repeat_interleave(H // Hkv, 1) for t in (k64, v64))
        gold = run_cascade(f.cascade, {"Q": q64.detach(), "K": kk, "V": vv})[f.cascade.outputs[0]]
        assert rel_err(ref, gold) < 1e-12
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    return f, out, ref, got, want


@pytest.mark.parametrize("spec,N,D", [
    ("lightning", 45, 24),                                          # decay, GQA, N not a multiple of 16
    ("linear:feature_map=identity", 45, 24),                        # the same without decay
    ("linear", 37, 24),                                             # elu1 feature map: phi' by the chain rule
    ("linear:normalize=true", 40, 24),                              # normaliser through [V, 1]
    ("linear:feature_map=relu,normalize=true", 33, 32),
    ("linear:feature_map=exp,causal=false,normalize=true", 37, 24),  # no mask: one state, no intra part
    ("linear:feature_map=identity,causal=false", 50, 24),
])
def test_gradients_match_float64_reference_ragged_gqa(spec, N, D):
    _, out, ref, got, want = grads(spec, N=N, D=D, DV=D - 4)
    assert rel_err(out, ref) < 1e-5
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel_err(g, w) < 1e-5, spec


@pytest.mark.parametrize("spec", ["lightning", "linear:normalize=true", "linear:feature_map=exp,causal=false"])
def test_reference_forward_is_the_golden_executor(spec):
    grads(spec, H=3, Hkv=3, N=21, D=8, check_fwd=True)


@pytest.mark.parametrize("chunk", [16, 32])
def test_lightning_head_dim_96_and_backward_chunks(chunk):
    """D = 96 (not a power of two), value width 40; the backward chunk differs from the forward's."""
    _, _, _, got, want = grads("lightning", H=2, Hkv=1, N=70, D=96, DV=40, backward_options={"chunk": chunk})
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_forward_state_chunk_does_not_change_the_gradients():
    _, _, _, got, want = grads("lightning", H=2, Hkv=2, N=61, D=24, state_chunk=32)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_first_row_without_keys_gets_zero_gradients_not_nan():
    """mask m < p: query 0 sees no key; normalised, its output is 0 (not 0/0) and so are its grads."""
    c = einfuse.linear_attention("strict", feature_map="elu1", normalize=True,
                                 mask_mod=lambda b, h, q, kv: kv < q)
    _, out, ref, (dq, dk, dv), want = grads(c, N=35, D=16)
    assert torch.all(out[:, :, 0] == 0)
    assert all(torch.isfinite(t).all() for t in (dq, dk, dv))
    assert torch.all(dq[:, :, 0] == 0)
    assert torch.all(dk[:, :, -1] == 0) and torch.all(dv[:, :, -1] == 0)  # the last key: no later query
    for g, w in zip((dq, dk, dv), want):
        assert rel_err(g, w) < 1e-5


def test_bf16_gradients():
    _, _, _, got, want = grads("lightning", H=2, Hkv=1, N=50, D=32, dtype=torch.bfloat16)
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        assert rel_err(g, w) < 2e-2


@pytest.mark.parametrize("spec", ["lightning", "linear:normalize=true"])
def test_gradcheck_float64_in_the_interpreter(spec):
    f = einfuse.compile(spec, chunk=16, block_k=16, block_v=16)
    q, k, v = (rand(1, h, 20, 8, seed=s, scale=0.5, dtype=torch.float64) for s, h in ((5, 2), (6, 1), (7, 1)))
    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)


def test_torch_compile_gradients_equal_eager():
    f = einfuse.compile("lightning", chunk=16, block_k=16, block_v=16)
    q, k, v = rand(1, 2, 24, 16, seed=1), rand(1, 1, 24, 16, seed=2), rand(1, 1, 24, 16, seed=3)
    eager = torch.autograd.grad(f(q, k, v).square().sum(), (q, k, v))
    traced = torch.compile(lambda a, b, c: f(a, b, c), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(traced(q, k, v).square().sum(), (q, k, v))
    for g, w in zip(got, eager):
        assert rel_err(g, w) < 1e-6


def test_few_training_steps_reduce_the_loss():
    """A tiny model with a lightning layer learns (the backward drives an optimiser)."""
    torch.manual_seed(0)
    f = einfuse.compile("lightning", chunk=16, block_k=16, block_v=16)
    proj = torch.nn.Linear(16, 48)
    opt = torch.optim.Adam(proj.parameters(), lr=3e-2)
    x, target = torch.randn(1, 20, 16), torch.randn(1, 1, 20, 16)
    losses = []
    for _ in range(6):
        q, k, v = proj(x).unflatten(-1, (3, 1, 16)).permute(2, 0, 3, 1, 4)
        loss = (f(q, k, v) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_backward_options_are_checked_per_family():
    with pytest.raises(CodegenError, match="do not apply to linear"):
        einfuse.compile("lightning", backward_options={"dq_layout": "atomic"})
    with pytest.raises(CodegenError, match="do not apply to softmax"):
        einfuse.compile("causal", backward_options={"chunk": 32})
    f = einfuse.compile("lightning", backward_options={"chunk": 24})
    q = rand(1, 1, 16, 16)
    with pytest.raises(CodegenError, match="chunk=24"):
        f(q, q, q)


def test_cli_prints_the_backward_plan():
    from einfuse.cli import cli

    res = CliRunner().invoke(cli, ["passes", "lightning", "--backward"])
    assert res.exit_code == 0, res.output
    assert "backward plan lightning: linear (chunked, reverse state recurrence)" in res.output
    assert "dstates   dS[c] = state(P0) dS[c+1]" in res.output
    assert "query(p0) = exp(" in res.output
    res = CliRunner().invoke(cli, ["passes", "linear", "--backward"])
    assert "phi_q'(x) = elu1(x) - relu(x)" in res.output


def test_opcheck_of_the_training_op_and_gradcheck_through_it():
    f = einfuse.compile("linear:normalize=true", chunk=16, block_k=16, block_v=16)
    q, k, v = (rand(1, h, 19, 8, seed=s, scale=0.5, dtype=torch.float64) for s, h in ((8, 2), (9, 1), (10, 1)))
    torch.library.opcheck(torch.ops.einfuse.attention_train.default, (f.key, q, k, v, ""),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
    traced = torch.compile(lambda a, b, c: f(a, b, c), backend="aot_eager", fullgraph=True)
    assert torch.autograd.gradcheck(traced, (q, k, v), fast_mode=True)


def test_out_of_shared_memory_is_a_codegen_error_naming_the_options(monkeypatch):
    """A configuration the GPU cannot hold (Triton's OutOfResources at launch: the normalised path's
    float32, value-widened tiles at chunk 64 needed 233472 > 232448 bytes on an H200) is reported as
    a CodegenError that names the options to lower, not as Triton's bare error."""
    from triton.runtime.errors import OutOfResources

    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.linear_backward import LinearBackwardKernel

    f = einfuse.compile("linear:normalize=true", chunk=16, block_k=16, block_v=16)

    def too_big(self, *args):
        raise OutOfResources(233472, 232448, "shared memory")

    monkeypatch.setattr(LinearBackwardKernel, "_launch", too_big)
    q = rand(1, 1, 16, 8)
    with pytest.raises(CodegenError, match="lower backward option chunk .* num_stages"):
        backward_kernel(f)(q, q, q, q.detach(), torch.zeros(1, 1, 16), q.detach())
