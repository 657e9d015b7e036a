"""What a compiled kernel is called with: anything but (B, H, N, D) float tensors with data is a
CodegenError naming the variant and what to pass, and inputs that need autograd are refused until
the kernels have a backward (instead of outputs that silently drop the graph)."""

import numpy as np
import pytest
import torch

import einfuse
from einfuse.errors import CodegenError

SPECS = ["softmax", "linear", "agent"]


@pytest.fixture(scope="module")
def compiled():
    return {s: einfuse.compile(s) for s in SPECS}


def _call(f, spec, q, k, v):
    extra = {"AG": torch.randn(1, 2, 4, 16)} if spec == "agent" else {}
    return f(q, k, v, **extra)


@pytest.mark.parametrize("spec", ["softmax", "linear"])
def test_inputs_that_require_grad_get_a_backward(compiled, spec):
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=i == 0) for i in range(3))
    out = compiled[spec](q, k, v)
    assert out.requires_grad
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("spec", [s for s in SPECS if s not in ("softmax", "linear")])
def test_inputs_that_require_grad_are_refused_naming_the_variant(compiled, spec):
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=i == 0) for i in range(3))
    with pytest.raises(CodegenError, match=f"{spec}: q requires grad.*no backward.*torch.no_grad"):
        _call(compiled[spec], spec, q, k, v)
    with torch.no_grad():  # inference on parameters that require grad is fine
        out = _call(compiled[spec], spec, q, k, v)
    assert out.shape == (1, 2, 8, 16) and not out.requires_grad


BAD = {
    "ndarray": (lambda: np.zeros((1, 2, 8, 16), np.float32), "must be a torch.Tensor.*got ndarray"),
    "list": (lambda: [[0.0] * 16] * 8, "must be a torch.Tensor.*got list"),
    "meta": (lambda: torch.zeros(1, 2, 8, 16, device="meta"), "meta tensor"),
    "int64": (lambda: torch.zeros(1, 2, 8, 16, dtype=torch.int64), "dtype torch.int64"),
    "3-d": (lambda: torch.zeros(2, 8, 16), r"shape \(B, H, N, D\)"),
}


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_kernel_inputs_are_codegen_errors(compiled, spec, bad):
    make, words = BAD[bad]
    good = torch.randn(1, 2, 8, 16)
    with pytest.raises(CodegenError, match=words):
        _call(compiled[spec], spec, make(), good, good)
