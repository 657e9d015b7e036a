"""Neighborhood attention (NA) over 1-D, 2-D and 3-D token layouts, with NATTEN's semantics.

The token sequence is the row-major flattening of a grid of shape ``(X0, ..., Xn-1)``: flat index ``t``
has coordinate ``c_i(t) = floor(t / (X_{i+1} * ... * X_{n-1})) mod X_i`` on axis ``i``. Key ``m`` is
visible to query ``p`` when it is visible along every axis. Along one axis of length ``L``, with kernel
``k``, dilation ``d``, stride ``s`` and a causal flag (the semantics of NATTEN's reference mask,
NATTEN >= 0.20):

* **Dilation** splits the axis into ``d`` interleaved groups ``{g, g+d, g+2d, ...}``. A query sees only
  keys of its own group (``c mod d`` equal), and everything below works on positions *within* the
  group, ``x = floor(c / d)``, whose length is ``L_g = ceil((L - g) / d)``.
* **Stride** tiles the group's queries into runs of ``s`` consecutive positions; every query of a run
  uses the window of one *leader*: the middle query ``floor(x/s)*s + floor(s/2)`` (the right-hand
  middle for even ``s``) when not causal, the last one ``floor(x/s)*s + s - 1`` when causal; either is
  clamped to ``L_g - 1`` (a short last run).
* **Non-causal window**: ``k`` keys, ``left = floor(k/2)`` before the leader and ``k - 1 - left`` after
  it (an even kernel has one fewer key after). At the borders the window is *shifted*, not truncated:
  ``start = clamp(leader - left, 0, L_g - k)``, so every query sees exactly ``k`` keys per axis.
* **Causal window**: keys from ``max(leader - k + 1, 0)`` up to and including the query itself: ``k``
  keys once the query is far enough from the start, fewer before that (and, with a stride, for the
  queries of a run that come before its leader).
* Like NATTEN, options are rejected unless ``k * d <= L`` on every axis (so no dilation group is shorter
  than the kernel: NATTEN refuses that case rather than defining it), ``2 <= k``, ``1 <= s <= k``,
  ``d >= 1``. NATTEN accepts even kernels, and so do we.

The constraint is one sympy predicate over the flat ``p`` and ``m`` (``floor``/``Mod``/``Min``/``Max``),
with the grid sizes as cascade params ``X0, X1, X2`` so that it stays symbolic: the tokens must number
``X0*...*Xn-1``, and other grid sizes can be bound at run time (``run_cascade(c, x, sizes={"X1": 9})``).
``na1d`` without a ``shape`` uses the key length ``M`` itself as the axis length. The keys are the
grid's tokens; fewer queries than keys are its *last* tokens by default (query ``p`` is token
``p + M - P``, ``align=bottom_right``: generating the last frames of a video with a cache of the
earlier ones), the first ones with ``align=top_left`` (see :mod:`einfuse.ir.positions`).

Options take one value for every axis or one per axis: ``na2d:shape=96x96,kernel=13,dilation=2``,
``na3d:shape=8x16x16,kernel=3x7x7,causal=1x0x0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sympy

from einfuse.errors import SpecError
from einfuse.frontends import dsl
from einfuse.frontends.library import _scale, builtin
from einfuse.ir.cascade import Cascade
from einfuse.ir.positions import check_align, offset_params, query_position
from einfuse.ir.ranks import size_symbol

PerAxis = int | bool | Sequence[int] | Sequence[bool]

AXIS_SIZE_NAMES = ("X0", "X1", "X2")


def _per_axis(option: str, value: PerAxis, ndim: int) -> tuple[int, ...]:
    """One integer per axis from an int, a 1-tuple (broadcast) or an ``ndim``-tuple."""
    vals = (value,) if isinstance(value, (int, bool)) else tuple(value)
    if len(vals) == 1:
        vals = vals * ndim
    if len(vals) != ndim:
        raise SpecError(f"option {option} has {len(vals)} values but the layout has {ndim} axes "
                        f"(give one value, or {ndim} separated by x)")
    try:
        return tuple(int(v) for v in vals)
    except (TypeError, ValueError):
        raise SpecError(f"option {option} must be integers, got {value!r}") from None


def _check(option: str, vals: tuple[int, ...], lo: int) -> None:
    for i, v in enumerate(vals):
        if v < lo:
            raise SpecError(f"option {option} must be >= {lo} on every axis, got {v} on axis {i}")


def axis_window(c_q: sympy.Expr, c_k: sympy.Expr, length: sympy.Expr, kernel: int, dilation: int,
                stride: int, causal: bool) -> sympy.Basic:
    """Predicate: key coordinate ``c_k`` is in the neighbourhood of query coordinate ``c_q`` on one axis."""
    if dilation > 1:
        same_group = sympy.Eq(sympy.Mod(c_q, dilation), sympy.Mod(c_k, dilation))
        xq, xk = sympy.floor(c_q / dilation), sympy.floor(c_k / dilation)
        group_len = sympy.floor((length - sympy.Mod(c_q, dilation) + dilation - 1) / dilation)
    else:
        same_group, xq, xk, group_len = sympy.true, c_q, c_k, length
    run = sympy.floor(xq / stride) * stride
    if causal:
        leader = xq if stride == 1 else sympy.Min(run + stride - 1, group_len - 1)
        return same_group & (xk <= xq) & (leader - xk < kernel)
    left = kernel // 2
    leader = xq if stride == 1 else sympy.Min(run + stride // 2, group_len - 1)
    start = sympy.Min(sympy.Max(leader - left, 0), group_len - kernel)
    return same_group & (xk >= start) & (xk < start + kernel)


def flat_coordinates(flat: sympy.Expr, sizes: Sequence[sympy.Expr]) -> list[sympy.Expr]:
    """Row-major coordinates of a flat index on a grid of ``sizes``."""
    coords = []
    for i in range(len(sizes)):
        inner = sympy.Mul(*sizes[i + 1:])
        c = flat if inner == 1 else sympy.floor(flat / inner)
        coords.append(sympy.Mod(c, sizes[i]) if i > 0 else c)
    return coords


def neighborhood_mask(kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int],
                      causal: Sequence[bool], sizes: Sequence[sympy.Expr],
                      align: str = "top_left") -> sympy.Basic:
    """The NA constraint over flat ``p`` (query) and ``m`` (key) on a grid of (symbolic) ``sizes``;
    the query's flat token is its position under ``align`` (einfuse.ir.positions)."""
    cq, ck = flat_coordinates(query_position(align), sizes), flat_coordinates(dsl.m, sizes)
    terms = [axis_window(cq[i], ck[i], sizes[i], kernel[i], dilation[i], stride[i], bool(causal[i]))
             for i in range(len(sizes))]
    return sympy.And(*terms)


def neighborhood_attention(ndim: int, kernel: PerAxis, dilation: PerAxis = 1, stride: PerAxis = 1,
                           causal: PerAxis = False, shape: Sequence[int] = (), head_dim: int = 0,
                           scale: float = 0.0, align: str = "bottom_right") -> Cascade:
    """Softmax attention restricted to the NATTEN neighbourhood (see the module docstring). With
    fewer queries than tokens, the queries are the last tokens of the grid (``align``)."""
    k = _per_axis("kernel", kernel, ndim)
    d = _per_axis("dilation", dilation, ndim)
    s = _per_axis("stride", stride, ndim)
    cz = _per_axis("causal", causal, ndim)
    _check("kernel", k, 2)
    _check("dilation", d, 1)
    _check("stride", s, 1)
    if any(v not in (0, 1) for v in cz):
        raise SpecError(f"option causal must be true/false (or 1/0) per axis, got {causal!r}")
    for i, (ki, si) in enumerate(zip(k, s)):
        if si > ki:
            raise SpecError(f"option stride must be <= kernel on every axis, got stride {si} > kernel {ki} "
                            f"on axis {i}")
    params: dict[str, float] = {}
    if not shape and ndim == 1:
        sizes: list[sympy.Expr] = [size_symbol("M")]
    else:
        grid = _per_axis("shape", shape, ndim) if shape else ()
        if len(grid) != ndim:
            raise SpecError(f"option shape needs {ndim} sizes (e.g. shape={'x'.join(['16'] * ndim)})")
        _check("shape", grid, 1)
        for i, (L, ki, di) in enumerate(zip(grid, k, d)):
            if ki * di > L:
                raise SpecError(f"option kernel*dilation must be <= shape on every axis; axis {i} has "
                                f"kernel {ki} * dilation {di} = {ki * di} > shape {L}")
        names = AXIS_SIZE_NAMES[:ndim]
        params = {n: float(v) for n, v in zip(names, grid)}
        sizes = [size_symbol(n) for n in names]
    where = neighborhood_mask(k, d, s, [bool(v) for v in cz], sizes, check_align(align))
    c = dsl.attention(f"na{ndim}d", mask_mod=lambda b_, h_, q, kv: where, scale=_scale(head_dim, scale),
                      params={**params, **offset_params(align)})
    info = {"ndim": ndim, "shape": list(_per_axis("shape", shape, ndim)) if shape else [],
            "kernel": list(k), "dilation": list(d), "stride": list(s), "causal": [bool(v) for v in cz]}
    return c.replace(attrs={**c.attrs, "neighborhood": info})


@builtin("na1d")
def na1d(kernel: tuple = (7,), dilation: tuple = (1,), stride: tuple = (1,), causal: tuple = (False,),
         shape: tuple = (), head_dim: int = 0, scale: float = 0.0, align: str = "bottom_right") -> Cascade:
    """1-D neighborhood attention (NATTEN): shifted k-window per query, dilation, stride, causal."""
    return neighborhood_attention(1, kernel, dilation, stride, causal, shape, head_dim, scale, align)


@builtin("na2d")
def na2d(shape: tuple = (16, 16), kernel: tuple = (7,), dilation: tuple = (1,), stride: tuple = (1,),
         causal: tuple = (False,), head_dim: int = 0, scale: float = 0.0,
         align: str = "bottom_right") -> Cascade:
    """2-D neighborhood attention (NATTEN) over a row-major flattened X0 x X1 grid."""
    return neighborhood_attention(2, kernel, dilation, stride, causal, shape, head_dim, scale, align)


@builtin("na3d")
def na3d(shape: tuple = (8, 8, 8), kernel: tuple = (3,), dilation: tuple = (1,), stride: tuple = (1,),
         causal: tuple = (False,), head_dim: int = 0, scale: float = 0.0,
         align: str = "bottom_right") -> Cascade:
    """3-D neighborhood attention (NATTEN) over a row-major flattened X0 x X1 x X2 grid."""
    return neighborhood_attention(3, kernel, dilation, stride, causal, shape, head_dim, scale, align)


def grid_tokens(shape: Sequence[int]) -> int:
    """Number of tokens of a grid (the P = M extent a NA cascade expects)."""
    return math.prod(shape)


__all__ = ["axis_window", "flat_coordinates", "grid_tokens", "na1d", "na2d", "na3d", "neighborhood_attention",
           "neighborhood_mask"]
