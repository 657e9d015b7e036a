"""A Lamina-style cost model of attention offloading for LLM decode (``einfuse offload-plan``).

Lamina (Chen et al. 2024, "Efficient and Economic LLM Inference with Attention Offloading") runs the
non-attention operators (projections, MLP, output head) on compute-rich devices and the attention
of the decode step on memory-rich, cheaper devices that hold the whole KV cache. This module
estimates one decode step of a Llama-class model both ways, with roofline times:

* **homogeneous**: ``n`` devices of one kind hold the weights (sharded) and the KV cache and run
  everything; step = non-attention time + attention time.
* **offload**: ``nc`` compute devices hold only the weights; ``nm`` memory devices hold only the KV
  cache; step = max(non-attention, attention, link) since Lamina's staggered pipeline overlaps
  them (``pipelined=False`` adds them instead).

Every sequence of the batch is at the same context length. Roofline of an operator on ``n``
devices: ``max(bytes / (n * hbm_bw), flops / (n * peak flops))``. Non-attention: the weights are
read once per step, ``2 * params * batch`` FLOPs (embedding lookup excluded). Attention: the KV
cache is read once per step, ``4 * heads * head_dim * context`` FLOPs per token and layer. Link, per
layer and token: the query out and the output back (``heads * head_dim`` bf16 values each) plus the
new token's K and V (``kv_heads * head_dim`` each), through ``min(nc * link_c, nm * link_m)``.
Devices and models live in ``offload_catalogue.yaml`` with the source of every number.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace

from einfuse.errors import SimulatorError
from einfuse.simulator.workload import format_seq, parse_seq

BYTES = 2  # bf16
MEMORY_UTILISATION = 0.9  # fraction of HBM usable for weights and KV (activations, fragmentation)
DEVICE_COUNTS = (1, 2, 4, 8)  # compute devices and homogeneous deployments: tensor parallel in one node
MEMORY_COUNTS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_MAX_BATCH = 1024
_CATALOGUE = os.path.join(os.path.dirname(__file__), "offload_catalogue.yaml")


@dataclass(frozen=True)
class Device:
    name: str
    flops: float  # peak dense bf16 FLOP/s
    hbm_bw: float  # bytes/s
    hbm: float  # bytes
    price: float  # dollars per device-hour
    link: float  # bytes/s per device between device kinds


@dataclass(frozen=True)
class LlamaShape:
    name: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int

    @property
    def layer_params(self) -> int:
        """q, k, v, o projections and the gated MLP of one layer."""
        h, d = self.hidden, self.head_dim
        return h * self.heads * d * 2 + h * self.kv_heads * d * 2 + 3 * h * self.intermediate

    @property
    def matmul_params(self) -> int:
        """Parameters multiplied per token: every layer and the output head."""
        return self.layers * self.layer_params + self.hidden * self.vocab

    @property
    def weight_bytes(self) -> int:
        """All weights in bf16, the input embedding included (it is stored, not multiplied)."""
        return (self.matmul_params + self.hidden * self.vocab) * BYTES

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * BYTES

    def attention_flops(self, context: int) -> int:
        """FLOPs of one token's attention over ``context`` keys, all layers (QK^T and PV)."""
        return 4 * self.layers * self.heads * self.head_dim * context

    @property
    def link_bytes_per_token(self) -> int:
        """Bytes between compute and memory devices per token and step: q out, o back, new K and V out."""
        return self.layers * (2 * self.heads + 2 * self.kv_heads) * self.head_dim * BYTES


@functools.lru_cache(maxsize=4)
def load_catalogue(path: str = _CATALOGUE) -> tuple[Mapping[str, Device], Mapping[str, LlamaShape]]:
    """Devices and models of a catalogue YAML file (the built-in one by default)."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
        devices = {k: Device(k, **{f: float(v) for f, v in d.items()}) for k, d in data["devices"].items()}
        models = {k: LlamaShape(k, **{f: int(v) for f, v in m.items()}) for k, m in data["models"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SimulatorError(f"offload catalogue {path}: {exc}") from None
    return devices, models


def get_device(name: str, catalogue: str = _CATALOGUE) -> Device:
    devices, _ = load_catalogue(catalogue)
    if name.lower() not in devices:
        raise SimulatorError(f"unknown device {name!r} (known: {', '.join(devices)})")
    return devices[name.lower()]


def get_model(name: str, catalogue: str = _CATALOGUE) -> LlamaShape:
    _, models = load_catalogue(catalogue)
    if name.lower() not in models:
        raise SimulatorError(f"unknown model {name!r} (known: {', '.join(models)})")
    return models[name.lower()]


def parse_contexts(text: str) -> list[int]:
    """``"4K..128K"`` -> powers-of-two steps 4K, 8K, ..., 128K; ``"4K,32K"`` -> a list (``parse_seq``)."""
    if ".." not in text:
        return parse_seq(text)
    lo_text, _, hi_text = text.partition("..")
    lo, hi = parse_seq(lo_text)[0], parse_seq(hi_text)[0]
    if lo > hi:
        raise SimulatorError(f"context range {text!r}: the start is above the end")
    out = [lo]
    while out[-1] * 2 <= hi:
        out.append(out[-1] * 2)
    return out


def roofline(nbytes: float, flops: float, device: Device, count: int) -> float:
    """Seconds for an operator spread evenly over ``count`` devices: memory or compute bound."""
    return max(nbytes / (count * device.hbm_bw), flops / (count * device.flops))


def nonattention_time(model: LlamaShape, device: Device, count: int, batch: int) -> float:
    return roofline(model.matmul_params * BYTES, 2 * model.matmul_params * batch, device, count)


def attention_time(model: LlamaShape, device: Device, count: int, batch: int, context: int) -> float:
    kv = batch * context * model.kv_bytes_per_token
    return roofline(kv, batch * model.attention_flops(context), device, count)


def batch_that_fits(kv_capacity: float, model: LlamaShape, context: int, max_batch: int) -> int:
    return max(0, min(max_batch, int(kv_capacity // (context * model.kv_bytes_per_token))))


@dataclass(frozen=True)
class Plan:
    """One deployment at one context length; times in seconds, prices in dollars per hour."""

    mode: str  # "homogeneous" or "offload"
    context: int
    compute: str
    compute_count: int
    memory: str
    memory_count: int  # 0 when homogeneous
    batch: int
    t_nonattention: float
    t_attention: float
    t_link: float
    link_ok: bool
    step: float
    price: float

    @property
    def tokens_per_s(self) -> float:
        return self.batch / self.step

    @property
    def tokens_per_dollar(self) -> float:
        return self.tokens_per_s * 3600 / self.price

    @property
    def devices(self) -> str:
        text = f"{self.compute_count}x{self.compute}"
        return text + (f"+{self.memory_count}x{self.memory}" if self.memory_count else "")

    def row(self) -> dict:
        return {**asdict(self), "devices": self.devices, "tokens_per_s": self.tokens_per_s,
                "tokens_per_dollar": self.tokens_per_dollar}


def homogeneous(model: LlamaShape, device: Device, count: int, context: int, *,
                max_batch: int = DEFAULT_MAX_BATCH, util: float = MEMORY_UTILISATION) -> Plan | None:
    """``count`` devices run everything; None when not even one sequence fits beside the weights."""
    batch = batch_that_fits(count * device.hbm * util - model.weight_bytes, model, context, max_batch)
    if batch < 1:
        return None
    tn = nonattention_time(model, device, count, batch)
    ta = attention_time(model, device, count, batch, context)
    return Plan("homogeneous", context, device.name, count, device.name, 0, batch, tn, ta, 0.0, True,
                tn + ta, count * device.price)


def offload(model: LlamaShape, compute: Device, nc: int, memory: Device, nm: int, context: int, *,
            max_batch: int = DEFAULT_MAX_BATCH, util: float = MEMORY_UTILISATION,
            pipelined: bool = True) -> Plan | None:
    """Weights on ``nc`` compute devices, KV cache and attention on ``nm`` memory devices; None when
    the weights do not fit on the compute devices or no sequence fits on the memory devices."""
    if nc * compute.hbm * util < model.weight_bytes:
        return None
    batch = batch_that_fits(nm * memory.hbm * util, model, context, max_batch)
    if batch < 1:
        return None
    tn = nonattention_time(model, compute, nc, batch)
    ta = attention_time(model, memory, nm, batch, context)
    tl = batch * model.link_bytes_per_token / min(nc * compute.link, nm * memory.link)
    step = max(tn, ta, tl) if pipelined else tn + ta + tl
    return Plan("offload", context, compute.name, nc, memory.name, nm, batch, tn, ta, tl,
                tl <= max(tn, ta), step, nc * compute.price + nm * memory.price)


def _best(plans: Iterable[Plan | None]) -> Plan | None:
    """The plan with the most tokens per dollar (the first, i.e. fewest devices, on ties)."""
    best = None
    for p in plans:
        if p is not None and (best is None or p.tokens_per_dollar > best.tokens_per_dollar * (1 + 1e-12)):
            best = p
    return best


def plan(model: LlamaShape, compute: Device, memory: Device, contexts: Iterable[int], *,
         compute_counts: Iterable[int] = DEVICE_COUNTS, memory_counts: Iterable[int] = MEMORY_COUNTS,
         **kw) -> list[tuple[Plan | None, Plan | None]]:
    """For each context, the best homogeneous deployment of ``compute`` and the best offloaded one
    (counts searched for the most tokens per dollar); None where nothing fits."""
    ccounts, mcounts = tuple(compute_counts), tuple(memory_counts)
    if not ccounts or not mcounts or min(ccounts + mcounts) < 1:
        raise SimulatorError("device counts must be >= 1")
    hkw = {k: v for k, v in kw.items() if k != "pipelined"}
    out = []
    for ctx in contexts:
        homo = _best(homogeneous(model, compute, n, ctx, **hkw) for n in ccounts)
        off = _best(offload(model, compute, nc, memory, nm, ctx, **kw) for nc in ccounts for nm in mcounts)
        out.append((homo, off))
    return out


def with_price(device: Device, price: float) -> Device:
    if price <= 0:
        raise SimulatorError(f"price of {device.name} must be > 0, got {price}")
    return replace(device, price=price)


__all__ = ["Device", "LlamaShape", "Plan", "attention_time", "batch_that_fits", "format_seq", "get_device",
           "get_model", "homogeneous", "load_catalogue", "nonattention_time", "offload", "parse_contexts",
           "plan", "roofline", "with_price"]
