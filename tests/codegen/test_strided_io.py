"""The prefill kernel on strided views, writing into a caller's buffer (Triton interpreter, fp32).

Hugging Face layers hand attention ``(B, H, N, D)`` views of ``(B, N, H, D)`` memory and want the
output in ``(B, N, H, D)`` memory; ``AttentionKernel(q, k, v, out=view)`` lets them skip a copy on
the way in and on the way out. Checked against the float64 reference at ragged sizes with GQA and
an odd head dim; a wrong buffer is a CodegenError naming what to pass.
"""

import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError

B, H, HKV, D = 2, 4, 2, 24


def _bnhd(n: int, heads: int, g: torch.Generator) -> torch.Tensor:
    """A (B, heads, n, D) view of (B, n, heads, D) memory, as transformers' q/k/v projections give."""
    return torch.randn(B, n, heads, D, generator=g).transpose(1, 2)


@pytest.mark.parametrize("spec,n_q,n_kv", [("causal", 37, 37), ("sliding_window:window=9", 21, 45),
                                            ("causal:align=offset", 21, 45)])
def test_strided_inputs_and_output_buffer_match_the_reference(spec, n_q, n_kv):
    g = torch.Generator().manual_seed(4)
    q, k, v = _bnhd(n_q, H, g), _bnhd(n_kv, HKV, g), _bnhd(n_kv, HKV, g)
    assert not q.is_contiguous() and not k.is_contiguous()
    f = einfuse.compile(spec, decode=False)
    runtime = {"q_offset": 11} if "offset" in spec else {}
    mem = torch.full((B, n_q, H, D), float("nan"))  # every element must be written
    f.kernel(q, k, v, out=mem.transpose(1, 2), **runtime)
    sizes = {"QOFF": 11} if runtime else None
    ref = run_cascade(einfuse.load_spec(spec), {"Q": q, "K": k, "V": v}, sizes=sizes)["O"]
    assert rel_err(mem.transpose(1, 2), ref) < 2e-5
    assert rel_err(f(q.contiguous(), k.contiguous(), v.contiguous(), **runtime), ref) < 2e-5


@pytest.mark.parametrize("bad,words", [
    (lambda: torch.empty(B, H, 21, D + 1), r"out must be a torch.float32 tensor of shape \(2, 4, 21, 24\)"),
    (lambda: torch.empty(B, H, 21, D, dtype=torch.float64), "got torch.float64"),
    (lambda: torch.empty(B, H, D, 21).transpose(2, 3), "last stride 1"),
])
def test_a_wrong_output_buffer_is_refused(bad, words):
    g = torch.Generator().manual_seed(5)
    q, k, v = _bnhd(21, H, g), _bnhd(21, HKV, g), _bnhd(21, HKV, g)
    with pytest.raises(CodegenError, match=words):
        einfuse.compile("causal", decode=False).kernel(q, k, v, out=bad())
