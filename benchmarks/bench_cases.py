"""The benchmark matrix: each variant, its shape, the systems a user would pick instead, the target.

A case names an einfuse SPEC (so the einfuse row and the float64 reference are the same cascade)
and the peer systems timed beside it. Targets are ratios of einfuse's throughput to a peer's
(``sdpa`` = the better of the two SDPA backends that ran). The lightning and decode targets are the
issue's; the softmax/sigmoid-family targets (Triton-A's kernels) are set to parity with the peer the
issue quotes first and are easy to change here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    variant: str
    spec: str
    B: int
    H: int
    Hkv: int
    NQ: int
    NK: int
    D: int
    peers: tuple[str, ...]
    metric: str = "tflops"  # tflops (useful FLOPs) | mtok_s (B*N tokens) | tb_s (K+V bytes read)
    target: tuple[str, float] | None = None
    issue_peer_numbers: dict[str, float] = field(default_factory=dict)
    owner: str = "Triton-A"
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> str:
        if self.NQ == self.NK and self.H == self.Hkv:
            return f"{self.B}x{self.H}x{self.NQ}x{self.D}"
        q = f"q{self.NQ}" if self.NQ != self.NK else ""
        return f"{self.B}x{self.H}/{self.Hkv}x{q}{'k' if q else ''}{self.NK}x{self.D}"


S128 = "head_dim=128"
SOFTMAX_PEERS = ("sdpa-flash", "sdpa-cudnn", "flex")
NA_PEERS = ("flex",)

CASES: list[Case] = [
    Case("softmax", f"softmax:{S128}", 4, 16, 16, 4096, 4096, 128, SOFTMAX_PEERS,
         target=("flex", 1.0), issue_peer_numbers={"flex": 483, "sdpa-cudnn": 647}),
    Case("causal", f"causal:{S128}", 4, 16, 16, 4096, 4096, 128, SOFTMAX_PEERS,
         target=("flex", 1.0), issue_peer_numbers={"flex": 370, "sdpa-cudnn": 549}),
    Case("sliding_window", f"sliding_window:window=1024,causal=true,{S128}", 4, 16, 16, 16384, 16384, 128,
         SOFTMAX_PEERS, target=("flex", 1.0), issue_peer_numbers={"flex": 333}, extra={"window": 1024}),
    Case("gqa", f"gqa:causal=true,{S128}", 4, 32, 8, 4096, 4096, 128, SOFTMAX_PEERS, target=("flex", 1.0)),
    Case("alibi", f"alibi:causal=true,{S128}", 4, 16, 16, 4096, 4096, 128, SOFTMAX_PEERS, target=("flex", 1.0)),
    Case("softcap", f"softcap:cap=30,causal=false,{S128}", 4, 16, 16, 4096, 4096, 128, SOFTMAX_PEERS,
         target=("flex", 1.0), extra={"cap": 30.0}),
    Case("na1d", "na1d:kernel=1025,head_dim=64", 4, 8, 8, 16384, 16384, 64, NA_PEERS, target=("flex", 1.0),
         extra={"shape": (16384,), "kernel": 1025}),
    Case("na2d", "na2d:shape=96x96,kernel=13,head_dim=64", 4, 8, 8, 9216, 9216, 64, NA_PEERS,
         target=("flex", 3.0), issue_peer_numbers={"flex": 21}, extra={"shape": (96, 96), "kernel": 13}),
    Case("na3d", "na3d:shape=16x32x32,kernel=7,head_dim=64", 2, 8, 8, 16384, 16384, 64, NA_PEERS,
         target=("flex", 3.0), issue_peer_numbers={"flex": 20}, extra={"shape": (16, 32, 32), "kernel": 7}),
    Case("sigmoid", f"sigmoid:bias={-math.log(4096)!r},{S128}", 4, 16, 16, 4096, 4096, 128,
         ("triton-sigmoid", "torch-eager"), target=("triton-sigmoid", 1.0),
         issue_peer_numbers={"triton-sigmoid": 445}, extra={"bias": -math.log(4096)}),
    Case("sigmoid_causal", f"sigmoid:causal=true,bias={-math.log(4096)!r},{S128}", 4, 16, 16, 4096, 4096, 128,
         ("triton-sigmoid", "torch-eager"), target=("triton-sigmoid", 1.8),
         issue_peer_numbers={"triton-sigmoid": 228}, extra={"bias": -math.log(4096)}),
    Case("lightning", "lightning", 4, 16, 16, 8192, 8192, 128, ("fla", "lightning_attn2"), metric="mtok_s",
         target=("fla", 1.0), issue_peer_numbers={"fla": 65, "lightning_attn2": 27.5}, owner="Triton-B"),
    Case("decode_gqa", f"decode:{S128}", 8, 32, 8, 1, 32768, 128, ("sdpa-flash", "sdpa-cudnn", "flex"),
         metric="tb_s", target=("sdpa", 0.95), issue_peer_numbers={"sdpa": 2.93, "flex": 0.93}, owner="Triton-B"),
]


def select(names: str | None) -> list[Case]:
    """Cases whose variant is in the comma-separated ``names`` (all when None)."""
    if not names:
        return list(CASES)
    wanted = {n.strip() for n in names.split(",")}
    unknown = wanted - {c.variant for c in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(c.variant for c in CASES)}")
    return [c for c in CASES if c.variant in wanted]
