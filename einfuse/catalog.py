"""The built-in variants as data: name, one-line summary, and every option with its default and meaning.

``einfuse list`` and ``einfuse --help`` read this table instead of importing the library (which
imports sympy), so they answer in a fraction of a second. The library itself
(:mod:`einfuse.frontends.library` and the modules it loads) stays the definition: a test checks that
this table names the same built-ins, summaries, options and defaults (``tests/test_catalog.py``), and
fails with the entry to paste when a built-in is added or changed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    meaning: str


@dataclass(frozen=True)
class Entry:
    name: str
    summary: str
    options: tuple[Option, ...]


HEAD_DIM = Option("head_dim", 0, "head dimension D that sets the score scale 1/sqrt(D); 0: the D of the "
                                 "inputs, at call time (as SDPA and FlexAttention)")
SCALE = Option("scale", 0.0, "score scale multiplying Q.K; 0: 1/sqrt(head_dim) (scale=1: unscaled)")
ALIGN = Option("align", "bottom_right", "where query i sits when there are fewer queries than keys: "
                                        "bottom_right (N_kv - N_q + i, KV caches), top_left (i), offset "
                                        "(QOFF + i, q_offset= per call)")


def _causal(default: bool) -> Option:
    return Option("causal", default, "key m is visible to query p only when m <= p")


def _na(ndim: int, shape: tuple) -> tuple[Option, ...]:
    grid = "x".join(f"X{i}" for i in range(ndim))
    shape_opt = Option("shape", shape, "grid length; empty: the key length (no grid)") if ndim == 1 else \
        Option("shape", shape, f"token grid {grid}, flattened row-major: N must be its token count")
    return (
        *((shape_opt,) if ndim > 1 else ()),
        Option("kernel", (7,) if ndim < 3 else (3,), "window size per axis (a window shifted at the "
               "borders, never truncated: every query sees kernel keys per axis)"),
        Option("dilation", (1,), "spacing of the window's keys per axis (dilation groups)"),
        Option("stride", (1,), "queries per axis that share one window (1 <= stride <= kernel)"),
        Option("causal", (False,), "per axis: only keys at or before the query (e.g. 1x0x0)"),
        *((shape_opt,) if ndim == 1 else ()),
        HEAD_DIM, SCALE,
    )


CATALOG: tuple[Entry, ...] = (
    Entry("agent", "Agent attention: N agent tokens AG attend to K/V, then the queries attend to the agents.",
          (HEAD_DIM, SCALE)),
    Entry("alibi", "ALiBi: score + slope_h * (m - p), slopes 2^(-8(h+1)/H).", (_causal(True), HEAD_DIM, SCALE)),
    Entry("based", "BASED: causal normalised Taylor linear attention (1 + s + s^2/2) plus sliding-window softmax.",
          (Option("window", 64, "keys of the softmax branch: p - window < m <= p"), HEAD_DIM, SCALE)),
    Entry("causal", "Causal softmax attention (key m visible to the query at position p when m <= p).", (HEAD_DIM, SCALE)),
    Entry("decode", "Decoding over a KV cache (few queries, long KV): softmax with attrs decode=True.",
          (Option("causal", False, "the P queries are the last P of the M cached tokens: query p sees "
                                   "keys m <= p + M - P"), HEAD_DIM, SCALE)),
    Entry("duo", "DuoAttention: retrieval heads attend causally to all; streaming heads to sink + recent tokens.",
          (Option("retrieval_heads", -1, "heads h < R attend to every earlier key; -1: "
                                         "R = floor(retrieval_fraction * H)"),
           Option("retrieval_fraction", 0.5, "share of retrieval heads when retrieval_heads is -1"),
           Option("sink", 4, "first tokens every streaming head sees (attention sinks)"),
           Option("recent", 256, "latest tokens up to the query a streaming head sees (p - m < recent)"),
           HEAD_DIM, SCALE)),
    Entry("gqa", "Grouped-query attention: the softmax cascade; K/V inputs carry H/groups heads.",
          (HEAD_DIM, SCALE, _causal(False))),
    Entry("lightning", "Lightning Attention: causal linear attention with per-head decay exp(-s_h (p - m)).",
          (Option("feature_map", "identity", "phi applied to Q and K: identity, elu1 (elu + 1), relu, exp"),)),
    Entry("linear", "Linear attention phi(Q) phi(K)^T V with a feature map (identity, elu1, relu, exp).",
          (Option("feature_map", "elu1", "phi applied to Q and K: identity, elu1 (elu + 1), relu, exp"),
           _causal(True),
           Option("normalize", False, "divide by the sum of the weights phi(q).phi(k) over the keys"))),
    Entry("na1d", "1-D neighborhood attention (NATTEN): shifted k-window per query, dilation, stride, causal.",
          _na(1, ())),
    Entry("na2d", "2-D neighborhood attention (NATTEN) over a row-major flattened X0 x X1 grid.", _na(2, (16, 16))),
    Entry("na3d", "3-D neighborhood attention (NATTEN) over a row-major flattened X0 x X1 x X2 grid.",
          _na(3, (8, 8, 8))),
    Entry("s2attn", "S2-Attention: head h sees keys with m mod stride == h mod stride, plus a local window.",
          (Option("stride", 4, "head h sees keys m with m mod stride == h mod stride"),
           Option("window", 128, "plus every key with p - m < window (|p - m| when not causal); 0: none"),
           _causal(True), HEAD_DIM, SCALE)),
    Entry("sigmoid", "Sigmoid attention: sigmoid(score + bias) @ V, no normalisation (FlashSigmoid).",
          (Option("bias", 0.0, "added to the score before the sigmoid (FlashSigmoid uses -log N)"),
           _causal(False), HEAD_DIM, SCALE)),
    Entry("sliding_window", "Sliding-window attention: |p - m| < window (and m <= p when causal).",
          (Option("window", 256, "keys with p - m < window (|p - m| < window when not causal)"),
           _causal(True), HEAD_DIM, SCALE)),
    Entry("softcap", "tanh soft-capping of scores: cap * tanh(score / cap) (Gemma 2).",
          (Option("cap", 30.0, "the largest score magnitude: score -> cap * tanh(score / cap)"),
           _causal(False), HEAD_DIM, SCALE)),
    Entry("softmax", "Multi-head softmax attention (MHA; GQA/MQA when K/V carry fewer heads).",
          (HEAD_DIM, SCALE, _causal(False))),
)

# built-ins whose masks or scores use positions take `align` (einfuse.ir.positions), always last
_ALIGNED = ("alibi", "based", "causal", "decode", "duo", "gqa", "lightning", "linear", "na1d", "na2d", "na3d",
            "s2attn", "sigmoid", "sliding_window", "softcap", "softmax")
CATALOG = tuple(Entry(e.name, e.summary, e.options + (ALIGN,)) if e.name in _ALIGNED else e for e in CATALOG)

SPEC_SYNTAX = """\
A SPEC is one of
  NAME[:KEY=VALUE,...]   a built-in with options: causal, sliding_window:window=128,causal=false,
                         na2d:shape=32x32,kernel=7,dilation=2 (per-axis values joined by x;
                         booleans true/false or 1/0); `einfuse list` shows every option
  FILE.py                a Python file that defines `cascade` (e.g. cascade = ef.attention(...))
  FILE                   a cascade in text form, as `einfuse show` prints it"""


def format_default(value: object) -> str:
    """An option's default as it is written in a SPEC (``7x5`` for per-axis values)."""
    if isinstance(value, tuple):
        return "x".join(str(v).lower() if isinstance(v, bool) else str(v) for v in value) or "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def format_catalog(width: int = 100) -> str:
    """The text ``einfuse list`` prints: every built-in, its summary, and its options."""
    import textwrap

    lines = ["Built-in variants. Use one as a SPEC, with options: NAME:KEY=VALUE,KEY=VALUE",
             "(e.g. sliding_window:window=128,causal=false). Per-axis options take one value for every",
             "axis or one per axis joined by x (na2d:shape=32x24,kernel=7x5); booleans are true/false or 1/0.",
             ""]
    for e in CATALOG:
        lines.append(f"{e.name}: {e.summary}")
        keys = [f"{o.name}={format_default(o.default)}" for o in e.options]
        pad = max(map(len, keys), default=0) + 2
        for key, o in zip(keys, e.options):
            wrapped = textwrap.wrap(o.meaning, max(30, width - 4 - pad))
            lines.append(f"    {key.ljust(pad)}{wrapped[0]}")
            lines.extend(f"    {' ' * pad}{w}" for w in wrapped[1:])
        lines.append("")
    return "\n".join(lines)


def names() -> list[str]:
    return [e.name for e in CATALOG]


__all__ = ["CATALOG", "SPEC_SYNTAX", "Entry", "Option", "format_catalog", "format_default", "names"]
