"""The systems a user would pick instead of einfuse, each wrapped as ``make(case, plan) -> fn(q, k, v)``.

Every wrapper takes the benchmark's ``(B, H, N, D)`` tensors and returns ``(B, H, Nq, Dv)``; a peer
whose native layout differs (fla, triton-sigmoid: ``(B, T, H, D)``) gets its inputs converted once,
outside the timed call, so it is timed in its own layout. A wrapper raises ``Unsupported`` when the
peer cannot express the variant; the runner records that as the row's ``error``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Unsupported(Exception):
    """The peer cannot compute this variant (said in the results, not hidden)."""


def _scale(case: Any) -> float:
    return 1.0 / math.sqrt(case.D)


# ---- SDPA ----------------------------------------------------------------------------------------

def _sdpa(backend_name: str) -> Callable[[Any, dict], tuple[Fn, Callable]]:
    def make(case: Any, prep: dict) -> tuple[Fn, Callable]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]
        v = case.variant
        kw: dict[str, Any] = {"scale": _scale(case)}
        if case.H != case.Hkv:
            kw["enable_gqa"] = True
        if v in ("causal", "gqa", "alibi") or v.startswith("sigmoid_causal"):
            kw["is_causal"] = True
        if v in ("softcap",) or v.startswith(("na", "sigmoid")) or v == "lightning":
            raise Unsupported(f"SDPA has no {v} (no score_mod / mask beyond a dense tensor)")
        if v == "sliding_window":
            raise Unsupported("SDPA flash/cuDNN take no sliding-window mask (a dense 16K x 16K mask is "
                              "the only way, which these backends refuse)")
        if v == "alibi":
            raise Unsupported("SDPA flash/cuDNN take no ALiBi bias (only a dense float mask, which "
                              "these backends refuse)")

        def fn(q: torch.Tensor, k: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, vv, **kw)
        return fn, lambda q, k, vv: (q, k, vv)
    return make


# ---- FlexAttention -------------------------------------------------------------------------------

_FLEX: dict[str, Any] = {}


def _flex_fn() -> Any:
    """flex_attention under torch.compile, with dynamo's recompile limit raised.

    Every case brings new mods and shapes; past the default limit (8 recompiles of one function)
    dynamo silently runs flex_attention *eagerly*, 10-200x slower: the committed H100 run timed
    Flex's 9th and 10th cases (na3d, decode) that way. Resetting dynamo per case instead was tried
    and made one case's compilation take 280 s, so the limit is raised."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        cfg = torch._dynamo.config
        for name, value in (("cache_size_limit", 64), ("recompile_limit", 64),
                            ("accumulated_cache_size_limit", 1024), ("accumulated_recompile_limit", 1024)):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), value))
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def _natten_axis(q: torch.Tensor, kv: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """NATTEN 1-D window: query i sees [clamp(i - k//2, 0, n - k), + k)."""
    start = torch.clamp(q - k // 2, 0, n - k)
    return (kv >= start) & (kv < start + k)


def flex_mods(case: Any) -> tuple[Any, Any]:
    """(score_mod, mask_mod) for FlexAttention, written the way a FlexAttention user would."""
    v, H = case.variant, case.H
    score_mod = mask_mod = None
    if v in ("causal", "gqa", "alibi"):
        def mask_mod(b, h, q, kv):
            return q >= kv
    if v == "sliding_window":
        w = int(case.extra["window"])

        def mask_mod(b, h, q, kv):
            return (q >= kv) & (q - kv < w)
    if v == "alibi":
        def score_mod(s, b, h, q, kv):
            slope = torch.exp2(-8.0 * (h + 1).to(torch.float32) / H)
            return s + slope * (kv - q).to(torch.float32)
    if v == "softcap":
        cap = float(case.extra["cap"])

        def score_mod(s, b, h, q, kv):
            return cap * torch.tanh(s / cap)
    if v.startswith("na"):
        shape, k = tuple(case.extra["shape"]), int(case.extra["kernel"])

        def mask_mod(b, h, q, kv):
            keep = None
            qr, kr = q, kv
            for axis in reversed(range(len(shape))):
                n = shape[axis]
                ok = _natten_axis(qr % n, kr % n, n, k)
                keep = ok if keep is None else keep & ok
                qr, kr = qr // n, kr // n
            return keep
    return score_mod, mask_mod


def _flex(case: Any, prep: dict) -> tuple[Fn, Callable]:
    from torch.nn.attention.flex_attention import create_block_mask

    if case.variant.startswith("sigmoid") or case.variant == "lightning":
        raise Unsupported("FlexAttention is softmax-only")
    fa = _flex_fn()
    score_mod, mask_mod = flex_mods(case)
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, None, None, case.NQ, case.NK, device="cuda", _compile=True)
    kw: dict[str, Any] = {"scale": _scale(case), "enable_gqa": case.H != case.Hkv}

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fa(q, k, v, score_mod=score_mod, block_mask=block_mask, **kw)
    return fn, lambda q, k, v: (q, k, v)


# ---- linear attention peers ------------------------------------------------------------------------

def _rates(case: Any, prep: dict) -> torch.Tensor:
    """Per-head decay rates s_h with g(d) = exp(-s_h d), read off the cascade's decay at d = 1."""
    return prep["rates"]


def _fla(case: Any, prep: dict) -> tuple[Fn, Callable]:
    if case.variant != "lightning":
        raise Unsupported("fla chunk_simple_gla is linear attention only")
    from fla.ops.simple_gla import chunk_simple_gla

    g_gamma = -_rates(case, prep).float()

    def to_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
        return tuple(x.transpose(1, 2).contiguous() for x in (q, k, v))

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        o, _ = chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0)
        return o
    return fn, to_native


def _lightning_attn2(case: Any, prep: dict) -> tuple[Fn, Callable]:
    if case.variant != "lightning":
        raise Unsupported("lightning_attn2 is lightning attention only")
    from lightning_attn.ops import lightning_attn_func

    s = _rates(case, prep).float().contiguous()

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return lightning_attn_func(q, k, v, s)
    return fn, lambda q, k, v: (q.contiguous(), k.contiguous(), v.contiguous())


# ---- sigmoid peers -----------------------------------------------------------------------------------

def _triton_sigmoid(case: Any, prep: dict) -> tuple[Fn, Callable]:
    if not case.variant.startswith("sigmoid"):
        raise Unsupported("triton-sigmoid is sigmoid attention only")
    from triton_sigmoid import sigmoid_attention

    causal = case.variant == "sigmoid_causal"
    bias = float(case.extra["bias"])

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sigmoid_attention(q, k, v, is_causal=causal, scale=_scale(case), sigmoid_bias=bias)

    def to_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
        return tuple(x.transpose(1, 2).contiguous() for x in (q, k, v))
    return fn, to_native


def _torch_eager(case: Any, prep: dict) -> tuple[Fn, Callable]:
    if not case.variant.startswith("sigmoid"):
        raise Unsupported("torch-eager rows are only run for sigmoid attention")
    causal = case.variant == "sigmoid_causal"
    bias, scale = float(case.extra["bias"]), _scale(case)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(torch.matmul(q, k.transpose(-1, -2)) * scale + bias)
        if causal:
            s = s.masked_fill(prep["causal_mask"], 0.0)
        return torch.matmul(s, v)
    return fn, lambda q, k, v: (q, k, v)


PEERS: dict[str, Callable[[Any, dict], tuple[Fn, Callable]]] = {
    "sdpa-flash": _sdpa("flash"), "sdpa-cudnn": _sdpa("cudnn"), "flex": _flex, "fla": _fla,
    "lightning_attn2": _lightning_attn2, "triton-sigmoid": _triton_sigmoid, "torch-eager": _torch_eager,
}

# how to bring a peer's output back to (B, H, Nq, Dv)
NATIVE_BTHD = {"fla", "triton-sigmoid"}


def peer_versions() -> dict[str, str]:
    """Installed versions of the peer packages (absent ones say why)."""
    from importlib import metadata

    out = {}
    for dist in ("fla-core", "lightning-attn", "triton-sigmoid"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
