"""``torch.compile`` over einfuse attention, forward and backward, in the Triton interpreter.

The trainable custom op (``einfuse::attention_train`` with its registered autograd formula calling
``einfuse::attention_backward``) must let Dynamo keep one graph (``fullgraph=True``), put the
backward kernels in AOTAutograd's backward graph, and give the values and gradients of the eager
path; ``torch.library.opcheck`` checks the registrations (schema, fake kernels, autograd).
"""

import pytest
import torch
from _helpers import rel_err
from _torch_reference import softmax_plan_attention

import einfuse
from einfuse.codegen import torch_op
from einfuse.errors import CodegenError


def rand(*shape, seed=0, dtype=torch.float32, grad=True):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad)


class Block(torch.nn.Module):
    """A tiny attention block: projections around an einfuse attention (GQA: 4 query, 2 K/V heads)."""

    def __init__(self, spec: str, H: int = 4, Hkv: int = 2, D: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.H, self.Hkv, self.D = H, Hkv, D
        self.q = torch.nn.Linear(32, H * D)
        self.kv = torch.nn.Linear(32, 2 * Hkv * D)
        self.o = torch.nn.Linear(H * D, 32)
        self.attn = einfuse.compile(spec, decode=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.q(x).view(B, N, self.H, self.D).transpose(1, 2)
        k, v = self.kv(x).view(B, N, 2, self.Hkv, self.D).permute(2, 0, 3, 1, 4)
        o = self.attn(q, k, v).transpose(1, 2).reshape(B, N, self.H * self.D)
        return self.o(o)


def run(model, x):
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
    return out, grads


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_matches_eager_values_and_gradients(backend):
    model = Block("softcap:cap=5,causal=true,head_dim=16")
    x = rand(1, 23, 32, seed=1)   # 23 tokens: not a multiple of any tile
    want_out, want = run(model, x)
    compiled = torch.compile(model, backend=backend, fullgraph=True)   # fullgraph: a graph break fails
    got_out, got = run(compiled, x)
    assert rel_err(got_out, want_out) < 1e-6
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-6


def test_backward_graph_calls_the_backward_op_and_forward_graph_the_training_op():
    from torch._dynamo.backends.common import aot_autograd

    seen = {"fw": [], "bw": []}

    def record(which):
        def compiler(gm, example_inputs):
            seen[which] += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
            return gm
        return compiler

    backend = aot_autograd(fw_compiler=record("fw"), bw_compiler=record("bw"))
    attn = einfuse.compile("causal:head_dim=16", decode=False)
    q, k, v = rand(1, 2, 21, 16, seed=2), rand(1, 2, 21, 16, seed=3), rand(1, 2, 21, 16, seed=4)
    f = torch.compile(lambda q, k, v: attn(q, k, v).sum(), backend=backend, fullgraph=True)
    f(q, k, v).backward()
    assert any("einfuse.attention_train" in t for t in seen["fw"]), seen["fw"]
    assert any("einfuse.attention_backward" in t for t in seen["bw"]), seen["bw"]
    assert not any("einfuse.attention_backward" in t for t in seen["fw"])


def test_compiled_gradients_match_the_float64_reference():
    attn = einfuse.compile("sliding_window:window=9,head_dim=24", decode=False)
    q, k, v = rand(1, 4, 29, 24, seed=5), rand(1, 2, 29, 24, seed=6), rand(1, 2, 29, 24, seed=7)
    do = rand(1, 4, 29, 24, seed=8, grad=False)
    f = torch.compile(lambda q, k, v: attn(q, k, v), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(f(q, k, v), (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(softmax_plan_attention(attn.plan, q64, k64, v64), (q64, k64, v64), do.double())
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_runtime_options_reach_the_kernels_under_compile():
    attn = einfuse.compile("sliding_window:window=6,head_dim=16,align=offset", decode=False)
    q, k, v = rand(1, 2, 10, 16, seed=9), rand(1, 2, 30, 16, seed=10), rand(1, 2, 30, 16, seed=11)
    f = torch.compile(lambda q, k, v: attn(q, k, v, q_offset=15, block_m=16), backend="aot_eager", fullgraph=True)
    got_out = f(q, k, v)
    got = torch.autograd.grad(got_out.sum(), (q, k, v))
    want_out = attn(q, k, v, q_offset=15)
    want = torch.autograd.grad(want_out.sum(), (q, k, v))
    assert rel_err(got_out, want_out) < 1e-6
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-6
    assert torch.all(got[1][:, :, 25:] == 0)   # keys after the last query's position get nothing


def test_inference_under_compile_uses_the_forward_op():
    attn = einfuse.compile("causal:head_dim=16")
    q = rand(1, 2, 24, 16, seed=12, grad=False)
    f = torch.compile(lambda q: attn(q, q, q), backend="aot_eager", fullgraph=True)
    assert rel_err(f(q), attn(q, q, q)) < 1e-6


def test_gradcheck_float64_through_the_custom_op():
    attn = einfuse.compile("alibi:head_dim=8", decode=False)
    q, k, v = (rand(1, 2, 9, 8, seed=s, dtype=torch.float64) for s in (13, 14, 15))
    assert torch.autograd.gradcheck(lambda q, k, v: torch_op.call_train(attn.key, q, k, v, block_m=16, block_n=16),
                                    (q, k, v), fast_mode=True)


def test_opcheck_of_the_training_op():
    attn = einfuse.compile("causal:head_dim=8", decode=False)
    q, k, v = rand(1, 2, 11, 8, seed=16, dtype=torch.float64), rand(1, 1, 11, 8, seed=17, dtype=torch.float64), \
        rand(1, 1, 11, 8, seed=18, dtype=torch.float64)
    torch.library.opcheck(torch.ops.einfuse.attention_train.default, (attn.key, q, k, v, ""),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_options_text_round_trips_and_refuses_tensors():
    opts = {"q_offset": 7, "tile_order": "box", "fast_math": False, "precision": None}
    assert torch_op.parse_options(torch_op.options_text(opts)) == opts
    assert torch_op.parse_options("") == {}
    with pytest.raises(CodegenError, match="q_offset"):
        torch_op.options_text({"q_offset": torch.tensor(3)})


def test_variant_without_backward_under_compile_says_so():
    attn = einfuse.compile("based")  # staged (several score products): no backward yet
    q = rand(1, 1, 16, 16, seed=19)
    f = torch.compile(lambda q: attn(q, q, q), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="no backward for"):
        f(q)


def test_learned_captured_table_keeps_its_gradient_under_torch_compile():
    """The custom ops carry q, k, v only: a captured table that requires grad must not silently lose
    its gradient in a graph. The call runs eagerly (a graph break) and matches eager autograd;
    fullgraph=True reports the break instead."""
    heads = 2
    table = torch.nn.Parameter(torch.randn(heads, 15 * 15, generator=torch.Generator().manual_seed(3)))

    def offset(q, kv):
        return (q // 8 - kv // 8 + 7) * 15 + (q % 8 - kv % 8 + 7)

    swin = einfuse.compile(einfuse.attention("swin_cap", score_mod=lambda s, b, h, q, kv: s + table[h, offset(q, kv)]))
    x = rand(1, heads, 64, 16, seed=5)
    swin(x, x, x).pow(2).mean().backward()
    want_table, want_x = table.grad.clone(), x.grad.clone()
    table.grad = x.grad = None
    torch._dynamo.reset()
    torch.compile(lambda x: swin(x, x, x).pow(2).mean(), backend="aot_eager")(x).backward()
    assert table.grad is not None and rel_err(table.grad, want_table) < 1e-6
    assert rel_err(x.grad, want_x) < 1e-6
    torch._dynamo.reset()
    with pytest.raises(Exception, match="disable"):
        torch.compile(lambda x: swin(x, x, x).sum(), backend="aot_eager", fullgraph=True)(x)
