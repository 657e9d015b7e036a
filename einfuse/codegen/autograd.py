"""Autograd for compiled attention: ``out = attn(q, k, v); out.sum().backward()`` works eagerly.

:class:`AttentionFunction` runs the forward kernel with its log-sum-exp output switched on
(``STORE_LSE``), saves ``q, k, v, out, lse``, and in backward launches the generated backward
kernels (:mod:`einfuse.codegen.triton.backward`), built on the first backward call from the plan's
:func:`~einfuse.lowering.backward.backward_plan`. Calls without gradients never come here, so the
forward path stays as fast as before. Sigmoid plans save nothing (an all-zero ``lse`` stands in).
Plans without a backward (linear, staged, normalised sums) raise a
:class:`~einfuse.errors.CodegenError` naming the family when gradients are asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from einfuse.codegen.compile import CompiledAttention


def needs_grad(*tensors: Any) -> bool:
    """Whether autograd must record this call (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def backward_kernel(compiled: CompiledAttention) -> Any:
    """The compiled variant's backward kernel, built once (errors say which plans have none)."""
    kern = getattr(compiled, "_backward_kernel", None)
    if kern is None:
        from einfuse.codegen.triton.backward import build_backward
        from einfuse.errors import CodegenError
        from einfuse.lowering.backward import backward_plan

        if compiled.plan is None:
            raise CodegenError(f"{compiled.name}: no backward for {compiled.family} attention yet "
                               "(softmax and sigmoid one-pass plans only); call it under torch.no_grad() or detach the inputs")
        bp = backward_plan(compiled.plan)  # names the family when there is no backward plan
        if not hasattr(compiled.kernel, "forward_with_lse"):
            raise CodegenError(f"{compiled.name}: only the Triton target has a backward yet (this kernel is "
                               f"{type(compiled.kernel).__name__}); compile with target='triton' to train")
        kern = build_backward(getattr(compiled.kernel, "triton", compiled.kernel), bp,  # target='auto': Triton
                              **getattr(compiled, "backward_options", {}))
        compiled._backward_kernel = kern
    return kern


def forward_saving(compiled: CompiledAttention, q: Any, k: Any, v: Any, **runtime: Any) -> tuple[Any, Any]:
    """``(out, lse)``: the forward of a training call with what its backward reads (each query row's
    log-sum-exp). The backward is built first, so an unsupported plan fails before any work."""
    bwd = backward_kernel(compiled)
    if bwd.plan.family == "softmax":
        return compiled.kernel.forward_with_lse(q, k, v, **runtime)
    import torch

    out = bwd.forward(q, k, v, **runtime)  # sigmoid: nothing to save; zeros keep the ops' signature
    return out, torch.zeros(q.shape[:3], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                            device=q.device)


class AttentionFunction(torch.autograd.Function):
    """``out = attention(q, k, v)`` with the FlashAttention-2 backward of the variant's plan (eager
    calls; traced calls go through the ``einfuse::attention_train`` custom op, :mod:`torch_op`)."""

    @staticmethod
    def forward(ctx: Any, q: Any, k: Any, v: Any, compiled: CompiledAttention, runtime: dict,
                cap_names: tuple[str, ...] = (), *caps: Any) -> Any:
        bwd = backward_kernel(compiled)  # before the forward: an unsupported plan fails before any work
        out, lse = forward_saving(compiled, q, k, v, **runtime)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.bwd, ctx.runtime, ctx.cap_names = bwd, runtime, cap_names
        return out

    @staticmethod
    def backward(ctx: Any, dout: Any) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.bwd(q, k, v, out, lse, dout, **ctx.runtime)
        dcaps = []
        if ctx.cap_names:  # learned bias tables and other float captured tensors (capture_grad)
            from einfuse.codegen.triton.capture_grad import capture_grads

            dcaps = capture_grads(ctx.bwd, q, k, v, out, dout, lse, ctx.runtime, ctx.cap_names)
        return (dq, dk, dv, None, None, None, *dcaps)


def attention_with_grad(compiled: CompiledAttention, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
    """Run ``compiled`` on ``q, k, v`` recording the backward for autograd."""
    from einfuse.codegen.capture_args import grad_captures

    names, caps = grad_captures(compiled, runtime)  # captured tensors that require grad: inputs too
    if names and compiled.family != "softmax":
        from einfuse.errors import CodegenError

        raise CodegenError(f"{compiled.name}: gradients of captured tensors ({', '.join(names)}) are derived "
                           f"for the softmax backward only; this variant is {compiled.family} (its q/k/v "
                           "gradients work: detach the captured tensors or use softmax normalisation)")
    return AttentionFunction.apply(q, k, v, compiled, runtime, names, *caps)
