"""The ``einfuse::`` torch custom ops, so compiled kernels work under ``torch.compile``, forward and backward.

Three ops serve every compiled variant; their first argument is the variant's key (a string, a
constant to the compiler), looked up in a registry filled by :func:`register`, and their last the
call's runtime options as text (``q_offset``, ``block_m`` ...; ``""`` when none, :func:`options_text`), so a
traced call takes the same options as an eager one:

* ``einfuse::attention(key, q, k, v, options) -> out``: inference (any family, decode kernel for
  short query blocks);
* ``einfuse::attention_train(key, q, k, v, options) -> (out, lse)``: the forward that saves what
  the backward needs (each query row's log-sum-exp; zeros for plans without a normaliser), with an
  autograd formula (:func:`torch.library.register_autograd`) that calls
* ``einfuse::attention_backward(key, q, k, v, out, lse, dout, options) -> (dq, dk, dv)``.

The fake (meta) kernels only state shapes and dtypes (``out`` like ``(B, H, N_q, D_v)`` in q's
dtype, ``lse`` ``(B, H, N_q)`` in float32, float64 for float64 inputs, gradients like their
inputs), which is all Dynamo, AOTAutograd and Inductor need to trace around opaque Triton launches:
``torch.compile(model)`` keeps one graph and its backward graph calls ``attention_backward``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, Callable[..., Any]] = {}
_TRAIN: dict[str, Any] = {}
_DEFINED = False
OP_NAME = "einfuse::attention"
TRAIN_OP = "einfuse::attention_train"
BACKWARD_OP = "einfuse::attention_backward"


def register(key: str, fn: Callable[..., Any], compiled: Any = None) -> None:
    """Make ``torch.ops.einfuse.attention(key, q, k, v, options)`` call ``fn(q, k, v, **options)``;
    with ``compiled`` (a :class:`~einfuse.codegen.compile.CompiledAttention` that has a backward)
    the training ops serve ``key`` too."""
    _ensure_op()
    _REGISTRY[key] = fn
    if compiled is not None:
        _TRAIN[key] = compiled


def options_text(runtime: dict[str, Any]) -> str:
    """The runtime options as the ops' ``options`` argument: ``name=repr(value)`` joined by ``;`` in
    name order (plain Python formatting, which Dynamo traces; ``json.dumps`` it does not)."""
    for name, value in runtime.items():
        if not isinstance(value, (bool, int, float, str, type(None))) or (isinstance(value, str) and ";" in value):
            from einfuse.errors import CodegenError

            raise CodegenError(f"runtime option {name}={value!r}: under the einfuse custom ops options must be "
                               "plain ints, floats, strings or bools")
    return ";".join(f"{name}={runtime[name]!r}" for name in sorted(runtime))


def parse_options(text: str) -> dict[str, Any]:
    """The inverse of :func:`options_text`."""
    import ast

    return {name: ast.literal_eval(value) for name, value in (part.split("=", 1) for part in text.split(";") if part)}


def call(key: str, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
    import torch

    return torch.ops.einfuse.attention(key, q, k, v, options_text(runtime))


def call_train(key: str, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
    """The output of the trainable op (its log-sum-exp stays inside the autograd graph)."""
    import torch

    out, _ = torch.ops.einfuse.attention_train(key, q, k, v, options_text(runtime))
    return out


def _lookup(table: dict[str, Any], key: str, what: str) -> Any:
    if key not in table:
        from einfuse.errors import CodegenError

        raise CodegenError(f"einfuse::{what}: no compiled kernel {key!r} in this process "
                           "(call einfuse.compile first)")
    return table[key]


def _lse_like(q: Any) -> Any:
    import torch

    return q.new_empty(q.shape[:3], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def _ensure_op() -> None:
    global _DEFINED
    if _DEFINED:
        return
    import torch

    @torch.library.custom_op(OP_NAME, mutates_args=(),
                             schema="(str key, Tensor q, Tensor k, Tensor v, str options) -> Tensor")
    def attention(key, q, k, v, options):
        return _lookup(_REGISTRY, key, "attention")(q, k, v, **parse_options(options))

    @attention.register_fake
    def _(key, q, k, v, options):
        return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))

    @torch.library.custom_op(TRAIN_OP, mutates_args=(),
                             schema="(str key, Tensor q, Tensor k, Tensor v, str options) -> (Tensor, Tensor)")
    def attention_train(key, q, k, v, options):
        from einfuse.codegen.autograd import forward_saving

        return forward_saving(_lookup(_TRAIN, key, "attention_train"), q, k, v, **parse_options(options))

    @attention_train.register_fake
    def _(key, q, k, v, options):
        return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3])), _lse_like(q)

    @torch.library.custom_op(BACKWARD_OP, mutates_args=(),
                             schema="(str key, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, "
                                    "str options) -> (Tensor, Tensor, Tensor)")
    def attention_backward(key, q, k, v, out, lse, dout, options):
        from einfuse.codegen.autograd import backward_kernel

        bwd = backward_kernel(_lookup(_TRAIN, key, "attention_backward"))
        return tuple(g.contiguous() for g in bwd(q, k, v, out, lse, dout, **parse_options(options)))

    @attention_backward.register_fake
    def _(key, q, k, v, out, lse, dout, options):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)   # contiguous, as the kernels'

    def setup_context(ctx, inputs, output):
        key, q, k, v, options = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key, ctx.options = key, options
        ctx.mark_non_differentiable(lse)

    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.einfuse.attention_backward(ctx.key, q, k, v, out, lse, dout.contiguous(), ctx.options)
        return None, dq, dk, dv, None

    attention_train.register_autograd(backward, setup_context=setup_context)
    _DEFINED = True
