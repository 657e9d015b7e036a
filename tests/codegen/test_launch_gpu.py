"""The launch cache on a GPU (``pytest -m gpu``): CUDA-graph capture and replay of compiled calls,
the direct launch path against Triton's own, and calls Triton must specialise differently.

Capture: one eager call per signature first (the warm-up every Triton kernel needs, which here also
builds the plan, block tables and compiled kernel); then the capture records only the output
allocation and the launches. Syncs are errors while capturing (``set_sync_debug_mode``), no
preparation may run inside it, and each replay on new inputs copied into the static buffers is
checked against the float64 reference."""

import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# spec, (B, H, Hkv, N_q, N_kv, D), tolerance: forward softmax (tables), decode (two kernels,
# workspace), a neighbourhood grid (box tables), sigmoid, linear attention (chunk states)
CASES = {
    "causal": ("causal:head_dim=128", (2, 8, 2, 777, 777, 128), 1e-2),
    "decode": ("causal:head_dim=128", (3, 32, 8, 1, 1500, 128), 1e-2),
    "na2d": ("na2d:shape=24x40,kernel=7,head_dim=64", (1, 4, 4, 960, 960, 64), 1e-2),
    "sigmoid": ("sigmoid:causal=true,head_dim=64", (1, 4, 4, 300, 300, 64), 1e-2),
    "linear": ("lightning", (1, 4, 4, 512, 512, 64), 2e-2),
}


def fresh(B, H, Hkv, N, M, D, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=gen).to(torch.bfloat16)
    return mk(B, H, N, D), mk(B, Hkv, M, D), mk(B, Hkv, M, D)


def reference(c, q, k, v):
    return run_cascade(c, {"Q": q.float().cpu(), "K": k.float().cpu(), "V": v.float().cpu()})["O"]


def count_prepares(f):
    calls = []
    prepare = f.prepare
    f.prepare = lambda *a, **kw: calls.append(1) or prepare(*a, **kw)
    return calls


@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_graph_capture_and_replay_with_new_inputs(case):
    spec, shape, tol = CASES[case]
    c = einfuse.load_spec(spec)
    f = einfuse.compile(c)
    q, k, v = fresh(*shape, seed=0)  # the static buffers
    f(q, k, v)  # warm-up: plan, tables, compiled kernel
    torch.cuda.synchronize()
    prepares = count_prepares(f)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.cuda.set_sync_debug_mode("error")  # a host sync in the call raises (capture would fail too)
        try:
            out = f(q, k, v)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert prepares == [], "the capture re-planned: tables or compilation inside the graph"
    for seed in (1, 2, 3):
        nq, nk, nv = fresh(*shape, seed=seed)
        q.copy_(nq)
        k.copy_(nk)
        v.copy_(nv)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        assert rel_err(out.float().cpu(), reference(c, nq, nk, nv)) < tol, (case, seed)
    eager = f(q, k, v)  # eager calls after the capture still work, on the same prepared launch
    assert torch.equal(eager, out)


def test_first_call_of_a_signature_inside_a_capture_is_refused():
    f = einfuse.compile("causal:head_dim=64")
    q, k, v = fresh(1, 2, 2, 100, 100, 64, seed=4)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(CodegenError, match="during CUDA-graph capture.*call it once before"):
        with torch.cuda.graph(graph):
            f(q, k, v)


@pytest.mark.parametrize("case", sorted(CASES))
def test_direct_launch_matches_tritons_launch_path(case, monkeypatch):
    spec, shape, _ = CASES[case]
    q, k, v = fresh(*shape, seed=5)
    direct = einfuse.compile(spec)
    direct(q, k, v)
    out = direct(q, k, v)  # the second call of a signature launches the compiled kernel directly
    prepared = next(iter(direct._calls.values()))
    launches = [getattr(prepared, n) for n in ("launch", "partial", "combine", "states", "output")
                if hasattr(prepared, n)]
    assert launches and all(b.compiled is not None for b in launches)
    monkeypatch.setenv("EINFUSE_FAST_LAUNCH", "0")
    slow = einfuse.compile(spec)
    ref = slow(q, k, v)
    slow(q, k, v)
    prepared = next(iter(slow._calls.values()))
    assert all(getattr(prepared, n).compiled is None for n in ("launch", "partial", "combine", "states", "output")
               if hasattr(prepared, n))
    torch.cuda.synchronize()
    assert torch.equal(out, ref)


def test_misaligned_views_side_streams_and_changing_shapes():
    c = einfuse.load_spec("causal:head_dim=64")
    f = einfuse.compile(c)
    for n in (130, 257, 130, 64):  # shapes come and go; each keeps its own prepared launch
        q, k, v = fresh(2, 4, 2, n, n, 64, seed=n)
        assert rel_err(f(q, k, v).float().cpu(), reference(c, q, k, v)) < 1e-2
    assert len(f._calls) == 3
    base = torch.randn(2 * 4 * 130 * 64 + 1, device="cuda").to(torch.bfloat16)
    q = base[1:].view(2, 4, 130, 64)  # 2 bytes off: Triton specialises on 16-byte alignment
    _, k, v = fresh(2, 4, 2, 130, 130, 64, seed=6)
    for _ in range(2):
        assert rel_err(f(q, k, v).float().cpu(), reference(c, q, k, v)) < 1e-2
    side = torch.cuda.Stream()
    q, k, v = fresh(2, 4, 2, 130, 130, 64, seed=7)
    torch.cuda.synchronize()
    with torch.cuda.stream(side):  # the launch goes to the current stream
        out = f(q, k, v)
    side.synchronize()
    assert rel_err(out.float().cpu(), reference(c, q, k, v)) < 1e-2
