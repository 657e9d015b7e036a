"""einfuse as the attention of Hugging Face transformers models (``AttentionInterface``).

::

    import einfuse.integrations.transformers as eft
    eft.register()                                   # once per process: adds "einfuse"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="einfuse")
    # or: model.set_attn_implementation("einfuse")

Every attention call takes what the model passes (the module's ``scaling``, ``sliding_window`` and
``softcap``, its ``is_causal``) and runs the einfuse kernel of that variant, compiled once per
(scale, window, cap, causal, alignment): Llama, Qwen2 (causal), Mistral (sliding window), Gemma 2
(soft-cap, sliding window on alternate layers). K/V keep their own heads (GQA without copies).

**Positions.** The queries of a call are the newest tokens of the keys they see: prefill, decode
steps over a ``DynamicCache`` and chunked prefill are bottom-right (einfuse's default,
:mod:`einfuse.ir.positions`). A ``StaticCache`` (or a sliding-window cache whose keys start past
position 0) places them elsewhere: the mask function registered with ``register`` reads the query
and key offsets transformers computes and passes them on, and the kernel built with
``align="offset"`` takes the query offset per call (one kernel for every step).

**Masks.** The mask function returns a small :class:`EinfuseMask` rather than a dense tensor when the
model's mask is exactly the causal (or sliding-window causal) pattern at those positions, which is
always the case without padding. A padded batch (an ``attention_mask`` with zeros, one run of
real tokens per row: left or right padding) runs as a packed variable-length batch
(:mod:`einfuse.integrations.padding`, ``fn.varlen``); query rows at padding positions give 0. Other
masks (holes in a row's tokens, packed sequences, a custom 4-D mask) run a plain PyTorch path with
transformers' own dense mask (correct, not fused; ``strict=True`` in ``register`` raises instead).

The kernels are forward-only: ``dropout`` must be 0 and training through them is not supported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from einfuse.errors import CodegenError
from einfuse.integrations import padding as _padding
from einfuse.ir.positions import Q_OFFSET

NAME = "einfuse"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EinfuseMask:
    """What a layer needs to know about its mask: the position of query 0 relative to key 0
    (``q_offset``), the sliding window (None: full causal), whether causal; or, when the model's mask
    is no such pattern, ``dense`` (transformers' boolean mask, True = attend).

    Between the mask function and the layers it travels as a tensor (:meth:`encode`): transformers
    passes 4-D tensors through unchanged (generation precomputes masks for static caches and feeds
    them back into the model), where another object would be taken for a 2-D padding mask."""

    q_offset: int = 0
    window: int | None = None
    causal: bool = True
    dense: Any = None

    def encode(self) -> Any:
        """A ``(1, 1, 1, 3)`` int64 CPU tensor ``[MAGIC, q_offset, window or -1]`` (dense masks are
        passed as themselves)."""
        import torch

        if self.dense is not None:
            return self.dense
        t = torch.tensor([[[[_MAGIC, self.q_offset, -1 if self.window is None else self.window]]]],
                         dtype=torch.int64)
        setattr(t, _ATTR, EinfuseMask(self.q_offset, self.window))  # every layer reads it back for free
        return t

    @staticmethod
    def decode(mask: Any) -> EinfuseMask | None:
        """The mask :meth:`encode` wrote, or None when ``mask`` is another tensor. The tensor
        :meth:`encode` made carries its descriptor (read without touching the tensor: indexing it
        cost ~60 us a layer); a copy of it (moved, cloned) is read from its values."""
        import torch

        known = getattr(mask, _ATTR, None)
        if known is not None:
            return known
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.int64 and tuple(mask.shape) == (1, 1, 1, 3):
            magic, q_offset, window = mask.reshape(-1).tolist()
            if magic == _MAGIC:
                return EinfuseMask(q_offset, None if window < 0 else window)
        return None


_MAGIC = 0x6E696678  # "einf": marks a descriptor tensor
_ATTR = "_einfuse_mask"  # the decoded descriptor, an attribute of the tensor encode() returns


@dataclass(frozen=True)
class _Settings:
    strict: bool = False
    compile_options: tuple = ()


_SETTINGS = _Settings()
_KERNELS: dict[tuple, _Kernels] = {}


def register(name: str = NAME, strict: bool = False, **compile_options: Any) -> str:
    """Register einfuse attention (and its mask function) with transformers under ``name``.

    ``strict``: raise instead of taking the plain PyTorch path for masks einfuse does not express
    (padding with holes, custom masks). ``compile_options`` go to :func:`einfuse.compile` (``autotune=True``, ...).
    Returns ``name``, to pass as ``attn_implementation``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    global _SETTINGS
    _SETTINGS = _Settings(strict, tuple(sorted(compile_options.items())))
    _KERNELS.clear()
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)
    return name


# ---- the mask function ------------------------------------------------------------------------------

def mask_function(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: int = 0,
                  mask_function: Any = None, attention_mask: Any = None, local_size: int | None = None,
                  allow_is_causal_skip: bool = True, **kwargs: Any) -> Any:
    """transformers' mask interface: an encoded :class:`EinfuseMask` for the layers of one forward
    pass, or transformers' own dense mask when the mask is not an aligned causal pattern."""
    import torch
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

    q_off = int(q_offset) - int(kv_offset)
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if padding is not None:
        padding = padding[:, kv_offset:kv_offset + kv_length]
    no_padding = padding is None or bool(padding.all())
    plain = mask_function is causal_mask_function or (allow_is_causal_skip and local_size is not None)
    if plain and no_padding:
        return EinfuseMask(q_off, local_size if mask_function is not causal_mask_function else None).encode()
    # anything else: transformers' own mask, kept when it is not the aligned pattern after all
    # (a static cache pads future slots, which the causal mask hides anyway)
    dense = sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                      kv_offset=kv_offset, mask_function=mask_function or causal_mask_function,
                      attention_mask=attention_mask, local_size=local_size, allow_is_causal_skip=False,
                      device=kwargs.get("device", "cpu"))
    qi = torch.arange(q_length, device=dense.device)[:, None] + q_off
    kj = torch.arange(kv_length, device=dense.device)[None, :]
    pattern = kj <= qi
    if local_size is not None:
        pattern = pattern & (qi - kj < local_size)
    if torch.equal(torch.broadcast_to(dense, (batch_size, 1, q_length, kv_length)),
                   torch.broadcast_to(pattern, (batch_size, 1, q_length, kv_length))):
        return EinfuseMask(q_off, local_size).encode()
    return dense


# ---- the attention function --------------------------------------------------------------------------

def attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                      dropout: float = 0.0, scaling: float | None = None, sliding_window: int | None = None,
                      softcap: float | None = None, is_causal: bool | None = None,
                      **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention interface: ``(B, H, N_q, D)`` queries, ``(B, H_kv, N_kv, D)`` keys and
    values in, ``((B, N_q, H, D_v), None)`` out."""
    if dropout:
        raise CodegenError("einfuse attention is forward-only: dropout must be 0 (call model.eval())")
    if kwargs.get("position_bias") is not None:
        raise CodegenError("einfuse attention: position_bias (T5-style relative bias) is not supported")
    scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    cap = float(softcap) if softcap else None
    n_q, n_kv = query.shape[2], key.shape[2]
    if attention_mask is None:
        info = EinfuseMask(n_kv - n_q, sliding_window, causal)
    else:  # ours, else transformers' dense mask (padding, packing) or a custom 4-D mask
        info = EinfuseMask.decode(attention_mask) or EinfuseMask(n_kv - n_q, sliding_window, causal,
                                                                 dense=attention_mask)
    if info.dense is not None:
        window = sliding_window if causal else None
        padded = _padding.padding_runs(info.dense, n_q, n_kv, window) if causal else None
        if padded is not None:  # a padded batch: one run of real tokens per row, packed for fn.varlen
            return _padding.padded_attention(_kernel(scale, window, cap, True, "bottom_right").compiled, query, key,
                                             value, padded), None
        if _SETTINGS.strict:
            raise CodegenError("einfuse attention: this mask (padding with holes, packed sequences or a custom "
                               "mask) is not a causal pattern over one run of tokens per row, which einfuse "
                               "expresses; pass left- or right-padded batches, or register(strict=False) to "
                               "run it unfused")
        return _unfused(query, key, value, info.dense, scale, cap).transpose(1, 2).contiguous(), None
    window = info.window if info.window is not None else (sliding_window if causal else None)
    align = "bottom_right" if info.q_offset == n_kv - n_q or not causal else "offset"
    kernels = _kernel(scale, window, cap, causal, align)
    return kernels.run(query, key, value, info.q_offset if align == "offset" else None), None


@dataclass
class _Kernels:
    """One layer kind's compiled attention, and the launchers an eager call uses directly.

    Eager calls (no autograd, no graph capture) skip :class:`~einfuse.codegen.compile.CompiledAttention`'s
    dispatch and write the main kernel's output straight into ``(B, N_q, H, D_v)`` memory, the layout
    the layer's output projection reads: with the strided ``(B, H, N, D)`` views transformers passes
    in, a prefill call copies nothing. Anything else goes through ``compiled``."""

    compiled: Any
    main: Any = None
    """The :class:`~einfuse.codegen.triton.runtime.AttentionKernel` (None: another kind of kernel)."""
    decode_max: int = 0
    """Calls with at most this many queries take the split-KV decode kernel (0: never)."""

    def run(self, q: Any, k: Any, v: Any, q_offset: int | None) -> Any:
        """``(B, N_q, H, D_v)`` attention of ``(B, H, N, D)`` views (last stride 1)."""
        import torch

        q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
        runtime = {} if q_offset is None else {"q_offset": q_offset}
        graph = type(q) is not torch.Tensor or torch.compiler.is_compiling()  # compile/export: the custom op
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        if self.main is None or graph or grad:
            return self.compiled(q, k, v, **runtime).transpose(1, 2).contiguous()
        B, H, n_q, _ = q.shape
        if n_q <= self.decode_max:
            dec = self.compiled.decode_kernel()
            if dec is not None:  # (B, H, 1, D) is (B, 1, H, D) memory: no copy for one query
                out = dec(q, k, v, **({} if q_offset is None else {Q_OFFSET: q_offset}))
                return out.transpose(1, 2).contiguous()
        out = torch.empty((B, n_q, H, v.shape[3]), dtype=q.dtype, device=q.device)
        self.main(q, k, v, out=out.transpose(1, 2), **runtime)
        return out


def _unit_last(t: Any) -> Any:
    return t if t.stride(-1) == 1 else t.contiguous()


def variant(scale: float, window: int | None = None, softcap: float | None = None, causal: bool = True,
            align: str = "bottom_right") -> Any:
    """The cascade of one layer kind: causal (windowed) softmax attention, soft-capped scores."""
    import einfuse as ef

    if window is not None and not causal:
        raise CodegenError("einfuse attention: a bidirectional sliding window is not supported")
    if causal and window is not None:
        w = int(window)
        mask = lambda b, h, q, kv: (kv <= q) & (q - kv < w)
    elif causal:
        mask = lambda b, h, q, kv: kv <= q
    else:
        mask = None
    score = (lambda s, b, h, q, kv: softcap * ef.tanh(s / softcap)) if softcap else None
    name = "hf_" + "_".join(x for x in ("causal" if causal else "full", f"w{window}" if window else "",
                                         "cap" if softcap else "") if x)
    return ef.attention(name, score_mod=score, mask_mod=mask, scale=scale, align=align if causal else "top_left")


def _kernel(scale: float, window: int | None, softcap: float | None, causal: bool, align: str) -> _Kernels:
    key = (scale, window, softcap, causal, align)
    kernels = _KERNELS.get(key)
    if kernels is None:
        import einfuse as ef
        from einfuse.codegen.compile import DECODE_MAX_QUERIES
        from einfuse.codegen.triton.runtime import AttentionKernel

        compiled = ef.compile(variant(scale, window, softcap, causal, align), **dict(_SETTINGS.compile_options))
        main = compiled.kernel if isinstance(getattr(compiled, "kernel", None), AttentionKernel) else None
        decode_max = DECODE_MAX_QUERIES if getattr(compiled, "decode", False) else 0
        kernels = _KERNELS[key] = _Kernels(compiled, main, decode_max)
    return kernels


def _unfused(q: Any, k: Any, v: Any, mask: Any, scale: float, softcap: float | None) -> Any:
    """Plain PyTorch attention (fp32 softmax) under transformers' own mask: bool (True = attend) or
    additive float; rows with nothing to attend give 0."""
    import torch

    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.matmul(q.float(), k.float().transpose(2, 3)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    mask = mask[..., : k.shape[2]]
    if mask.dtype == torch.bool:
        s = s.masked_fill(~mask, float("-inf"))
    else:
        s = s + mask.float()
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.matmul(p, v.float()).to(q.dtype)


__all__ = ["NAME", "EinfuseMask", "attention_forward", "mask_function", "register", "variant"]
