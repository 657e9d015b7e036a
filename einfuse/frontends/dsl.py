"""The attention DSL: declare a variant with plain Python functions of indices, get a cascade.

The common case is one call, as with FlexAttention::

    import einfuse as ef
    spec = ef.attention(score_mod=lambda s, b, h, q, kv: s + 0.5 * (kv - q),
                        mask_mod=lambda b, h, q, kv: q >= kv)

``score_mod(score, b, h, q_idx, kv_idx)`` and ``mask_mod(b, h, q_idx, kv_idx)`` are traced once with
symbolic arguments: indices are :class:`~einfuse.frontends.symbolic.Index` wrappers of sympy symbols
(so ``q >= kv`` and ``q // 32 == kv // 32`` are predicates and ``kv - q`` an index expression) and
``score`` is an IR expression (use ``ef.tanh``, ``ef.exp``, ``ef.where`` ... on it; ``s > 0`` is a
condition on the score).
The result is the naive 3-pass softmax cascade of the FuseMax paper, with the mask as the
iteration-space constraint of the score Einsum; passes lower it from there.

Index conventions of every built-in: queries ``Q[P,E]``, keys ``K[M,E]``, values ``V[M,F]``, output
``O[P,F]`` (the usual ``(B, H, N, D)`` layouts), ``p`` the query index and ``m`` the key index.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping

import sympy

from einfuse.errors import SpecError
from einfuse.frontends import symbolic
from einfuse.frontends.captured import tracing
from einfuse.ir.builder import CascadeBuilder, acc  # noqa: F401  (part of the DSL's API)
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Access, Compare, Condition, Const, Expr, as_expr, binary, unary
from einfuse.ir.positions import offset_params, query_position
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, KEY_INDEX, QUERY_INDEX, index_symbol, size_symbol

ScoreMod = Callable[..., object]
MaskMod = Callable[..., object]

p, m, e, f = QUERY_INDEX, KEY_INDEX, index_symbol("e"), index_symbol("f")
P, M, E, F = (size_symbol(n) for n in "PMEF")
b, h = BATCH_INDEX, HEAD_INDEX


def _call_user(fn: Callable[..., object], kind: str, args: tuple) -> object:
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n = len(args)
    if n != len(args):
        names = "(score, b, h, q_idx, kv_idx)" if kind == "score_mod" else "(b, h, q_idx, kv_idx)"
        raise SpecError(f"{kind} must take {len(args)} arguments {names}; it takes {n}")
    from einfuse.frontends.captured import substitute_tensors

    try:
        return substitute_tensors(fn)(*args)  # torch tensors the mod closes over become captures
    except SpecError:
        raise
    except Exception as exc:
        if "Index" in str(exc) and isinstance(exc, (IndexError, TypeError)):
            raise SpecError(f"{kind} indexes a tensor einfuse cannot see ({type(exc).__name__}: {exc}): only tensors "
                            "the mod reads as closure variables or module globals are captured; read it from a "
                            "variable (bias = self.bias) or index an ef.tensor(...)") from None
        raise SpecError(f"{kind} could not be traced symbolically: {type(exc).__name__}: {exc}. "
                        "Use einfuse functions (ef.exp, ef.tanh, ef.where, ef.maximum, ef.abs) instead of "
                        "torch/math ones") from None


_INDEX_ARGS = tuple(symbolic.Index(s) for s in (b, h, p, m))


def trace_mask(mask_mod: MaskMod | None) -> sympy.Basic | None:
    """The iteration-space constraint of a mask_mod (None for no mask)."""
    if mask_mod is None:
        return None
    pred = symbolic.unwrap(_call_user(mask_mod, "mask_mod", _INDEX_ARGS))
    if isinstance(pred, (Compare, Condition)):
        raise SpecError("mask_mod must not depend on the score; put conditions on the score in score_mod "
                        "(ef.where(s > t, s, -inf))")
    if isinstance(pred, bool):
        _check_constant_mask(mask_mod, pred)
        pred = sympy.true if pred else sympy.false
    if not isinstance(pred, sympy.Basic) or not (pred.is_Relational or isinstance(pred, sympy.logic.boolalg.Boolean)):
        raise SpecError(f"mask_mod must return a predicate such as q_idx >= kv_idx, got {pred!r}")
    if pred is sympy.false:
        raise SpecError("mask_mod masks every element (it is always False)")
    return None if pred is sympy.true else pred


# (b, h, q, kv) points where a mask that traced to a Python constant is called with plain integers
_PROBE = [(bb, hh, qq, kk) for bb in (0, 1) for hh in (0, 1, 3)
          for qq in (0, 1, 2, 3, 5, 8, 13, 31, 33, 64, 100, 129) for kk in (0, 1, 2, 4, 7, 15, 32, 34, 63, 97, 130)]


def _check_constant_mask(mask_mod: MaskMod, value: bool) -> None:
    """A mask that traced to a Python bool is either truly constant or compared sympy expressions
    structurally (``sympy.floor(q/32) == sympy.floor(kv/32)`` is False at trace time): call it on
    integers, where Python's operators are exact, and refuse it if the answer changes."""
    for point in _PROBE:
        try:
            got = _concrete_truth(symbolic.unwrap(mask_mod(*point)))
        except Exception:
            return  # not callable on plain integers: nothing to compare with
        if got is not None and got != value:
            raise SpecError(f"mask_mod traced to the constant {value} but is {got} at (b, h, q_idx, kv_idx) = "
                            f"{point}: {symbolic.PYTHON_BOOL_HINT}")


def _concrete_truth(x: object) -> bool | None:
    if isinstance(x, sympy.logic.boolalg.BooleanAtom):
        return x is sympy.true
    if isinstance(x, bool) or type(x).__name__ == "bool_":  # Python or NumPy bool
        return bool(x)
    return None


def aligned(fn: Callable[..., object] | None, align: str) -> Callable[..., object] | None:
    """``fn`` (a mask_mod or score_mod) called with the query's *position* under ``align``
    (:mod:`einfuse.ir.positions`) as its ``q_idx`` instead of the raw index ``p``."""
    if fn is None or align == "top_left":
        query_position(align)  # validates
        return fn
    qpos = symbolic.Index(query_position(align))  # traced like q_idx: == and != build predicates

    @functools.wraps(fn)  # the signature check of _call_user reads the user's function
    def call(*args: object) -> object:  # the user's function's own tensors are captured, not this wrapper's
        from einfuse.frontends.captured import substitute_tensors

        return substitute_tensors(fn)(*args[:-2], qpos, args[-1])
    return call


def trace_score(score_mod: ScoreMod | None, score: Expr) -> Expr:
    if score_mod is None:
        return score
    out = symbolic.unwrap(_call_user(score_mod, "score_mod", (score,) + _INDEX_ARGS))
    try:
        return as_expr(out)
    except TypeError as exc:
        raise SpecError(f"score_mod returned something that is not a score: {exc}") from None


def default_scale(head_rank: str = "E") -> sympy.Expr:
    """SDPA's and FlexAttention's default score scale, ``1/sqrt(E)`` of the head dimension ``E``.

    A size symbol, not a number: the cascade states the rule (``QK[m,p] = Q[p,e] * K[m,e] *
    idx(1/sqrt(E))``) and every back end binds ``E`` to the head dimension of the inputs it is
    called with, as SDPA does.
    """
    return 1 / sympy.sqrt(size_symbol(head_rank))


def scale_factor(scale: float | sympy.Expr | None) -> Expr | None:
    """The factor a score product is multiplied by (None: no factor, i.e. a scale of 1)."""
    if scale is None:
        return None
    if isinstance(scale, sympy.Basic) and not scale.is_number:
        return as_expr(scale)
    value = float(scale)
    return None if value == 1.0 else Const(value)


def qk_einsums(cb: CascadeBuilder, scale: float | sympy.Expr | None, score_mod: ScoreMod | None,
               mask_mod: MaskMod | None, q: str = "Q", k: str = "K") -> Access:
    """Add the score Einsums ``QK[m,p] = Q[p,e]*K[m,e]*scale : mask`` and, with a score_mod,
    ``S[m,p]`` to ``cb``; return the access to the final score (``QK`` or ``S``).

    Public because every builder of an attention-like cascade must write the score exactly as
    :func:`attention` does (same tensor names, same mask on both Einsums) for its cascade to be
    comparable; the kernel plan check restates plans through it. ``scale=None`` or 1 adds no factor
    (this low-level builder has no default; :func:`attention` applies :func:`default_scale`).
    """
    qa, ka = cb.input(q, "P", "E"), cb.input(k, "M", "E")
    where = trace_mask(mask_mod)
    prod: Expr = binary("mul", qa, ka)
    factor = scale_factor(scale)
    if factor is not None:
        prod = binary("mul", prod, factor)
    qk = cb.einsum("QK", ("M", "P"), prod, where=where, comment="scores")
    modded = trace_score(score_mod, qk)
    if modded == qk:
        return qk
    # the mask constrains the modified score too: "+" of an absent score and a present index term
    # would otherwise make masked points present again (ALiBi under a causal mask)
    return cb.einsum("S", ("M", "P"), modded, reduce=None, where=where, comment="score_mod")


def attention(name: str = "attention", *, score_mod: ScoreMod | None = None,
              mask_mod: MaskMod | None = None, scale: float | None = None,
              normalization: str = "softmax", head_dim: int | None = None,
              bias: float | None = None, params: Mapping[str, float] | None = None,
              align: str = "top_left") -> Cascade:
    """Softmax (or sigmoid) attention as the naive 3-pass cascade.

    ``scale`` multiplies ``Q.K``. Without it the scale is ``1/sqrt(head_dim)`` when ``head_dim`` is
    given, else ``1/sqrt(D)`` of the inputs' head dimension ``D`` at call time (SDPA's and
    FlexAttention's default; the cascade reads ``* idx(1/sqrt(E))``); ``scale=1`` leaves the score
    unscaled. ``normalization="sigmoid"`` gives sigmoid
    attention ``sigmoid(score + bias) @ V`` (FlashSigmoid), which needs no reduction over keys.
    ``params`` declares named sizes (upper case, with default values) that the mask or score may
    mention, e.g. the grid sizes of neighbourhood attention; they stay symbolic in the cascade and
    can be overridden at run time (``run_cascade(..., sizes=...)``).
    ``align`` says what ``q_idx`` the functions receive when there are fewer queries than keys:
    ``"top_left"`` (the raw query index, FlexAttention's meaning), ``"bottom_right"`` (the query's
    position ``q + M - P`` at the end of the keys, as over a KV cache) or ``"offset"`` (``q + QOFF``,
    ``QOFF`` given per call); see :mod:`einfuse.ir.positions`.
    """
    if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, numbers.Integral)
                                 or head_dim < 1):
        raise SpecError(f"head_dim must be a positive integer (or None: 1/sqrt(D) of the inputs), got {head_dim!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale) or scale <= 0):
        raise SpecError(f"scale must be a finite number > 0 (or None: 1/sqrt(head_dim)), got {scale!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim) if head_dim is not None else default_scale()
    if bias is not None and (isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not math.isfinite(bias)):
        raise SpecError(f"bias must be a finite number, got {bias!r}")
    _check_name(name)
    _check_params(params or {})
    cb = CascadeBuilder(name)
    cb.params.update(params or {})
    cb.params.update(offset_params(align))
    cb.attrs["family"] = normalization
    with tracing() as seen:  # captured tensors the mods read (einfuse.frontends.captured)
        score = qk_einsums(cb, scale, aligned(score_mod, align), aligned(mask_mod, align))
    cb.captures.update(seen)
    va = cb.input("V", "M", "F")
    if normalization == "softmax":
        gm = cb.einsum("GM", ("P",), score, reduce="max", comment="pass 1: global max")
        sn = cb.einsum("SN", ("M", "P"), unary("exp", binary("sub", score, gm)), reduce=None,
                       comment="pass 2: numerator")
        sd = cb.einsum("SD", ("P",), sn, comment="denominator")
        a = cb.einsum("A", ("M", "P"), binary("div", sn, sd), reduce=None, comment="pass 3: normalise")
        cb.einsum("O", ("P", "F"), binary("mul", a, va), output=True)
    elif normalization == "sigmoid":
        arg = score if not bias else binary("add", score, Const(bias))
        # the bias is present everywhere, so `score + bias` would unmask masked points: keep the mask
        mask = next(ev.where for ev in cb.einsums if ev.name == "QK")
        a = cb.einsum("A", ("M", "P"), unary("sigmoid", arg), reduce=None, where=mask)
        cb.einsum("O", ("P", "F"), binary("mul", a, va), output=True)
    else:
        raise SpecError(f"normalization {normalization!r} is not one of softmax, sigmoid")
    return cb.build()


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip() or len(name.split()) != 1:
        raise SpecError(f"a cascade name is one word (e.g. 'my_attention'), got {name!r}")


def _check_params(params: Mapping[str, float]) -> None:
    """Named sizes: upper-case names (``W``, ``X0``) with finite numeric defaults."""
    if not isinstance(params, Mapping):
        raise SpecError(f"params must be a dict of NAME: number, got {type(params).__name__}")
    for k, v in params.items():
        if not isinstance(k, str) or not k[:1].isupper() or not k.isalnum() or k != k.upper():
            raise SpecError(f"param {k!r}: size names are upper case, e.g. W or X0")
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise SpecError(f"param {k} = {v!r} must be a finite number")


FEATURE_MAPS = ("identity", "elu1", "relu", "exp")


def linear_attention(name: str = "linear", *, feature_map: str = "identity", causal: bool = True,
                     decay: bool | str = False, normalize: bool = False,
                     mask_mod: MaskMod | None = None, align: str = "top_left") -> Cascade:
    """Linear attention ``O = (phi(Q) phi(K)^T [* decay] [masked]) V``, optionally normalised.

    ``decay=True`` uses Lightning Attention's per-head rate ``s_h = 2**(-8(h+1)/H)`` and multiplies
    each score by ``exp(-s_h (p - m))``. Written quadratically here; the lightning split pass
    rewrites it into intra-block and inter-block (running KV state) parts. ``align`` places the
    queries among the keys as in :func:`attention` (for the causal mask and the decay too).
    """
    if feature_map not in FEATURE_MAPS:
        raise SpecError(f"feature_map {feature_map!r} is not one of {', '.join(FEATURE_MAPS)}")
    _check_name(name)
    cb = CascadeBuilder(name)
    cb.params.update(offset_params(align))
    cb.attrs["family"] = "linear"
    qpos = query_position(align)
    qa, ka = cb.input("Q", "P", "E"), cb.input("K", "M", "E")
    va = cb.input("V", "M", "F")
    if feature_map != "identity":
        qa = cb.einsum("FQ", ("P", "E"), unary(feature_map, qa), reduce=None, comment="feature map")
        ka = cb.einsum("FK", ("M", "E"), unary(feature_map, ka), reduce=None)
    where = trace_mask(aligned(mask_mod, align)) if mask_mod is not None else (m <= qpos if causal else None)
    score = cb.einsum("QK", ("M", "P"), binary("mul", qa, ka), where=where, comment="scores")
    if decay:
        rate = sympy.Integer(2) ** (-8 * (h + 1) / size_symbol("H"))
        score = cb.einsum("A", ("M", "P"), binary("mul", score, as_expr(sympy.exp(-rate * (qpos - m)))),
                          reduce=None, comment="decay")
    if normalize:
        den = cb.einsum("SD", ("P",), score, comment="normaliser")
        num = cb.einsum("NV", ("P", "F"), binary("mul", score, va))
        cb.einsum("O", ("P", "F"), binary("div", num, den), reduce=None, output=True)
    else:
        cb.einsum("O", ("P", "F"), binary("mul", score, va), output=True)
    return cb.build()
