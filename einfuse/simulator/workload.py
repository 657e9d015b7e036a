"""Workloads: the FuseMax paper's transformer models and any explicit attention shape.

Self-attention of one layer, encoder inference: ``M = P = seq`` keys and queries, head dimension
``E = F``, batch 64 by default (following FLAT and FuseMax). Extra sizes a variant needs (a window,
a number of agent tokens) go in ``sizes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from einfuse.errors import SimulatorError


@dataclass(frozen=True)
class Model:
    name: str
    heads: int
    head_dim: int
    hidden: int
    ffn: int


#: FuseMax Sec. VI-A / its artifact's flat_validation.csv.
MODELS: Mapping[str, Model] = MappingProxyType({
    "bert-base": Model("bert-base", 12, 64, 768, 3072),
    "trxl": Model("trxl", 16, 64, 1024, 4096),
    "t5": Model("t5", 8, 64, 512, 2048),
    "xlm": Model("xlm", 16, 128, 2048, 8192),
})
_ALIASES = {"bert": "bert-base", "t5-small": "t5", "trxl-wt103": "trxl", "transformer-xl": "trxl"}
DEFAULT_BATCH = 64
DEFAULT_SEQS = (1024, 4096, 16384, 65536, 262144, 1048576)


@dataclass(frozen=True)
class Workload:
    """One attention layer: ``batch x heads`` independent (query block, key sequence) problems."""

    model: str
    seq: int
    batch: int = DEFAULT_BATCH
    heads: int = 12
    head_dim: int = 64
    kv_seq: int | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seq", "batch", "heads", "head_dim"):
            if getattr(self, name) < 1:
                raise SimulatorError(f"workload {self.model}: {name} must be >= 1, got {getattr(self, name)}")

    def size_map(self) -> dict[str, int]:
        out = {"P": self.seq, "M": self.kv_seq or self.seq, "E": self.head_dim, "F": self.head_dim,
               "B": self.batch, "H": self.heads}
        out.update({k: int(v) for k, v in self.sizes.items()})
        return out

    def with_seq(self, seq: int) -> Workload:
        return replace(self, seq=seq)


def model_names() -> list[str]:
    return list(MODELS)


def get_model(name: str) -> Model:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        import difflib

        close = difflib.get_close_matches(key, list(MODELS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SimulatorError(f"unknown model {name!r}{hint}; built-in models: {', '.join(MODELS)}")
    return MODELS[key]


def workload(model: str, seq: int, batch: int = DEFAULT_BATCH, sizes: Mapping[str, int] | None = None) -> Workload:
    """The attention layer of a built-in model at sequence length ``seq``."""
    m = get_model(model)
    return Workload(m.name, seq, batch, m.heads, m.head_dim, None, dict(sizes or {}))


def parse_seq(text: str) -> list[int]:
    """``"1K,4K,64K,1M"`` -> ``[1024, 4096, 65536, 1048576]`` (K = 1024, M = 1024**2)."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        mult = 1
        if item[-1] in "kK":
            mult, item = 1024, item[:-1]
        elif item[-1] in "mM":
            mult, item = 1024 ** 2, item[:-1]
        try:
            val = int(float(item) * mult)
        except (ValueError, OverflowError):
            raise SimulatorError(f"sequence length {item!r} is not a number (use e.g. 1K,4K,1M)") from None
        if val < 1:
            raise SimulatorError(f"sequence length must be >= 1, got {val}")
        out.append(val)
    if not out:
        raise SimulatorError("no sequence length given")
    return out


def format_seq(n: int) -> str:
    if n % (1024 ** 2) == 0:
        return f"{n // 1024 ** 2}M"
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)
