"""Run a split multi-stage cascade: stage kernels in order, then the elementwise combiners in torch.

:func:`einfuse.lowering.stages.compile_stages` builds the :class:`MultiStageAttention` defined here;
the split itself (which Einsums form which stage) lives in :mod:`einfuse.lowering.stages`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy

from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, Const, Expr, Unary
from einfuse.ir.printer import format_einsum
from einfuse.lowering.stages import Stage, StagePlan, qkv_names, split_stages

# ---- the elementwise evaluator -------------------------------------------------------------------

def eval_elementwise(c: Cascade, e: Einsum, env: Mapping[str, Any]) -> Any:
    """Evaluate an elementwise Einsum on torch tensors laid out ``(B, H, *ranks)``.

    Absent elements of stage outputs are 0 (the kernels' and the reference's convention), so sums
    and products of them agree with the reference's presence rules; a quotient by an absent element
    would not (it is not needed by any built-in).
    """
    import torch

    out_syms = [sympy.sympify(i) for i in e.output.indices]

    def access(a: Access) -> Any:
        x = env[a.tensor]
        pos = [list(a.indices).index(s) if s in a.indices else None for s in out_syms]
        extra = [i for i in range(len(a.indices)) if a.indices[i] not in out_syms]
        if extra:
            raise CodegenError(f"Einsum {e.name}: operand {a.tensor} is indexed by a rank not in the output")
        x = x.permute(0, 1, *[2 + p for p in pos if p is not None])
        shape = list(x.shape[:2])
        it = iter(x.shape[2:])
        for p in pos:
            shape.append(1 if p is None else next(it))
        return x.reshape(shape)

    unary_ops = {
        "exp": torch.exp, "log": torch.log, "neg": torch.neg, "sigmoid": torch.sigmoid,
        "relu": torch.relu, "reciprocal": torch.reciprocal, "tanh": torch.tanh, "sqrt": torch.sqrt,
        "abs": torch.abs, "square": torch.square, "sin": torch.sin, "cos": torch.cos, "tan": torch.tan,
        "elu1": lambda t: torch.nn.functional.elu(t) + 1.0,
    }
    binary_ops = {
        "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
        "max": torch.maximum, "min": torch.minimum,
    }

    def ev(x: Expr) -> Any:
        if isinstance(x, Access):
            return access(x)
        if isinstance(x, Const):
            return x.value
        if isinstance(x, Binary):
            left, right = ev(x.left), ev(x.right)
            if not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
                raise CodegenError(f"Einsum {e.name}: constant sub-expression {x} was not folded")
            if not isinstance(left, torch.Tensor):
                left = torch.as_tensor(left, dtype=right.dtype, device=right.device)
            return binary_ops[x.op](left, right)
        if isinstance(x, Unary):
            return unary_ops[x.op](ev(x.arg))
        raise CodegenError(f"Einsum {e.name}: the elementwise evaluator does not take {type(x).__name__} "
                           "nodes (index values, selects)")

    return ev(e.expr)


# ---- the compiled object -------------------------------------------------------------------------

@dataclass
class MultiStageAttention:
    """A compiled multi-stage cascade: call ``fn(q, k, v, **extra_inputs)`` (e.g. ``AG=agents``).

    Same interface as :class:`~einfuse.codegen.compile.CompiledAttention`; stages launch directly
    (no custom op). ``lowered`` is the tuple of the stages' lowered cascades, in execution order.
    """

    name: str
    cascade: Cascade
    plan: StagePlan
    kernels: tuple[Any, ...]
    family: str = "multistage"

    @property
    def lowered(self) -> tuple[Cascade, ...]:
        return tuple(k.lowered for k in self.kernels)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.plan.stages

    def __call__(self, q: Any, k: Any, v: Any, **extra_inputs: Any) -> Any:
        return self.run(q, k, v, **extra_inputs)

    def run(self, q: Any, k: Any, v: Any, **extra_inputs: Any) -> Any:
        from einfuse.codegen.compile import check_tensors

        c = self.cascade
        want = self.plan.extra_inputs
        unknown = sorted(set(extra_inputs) - set(want))
        missing = [t for t in want if t not in extra_inputs]
        if unknown or missing:
            raise CodegenError(f"{self.name}: call as fn(q, k, v{''.join(f', {t}=...' for t in want)}); "
                               + (f"missing {', '.join(missing)}" if missing else "")
                               + ("; " if missing and unknown else "")
                               + (f"unknown {', '.join(unknown)}" if unknown else ""))
        check_tensors(self.name, {"q": q, "k": k, "v": v, **extra_inputs})
        env: dict[str, Any] = dict(zip(qkv_names(c), (q, k, v)))
        env.update(extra_inputs)
        for st, kern in zip(self.plan.stages, self.kernels):
            args = (env[t].transpose(2, 3).contiguous() if f else env[t] for t, f in zip(st.bind, st.flip))
            out = kern.run(*args)
            env[st.output] = out.transpose(2, 3) if st.transpose else out
        for e in self.plan.combine:
            env[e.name] = eval_elementwise(c, e, env)
        return env[c.outputs[0]]

    @property
    def source(self) -> str:
        """Every stage's generated module, each under a header saying what it computes."""
        parts = []
        for i, (st, kern) in enumerate(zip(self.plan.stages, self.kernels), 1):
            q, k, v = st.bind
            parts.append(f"# ==== stage {i}/{len(self.kernels)}: {st.output} ({st.family}) = "
                         f"attention(q={q}, k={k}, v={v}); Einsums {', '.join(st.einsums)}\n"
                         f"{kern.source}")
        if self.plan.combine:
            lines = "\n".join(f"#   {format_einsum(self.cascade, e)}" for e in self.plan.combine)
            parts.append(f"# ==== combined with torch ops on the stage outputs:\n{lines}\n")
        return "\n".join(parts)


__all__ = ["MultiStageAttention", "eval_elementwise"]


def compile_stages(c: Cascade, *, sizes: Mapping[str, int] | None = None, decode: bool = True,
                   decode_options: Mapping[str, Any] | None = None, **options: Any) -> MultiStageAttention:
    """Split ``c`` (:func:`split_stages`) and compile each stage with the one-stage generators."""
    from einfuse.codegen.compile import compile as compile_one
    plan = split_stages(c)
    kernels = []
    for st in plan.stages:
        bound = {st.rank_map.get(n, n): int(v) for n, v in (sizes or {}).items()}
        kernels.append(compile_one(st.cascade, sizes=bound, decode=decode, decode_options=decode_options,
                                   torch_op=False, **options))
    return MultiStageAttention(c.name, c, plan, tuple(kernels))
