"""The built-in variant library and the ``name:key=value,...`` spec syntax.

Every built-in is a plain function returning a cascade, registered with :func:`builtin`; its keyword
arguments are its options, so ``sliding_window:window=256`` calls ``sliding_window(window=256)``.
Options are converted to the type of the function's default value, and unknown options are rejected
with the list of valid ones.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import sympy

from einfuse.errors import SpecError
from einfuse.frontends import dsl
from einfuse.frontends.dsl import h, m, p
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import tanh
from einfuse.ir.positions import check_align


@dataclass(frozen=True)
class Builtin:
    name: str
    fn: Callable[..., Cascade]
    summary: str

    def options(self) -> dict[str, object]:
        return {k: v.default for k, v in inspect.signature(self.fn).parameters.items()}


BUILTINS: dict[str, Builtin] = {}


def builtin(name: str) -> Callable[[Callable[..., Cascade]], Callable[..., Cascade]]:
    def register(fn: Callable[..., Cascade]) -> Callable[..., Cascade]:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        BUILTINS[name] = Builtin(name, fn, summary)
        return fn
    return register


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _convert(name: str, key: str, text: str, default: object) -> object:
    """Convert an option's text to the type of its default; tuples are per-axis values ``7x5``
    (or ``7/5``), of booleans when the default holds booleans (``causal=1x0``, ``true/false``)."""
    try:
        if isinstance(default, bool):
            return _parse_bool(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float) or default is None:
            return float(text) if default is not None or _is_number(text) else text
        if isinstance(default, tuple):
            items = text.replace("x", "/").split("/")
            if default and all(isinstance(v, bool) for v in default):
                return tuple(_parse_bool(x) for x in items)
            return tuple(int(x) for x in items)
        return text
    except ValueError:
        kind = "per-axis tuple such as 7x5" if isinstance(default, tuple) else type(default).__name__
        raise SpecError(f"{name}: option {key}={text!r} is not a valid {kind}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``"na2d:kernel=7,dilation=2"`` -> ``("na2d", {"kernel": 7, "dilation": 2})`` (typed)."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in BUILTINS:
        import difflib

        close = difflib.get_close_matches(name, list(BUILTINS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else "; `einfuse list` shows them"
        raise SpecError(f"unknown built-in variant {name!r}{hint}")
    defaults = BUILTINS[name].options()
    options: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in _split_options(rest))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise SpecError(f"{name}: option {key!r} needs a value (key=value)")
        if key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise SpecError(f"{name}: unknown option {key!r}; valid options: {valid}")
        if key in options:
            raise SpecError(f"{name}: option {key!r} is given twice")
        options[key] = _convert(name, key, value.strip(), defaults[key])
    return name, options


def _split_options(text: str) -> list[str]:
    """Split on commas that start a new ``key=`` (so ``shape=16x32x32`` and lists stay whole)."""
    parts: list[str] = []
    for piece in text.split(","):
        if parts and "=" not in piece:
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    return parts


def load_builtin(spec: str) -> Cascade:
    name, options = parse_spec(spec)
    try:
        return BUILTINS[name].fn(**options)
    except SpecError as exc:
        raise SpecError(f"{name}: {exc}") from None


# ---- softmax family ----------------------------------------------------------------------------
#
# Variants whose mask or score compares positions take ``align`` (einfuse.ir.positions): with fewer
# queries than keys, query p sits at position p + M - P by default (``bottom_right``: the queries are
# the newest tokens, as over a KV cache), at p with ``top_left``, at p + QOFF with ``offset`` (QOFF
# given per call). Inside the mask and score lambdas below, ``q`` is that position.

def _align(align: str, positional: bool) -> str:
    """``align`` checked; variants with nothing positional (no causal mask) keep plain indices, so
    their cascade does not change with an option it does not use."""
    check_align(align)
    return align if positional else "top_left"


def _scale(head_dim: int, scale: float) -> float | None:
    """The score scale: ``scale`` if set, else ``1/sqrt(head_dim)`` if set, else None: the default
    ``1/sqrt(D)`` of the inputs' head dimension D at call time (as SDPA and FlexAttention)."""
    if head_dim < 0:
        raise SpecError(f"option head_dim must be >= 0 (0 = not given), got {head_dim}")
    if not math.isfinite(scale) or scale < 0:
        raise SpecError(f"option scale must be a finite number > 0 (0 = 1/sqrt(head_dim)), got {scale}")
    if scale:
        return scale
    return 1.0 / math.sqrt(head_dim) if head_dim else None


@builtin("softmax")
def softmax(head_dim: int = 0, scale: float = 0.0, causal: bool = False,
            align: str = "bottom_right") -> Cascade:
    """Multi-head softmax attention (MHA; GQA/MQA when K/V carry fewer heads)."""
    mask = (lambda b_, h_, q, kv: q >= kv) if causal else None
    return dsl.attention("softmax_causal" if causal else "softmax", mask_mod=mask,
                         scale=_scale(head_dim, scale), align=_align(align, causal))


@builtin("causal")
def causal(head_dim: int = 0, scale: float = 0.0, align: str = "bottom_right") -> Cascade:
    """Causal softmax attention (key m visible to the query at position p when m <= p)."""
    return softmax(head_dim=head_dim, scale=scale, causal=True, align=align)


@builtin("gqa")
def gqa(head_dim: int = 0, scale: float = 0.0, causal: bool = False, align: str = "bottom_right") -> Cascade:
    """Grouped-query attention: the softmax cascade; K/V inputs carry H/groups heads."""
    c = softmax(head_dim=head_dim, scale=scale, causal=causal, align=align)
    return c.replace(name="gqa", attrs={**c.attrs, "gqa": True})


@builtin("sliding_window")
def sliding_window(window: int = 256, causal: bool = True, head_dim: int = 0, scale: float = 0.0,
                   align: str = "bottom_right") -> Cascade:
    """Sliding-window attention: |p - m| < window (and m <= p when causal)."""
    if window < 1:
        raise SpecError(f"option window must be >= 1, got {window}")
    w = sympy.Integer(window)
    if causal:
        mask = lambda b_, h_, q, kv: (kv <= q) & (q - kv < w)
    else:
        mask = lambda b_, h_, q, kv: sympy.Abs(q - kv) < w
    return dsl.attention("sliding_window", mask_mod=mask, scale=_scale(head_dim, scale), align=align)


def alibi_slope(head: sympy.Expr) -> sympy.Expr:
    """ALiBi slope of a head: 2**(-8 (h+1) / H) (Press et al.; exact for power-of-two H)."""
    return sympy.Integer(2) ** (-8 * (head + 1) / sympy.Symbol("H", integer=True, positive=True))


@builtin("alibi")
def alibi(causal: bool = True, head_dim: int = 0, scale: float = 0.0, align: str = "bottom_right") -> Cascade:
    """ALiBi: score + slope_h * (m - p), slopes 2^(-8(h+1)/H)."""
    mask = (lambda b_, h_, q, kv: q >= kv) if causal else None
    return dsl.attention("alibi", score_mod=lambda s, b_, h_, q, kv: s + alibi_slope(h_) * (kv - q),
                         mask_mod=mask, scale=_scale(head_dim, scale), align=align)


@builtin("softcap")
def softcap(cap: float = 30.0, causal: bool = False, head_dim: int = 0, scale: float = 0.0,
            align: str = "bottom_right") -> Cascade:
    """tanh soft-capping of scores: cap * tanh(score / cap) (Gemma 2)."""
    if not math.isfinite(cap) or cap <= 0:
        raise SpecError(f"option cap must be a finite number > 0, got {cap}")
    mask = (lambda b_, h_, q, kv: q >= kv) if causal else None
    return dsl.attention("softcap", score_mod=lambda s, b_, h_, q, kv: cap * tanh(s / cap),
                         mask_mod=mask, scale=_scale(head_dim, scale), align=_align(align, causal))


# ---- sigmoid and linear ------------------------------------------------------------------------

@builtin("sigmoid")
def sigmoid(bias: float = 0.0, causal: bool = False, head_dim: int = 0, scale: float = 0.0,
            align: str = "bottom_right") -> Cascade:
    """Sigmoid attention: sigmoid(score + bias) @ V, no normalisation (FlashSigmoid)."""
    if not math.isfinite(bias):
        raise SpecError(f"option bias must be finite, got {bias}")
    mask = (lambda b_, h_, q, kv: q >= kv) if causal else None
    return dsl.attention("sigmoid", mask_mod=mask, scale=_scale(head_dim, scale),
                         normalization="sigmoid", bias=bias, align=_align(align, causal))


@builtin("linear")
def linear(feature_map: str = "elu1", causal: bool = True, normalize: bool = False,
           align: str = "bottom_right") -> Cascade:
    """Linear attention phi(Q) phi(K)^T V with a feature map (identity, elu1, relu, exp)."""
    return dsl.linear_attention("linear", feature_map=feature_map, causal=causal, normalize=normalize,
                                align=_align(align, causal))


@builtin("lightning")
def lightning(feature_map: str = "identity", align: str = "bottom_right") -> Cascade:
    """Lightning Attention: causal linear attention with per-head decay exp(-s_h (p - m))."""
    return dsl.linear_attention("lightning", feature_map=feature_map, causal=True, decay=True, align=align)


__all__ = ["BUILTINS", "Builtin", "alibi_slope", "builtin", "h", "load_builtin", "m", "p", "parse_spec"]

# the rest of the library registers itself on import (kept last: those modules import this one)
from einfuse.frontends import composite, neighborhood, sparse  # noqa: F401  (register built-ins)
