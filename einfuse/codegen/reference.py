"""Reference executor: evaluates any cascade on the CPU with NumPy (float64 by default).

It is the golden model for every pass and generated kernel, so it favours directness over speed.
Every tensor is a dense array plus a *presence* mask (the fibertree's non-empty coordinates):

* an iteration-space constraint removes points, which then contribute nothing to a reduction;
* ``*``, ``/`` and ``-`` intersect their operands' presence, ``+``, ``max`` and ``min`` take the union
  (an absent operand acts as the identity), unary operators pass presence through;
* a reduction over no present element is absent; reading past a rank's end (ragged tiles) is absent;
* a ``max`` (``min``) reduction whose result is ``-inf`` (``+inf``), the identity of the reduction, is
  absent too: in fibertree terms the identity is the empty value of a max-reduced tensor, so a score
  row sent entirely to ``-inf`` by a score_mod behaves like a fully masked row (output 0, as in
  FlexAttention and the generated kernels) instead of producing ``exp(-inf - -inf) = NaN``;
* cascade outputs are materialised with 0 where absent, so a fully masked query row yields 0.

Arrays are laid out ``(B, H, *ranks)``; an input may carry fewer heads than the queries (GQA/MQA):
query head ``h`` reads head ``h // (H // H_t)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.errors import ExecutionError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, Compare, Const, Empty, Expr, IndexValue, Select, Unary, substitute
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.ir.schedule import schedule
from einfuse.ir.symeval import evaluate, evaluate_int


@dataclass
class Value:
    """Dense data with a presence mask (``None`` = every element present)."""

    data: np.ndarray
    present: np.ndarray | None

    def mask(self) -> np.ndarray:
        return np.ones(self.data.shape, bool) if self.present is None else self.present


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


_UNARY = {
    "exp": np.exp, "log": np.log, "neg": np.negative, "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0), "reciprocal": lambda x: 1.0 / x, "tanh": np.tanh,
    "sqrt": np.sqrt, "abs": np.abs, "elu1": lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0))),
    "square": np.square, "sin": np.sin, "cos": np.cos, "tan": np.tan,
}
_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal,
            "ne": np.not_equal}
_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "max": np.maximum, "min": np.minimum,
}
_UNION_OPS = {"add", "max", "min"}


def _and(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


class _Executor:
    def __init__(self, c: Cascade, sizes: dict[sympy.Symbol, int], B: int, H: int, dtype: type) -> None:
        self.c, self.sizes, self.B, self.H, self.dtype = c, sizes, B, H, dtype
        self.values: dict[str, Value] = {}
        self.captured: dict = {}  # read function of each captured tensor -> float64 array

    # -- sizes -----------------------------------------------------------------------------------
    def extent(self, rank: str) -> int:
        ext = self.c.ranks[rank].extent.subs(self.sizes)
        if ext.free_symbols:
            missing = ", ".join(sorted(str(s) for s in ext.free_symbols))
            raise ExecutionError(f"extent of rank {rank} needs sizes {missing}; pass them in sizes=")
        return int(ext)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        t = self.c.tensors[name]
        return tuple(self.extent(r) + (1 if r in t.iterative else 0) for r in t.ranks)

    # -- evaluation ------------------------------------------------------------------------------
    def grid_env(self, vars_: list[sympy.Symbol]) -> tuple[dict, tuple[int, ...]]:
        n = len(vars_)
        shape = (self.B, self.H) + tuple(self.extent(self.c.rank_of_index(v).name) for v in vars_)
        env: dict[sympy.Symbol, object] = {s: np.float64(v) for s, v in self.sizes.items()}
        env.update(self.captured)
        env[BATCH_INDEX] = np.arange(self.B, dtype=np.float64).reshape((self.B, 1) + (1,) * n)
        env[HEAD_INDEX] = np.arange(self.H, dtype=np.float64).reshape((1, self.H) + (1,) * n)
        for k, v in enumerate(vars_):
            s = [1] * (n + 2)
            s[k + 2] = shape[k + 2]
            env[v] = np.arange(shape[k + 2], dtype=np.float64).reshape(s)
        return env, shape

    def read(self, a: Access, env: dict) -> Value:
        if a.tensor not in self.values:
            raise ExecutionError(f"tensor {a.tensor} is read before any Einsum writes it")
        src = self.values[a.tensor]
        shape = src.data.shape
        heads = shape[1]
        hidx = (env[HEAD_INDEX] // (self.H // heads)).astype(np.int64)
        idx_arrays, valid = [], None
        for k, ix in enumerate(a.indices):
            arr = evaluate_int(ix, env)
            ok = (arr >= 0) & (arr < shape[k + 2])
            valid = ok if valid is None else valid & ok
            idx_arrays.append(np.clip(arr, 0, shape[k + 2] - 1))
        bidx = env[BATCH_INDEX].astype(np.int64) * (1 if shape[0] > 1 else 0)  # batch 1 broadcasts (K/V)
        key = (bidx, hidx, *idx_arrays)
        data = src.data[key]
        present = None if src.present is None else src.present[key]
        if valid is not None and not valid.all():
            present = _and(present, np.broadcast_to(valid, np.broadcast_shapes(valid.shape, data.shape)))
        return Value(data, present)

    def eval(self, e: Expr, env: dict) -> Value:
        if isinstance(e, Access):
            return self.read(e, env)
        if isinstance(e, Const):
            return Value(np.asarray(e.value, dtype=self.dtype), None)
        if isinstance(e, Empty):
            return Value(np.asarray(0.0, dtype=self.dtype), np.asarray(False))
        if isinstance(e, IndexValue):
            return Value(evaluate(e.expr, env).astype(self.dtype), None)
        if isinstance(e, Unary):
            v = self.eval(e.arg, env)
            with np.errstate(all="ignore"):
                return Value(_UNARY[e.op](v.data), v.present)
        if isinstance(e, Binary):
            a, b = self.eval(e.left, env), self.eval(e.right, env)
            with np.errstate(all="ignore"):
                out = _BINARY[e.op](a.data, b.data)
            if e.op not in _UNION_OPS or (a.present is None and b.present is None):
                return Value(out, _and(a.present, b.present))
            pa, pb = a.mask() if a.present is not None else None, b.mask() if b.present is not None else None
            if pa is None:
                return Value(np.where(pb, out, a.data), None)
            if pb is None:
                return Value(np.where(pa, out, b.data), None)
            data = np.where(pa & pb, out, np.where(pa, a.data, b.data))
            return Value(data, pa | pb)
        if isinstance(e, Compare):
            a, b = self.eval(e.left, env), self.eval(e.right, env)
            return Value(_COMPARE[e.op](a.data, b.data), _and(a.present, b.present))
        if isinstance(e, Select):
            # a comparison of values is present where its operands are, and so is the select
            cv = self.eval(e.cond, env) if isinstance(e.cond, Compare) else Value(evaluate(e.cond, env), None)
            cond = np.asarray(cv.data).astype(bool)
            t, o = self.eval(e.then, env), self.eval(e.otherwise, env)
            data = np.where(cond, t.data, o.data)
            if t.present is None and o.present is None:
                return Value(data, cv.present)
            return Value(data, _and(cv.present, np.where(cond, t.mask() if t.present is not None else True,
                                                          o.mask() if o.present is not None else True)))
        raise ExecutionError(f"cannot evaluate expression node {e!r}")

    def run_einsum(self, e: Einsum) -> None:
        vars_ = self.c.iteration_vars(e)
        out_vars = [v for v in vars_ if v in e.output_symbols()]
        red_vars = [v for v in vars_ if v not in out_vars]
        env, shape = self.grid_env(out_vars + red_vars)
        fast = self._product_sum(e, env, shape, len(out_vars)) if red_vars else None
        if fast is not None:
            data, present = fast
        else:
            val = self.eval(e.expr, env)
            present = val.present
            if e.where is not None:
                present = _and(present, evaluate(e.where, env).astype(bool))
            data = np.broadcast_to(val.data, shape)
            present = None if present is None else np.broadcast_to(present, shape)
            axes = tuple(range(2 + len(out_vars), 2 + len(vars_)))
            if axes:
                data, present = self._reduce(e, data, present, axes)
        self.write(e, out_vars, env, data, present)

    def _reduce(self, e: Einsum, data: np.ndarray, present: np.ndarray | None, axes: tuple[int, ...]):
        if e.reduce == "sum":
            summed = np.sum(data if present is None else np.where(present, data, 0.0), axis=axes)
            return summed, None if present is None else np.any(present, axis=axes)
        ident = -np.inf if e.reduce == "max" else np.inf
        fn = np.max if e.reduce == "max" else np.min
        summed = fn(data if present is None else np.where(present, data, ident), axis=axes)
        found = summed != ident  # the identity is the empty value (module docstring)
        if present is not None:
            found &= np.any(present, axis=axes)
        return summed, None if found.all() else found

    def _product_sum(self, e: Einsum, env: dict, shape: tuple[int, ...], n_out: int):
        """``sum`` of a product of accesses and constants, as one ``np.einsum`` (saves the full grid)."""
        if e.reduce != "sum":
            return None
        factors: list[Expr] = []
        stack = [e.expr]
        while stack:
            n = stack.pop()
            if isinstance(n, Binary) and n.op == "mul":
                stack.extend([n.left, n.right])
            elif isinstance(n, (Access, Const, IndexValue)):
                factors.append(n)
            else:
                return None
        letters = "abcdefghijklmnopqrstuvwxyz"
        operands, pres_operands, subs = [], [], []
        any_absent = False
        for f in factors:
            v = self.eval(f, env)
            d = np.asarray(v.data, dtype=self.dtype)
            d = d.reshape((1,) * (len(shape) - d.ndim) + d.shape)
            p = None if v.present is None else np.broadcast_to(v.present, np.broadcast_shapes(v.present.shape, d.shape))
            if p is not None:
                any_absent = True
                d = np.where(p, np.broadcast_to(d, p.shape), 0.0)
            sub = "".join(letters[k] for k in range(len(shape)) if d.shape[k] != 1)
            operands.append(d.reshape([s for s in d.shape if s != 1]) if sub else d.reshape(()))
            pres_operands.append(None if p is None else p.reshape([s for s in p.shape if s != 1]).astype(self.dtype))
            subs.append(sub)
        if e.where is not None:
            w = np.asarray(evaluate(e.where, env), dtype=bool)
            w = w.reshape((1,) * (len(shape) - w.ndim) + w.shape)
            sub = "".join(letters[k] for k in range(len(shape)) if w.shape[k] != 1)
            wf = w.reshape([s for s in w.shape if s != 1]).astype(self.dtype)
            operands.append(wf)
            pres_operands.append(wf)
            subs.append(sub)
            any_absent = True
        out_sub = letters[: 2 + n_out]
        # broadcast any output axis that no operand carries
        out_shape = shape[: 2 + n_out]
        covered = set("".join(subs))
        extra = [k for k in range(2 + n_out) if letters[k] not in covered]
        data = np.einsum(",".join(subs) + "->" + "".join(ch for ch in out_sub if ch in covered),
                         *operands, optimize=True)
        if extra:
            data = np.expand_dims(data, extra)
        data = np.broadcast_to(data, out_shape)
        if not any_absent:
            return data, None
        pres_ops = [p if p is not None else np.ones(o.shape, self.dtype) for p, o in zip(pres_operands, operands)]
        count = np.einsum(",".join(subs) + "->" + "".join(ch for ch in out_sub if ch in covered),
                          *pres_ops, optimize=True)
        if extra:
            count = np.expand_dims(count, extra)
        return data, np.broadcast_to(count > 0, out_shape)

    def write(self, e: Einsum, out_vars: list[sympy.Symbol], env_full: dict, data: np.ndarray,
              present: np.ndarray | None) -> None:
        name = e.output.tensor
        if name not in self.values:
            shape = (self.B, self.H) + self.tensor_shape(name)
            self.values[name] = Value(np.zeros(shape, self.dtype), np.zeros(shape, bool))
        dst = self.values[name]
        env, _ = self.grid_env(out_vars)
        idx, valid = [], np.ones((1,) * (2 + len(out_vars)), bool)
        for k, ix in enumerate(e.output.indices):
            arr = evaluate_int(ix, env)
            valid = valid & (arr >= 0) & (arr < dst.data.shape[k + 2])
            idx.append(np.clip(arr, 0, dst.data.shape[k + 2] - 1))
        full = np.broadcast_shapes(data.shape, *(a.shape for a in idx), valid.shape)
        valid = np.broadcast_to(valid, full)
        key = tuple(np.broadcast_to(a, full)[valid] for a in
                    [env[BATCH_INDEX].astype(np.int64), env[HEAD_INDEX].astype(np.int64), *idx])
        dst.data[key] = np.broadcast_to(data, full)[valid]
        dst.present[key] = True if present is None else np.broadcast_to(present, full)[valid]

    def run(self) -> None:
        for group in schedule(self.c):
            if group.loop_var is None:
                self.run_einsum(self.c.einsums[group.einsums[0]])
                continue
            rank = self.c.rank_of_index(group.loop_var)
            for k in range(self.extent(rank.name)):
                for i in group.einsums:
                    self.run_einsum(_fix_var(self.c.einsums[i], group.loop_var, k))


def _fix_var(e: Einsum, var: sympy.Symbol, value: int) -> Einsum:
    m = {var: sympy.Integer(value)}
    out = Access(e.output.tensor, tuple(i.subs(m) for i in e.output.indices))
    where = None if e.where is None else e.where.subs(m)
    return Einsum(out, substitute(e.expr, m), e.reduce, where, e.comment)


def infer_sizes(c: Cascade, inputs: Mapping[str, np.ndarray],
                sizes: Mapping[str, int] | None = None) -> tuple[dict[sympy.Symbol, int], int, int]:
    """Bind size symbols from input shapes, ``sizes`` and the cascade's params; returns (sizes, B, H)."""
    bound: dict[sympy.Symbol, int] = {size_symbol(k): v for k, v in c.params.items()}
    for k, v in (sizes or {}).items():
        bound[size_symbol(k)] = v
    B = H = None
    for name in c.inputs:
        if name not in inputs:
            raise ExecutionError(f"missing input tensor {name}")
        arr = inputs[name]
        t = c.tensors[name]
        if arr.ndim != len(t.ranks) + 2:
            raise ExecutionError(
                f"input {name} must have shape (B, H, {', '.join(t.ranks)}); got {tuple(arr.shape)}")
        B = arr.shape[0] if B is None or B == 1 else B
        if arr.shape[0] not in (B, 1):  # an input of batch 1 is shared by every batch (K/V broadcast)
            raise ExecutionError(f"input {name}: batch {arr.shape[0]} differs from {B}")
        H = arr.shape[1] if H is None else max(H, arr.shape[1])
        for r, n in zip(t.ranks, arr.shape[2:]):
            ext = c.ranks[r].extent
            if isinstance(ext, sympy.Symbol):
                if ext in bound and bound[ext] != n:
                    raise ExecutionError(f"input {name}: rank {r} has size {n} but {ext} = {bound[ext]}")
                bound[ext] = n
            else:
                want = ext.subs(bound)
                if not want.free_symbols and int(want) != n:
                    raise ExecutionError(f"input {name}: rank {r} has size {n}, expected {want}")
    for name in c.inputs:
        if H % inputs[name].shape[1]:
            raise ExecutionError(
                f"input {name}: {inputs[name].shape[1]} heads do not divide the {H} query heads")
    bound[size_symbol("B")] = B
    bound[size_symbol("H")] = H
    for r in c.ranks.values():  # derived extents (M1 = ceiling(M/M0)) are sizes too
        ext = r.extent.subs(bound)
        if not ext.free_symbols:
            bound[size_symbol(r.name)] = int(ext)
    return bound, B, H


def run_cascade(c: Cascade, inputs: Mapping[str, object], sizes: Mapping[str, int] | None = None,
                dtype: type = np.float64, keep_intermediates: bool = False) -> dict[str, np.ndarray]:
    """Evaluate ``c`` on ``inputs`` (NumPy arrays or torch tensors, laid out ``(B, H, *ranks)``).

    Returns the cascade outputs (absent elements as 0), plus every intermediate when
    ``keep_intermediates`` is set, as float arrays of ``dtype``.
    """
    if not isinstance(c, Cascade):
        raise ExecutionError(f"run_cascade takes a Cascade (e.g. einfuse.load_spec('softmax')), got "
                             f"{type(c).__name__}")
    if not isinstance(inputs, Mapping):
        raise ExecutionError(f"inputs must be a dict of tensor name -> array (e.g. {{'Q': q, 'K': k, 'V': v}}), "
                             f"got {type(inputs).__name__}")
    captured = capture_arrays(c, inputs)
    arrays = {k: _to_numpy(k, v, dtype) for k, v in inputs.items() if k not in c.captures}
    for k, a in arrays.items():
        if a.size == 0:
            raise ExecutionError(f"input {k} is empty (shape {a.shape}); every size must be >= 1")
    for k, v in (sizes or {}).items():
        # rank extents are >= 1; a param may be 0 (a query offset QOFF, einfuse.ir.positions)
        least = 0 if k in c.params and k not in c.ranks else 1
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise ExecutionError(f"sizes[{k!r}] = {v!r} must be an integer >= {least}")
    bound, B, H = infer_sizes(c, arrays, sizes)
    ex = _Executor(c, bound, B, H, dtype)
    ex.captured = captured
    for name in c.inputs:
        ex.values[name] = Value(arrays[name], None)
    ex.run()
    names = list(c.outputs) + ([t for t in c.tensors if t not in c.outputs and t not in c.inputs]
                               if keep_intermediates else [])
    out = {}
    for n in names:
        if n not in ex.values:
            continue
        v = ex.values[n]
        out[n] = np.where(v.mask(), v.data, 0.0).astype(dtype)
    return out


def capture_arrays(c: Cascade, inputs: Mapping[str, object]) -> dict:
    """The captured tensors' values as float64 arrays keyed by their read functions: from
    ``inputs[name]`` when given there, else the tensor bound when the variant was declared."""
    out = {}
    for name, cap in c.captures.items():
        x = inputs.get(name, cap.value)
        if x is None:
            raise ExecutionError(f"captured tensor {name} has no value: pass it in inputs ({name!r}: array)")
        arr = _to_numpy(name, x, np.float64)
        if arr.ndim != cap.ndim or arr.size == 0:
            raise ExecutionError(f"captured tensor {name} must be a non-empty {cap.ndim}-d array; got shape "
                                 f"{tuple(arr.shape)}")
        out[cap.fn] = arr
    return out


def _to_numpy(name: str, x: object, dtype: type) -> np.ndarray:
    try:
        if hasattr(x, "detach"):
            x = x.detach().cpu().double().numpy()
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise ExecutionError(f"input {name} is not an array of numbers ({type(x).__name__}: "
                             f"{' '.join(str(exc).split())[:100]})") from None
