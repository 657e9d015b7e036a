"""Choosing tile sizes, warps and pipeline depth: heuristic defaults, GPU timing, an on-disk cache.

A configuration is chosen per (variant, shape class, device): the shape class buckets sequence
lengths to powers of two so that one timing serves nearby shapes, and the device key carries the
GPU name and the Triton/torch/einfuse versions (a new compiler can change the best choice).
Results live in one JSON file under the einfuse cache dir, rewritten atomically after a merge with
what other processes stored meanwhile. Without a GPU (or before any timing) a heuristic chooses,
following what works for FlashAttention-2-style kernels on Hopper: 128-row query tiles, 64-key
tiles, 4-8 warps, 2-3 stages, smaller tiles as the head dimension grows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from einfuse.errors import CodegenError


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of a tiled attention kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def __str__(self) -> str:
        return f"BLOCK_M={self.block_m} BLOCK_N={self.block_n} warps={self.num_warps} stages={self.num_stages}"

    @staticmethod
    def from_dict(d: dict) -> KernelConfig:
        return KernelConfig(int(d["block_m"]), int(d["block_n"]), int(d["num_warps"]), int(d["num_stages"]))


def pow2_bucket(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def shape_class(dtype: str, head_dim: int, value_dim: int, n_q: int, n_kv: int, group: int) -> str:
    """Shapes that share a best configuration: same dtype and head dims, lengths in one power of 2."""
    return f"{dtype}-d{head_dim}-dv{value_dim}-q{pow2_bucket(n_q)}-kv{pow2_bucket(n_kv)}-g{min(group, 8)}"


def device_key(device: object = None) -> str:
    """GPU name and capability plus compiler/runtime versions; 'cpu-interpreter' without a GPU."""
    import torch
    import triton

    from einfuse import __version__

    if device is None or getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return f"cpu-interpreter|triton{triton.__version__}"
    name = torch.cuda.get_device_name(device)
    major, minor = torch.cuda.get_device_capability(device)
    cap = f"sm{major}{minor}"
    return f"{name}|{cap}|triton{triton.__version__}|torch{torch.__version__}|einfuse{__version__}"


def heuristic(head_dim: int, dtype: str, n_q: int, n_kv: int, interpreter: bool,
              boxed: bool = False) -> KernelConfig:
    """A good-enough configuration without timing (see the module docstring)."""
    if interpreter:
        # the interpreter runs numpy per block: mid-size tiles keep CPU tests quick yet multi-tile
        return KernelConfig(32, 32, 4, 1)
    d = max(16, 1 << (head_dim - 1).bit_length())
    wide = dtype == "fp32"
    if d <= 64:
        # mask-heavy grid tiles (neighbourhoods) run best with 64-row tiles (measured on H100)
        cfg = KernelConfig(64, 64, 4, 3) if boxed else KernelConfig(128, 128, 4, 3)
    elif d <= 128:
        cfg = KernelConfig(128, 64, 8, 3)
    else:
        cfg = KernelConfig(64, 32 if wide else 64, 4, 2)
    if wide and cfg.block_n > 32:
        cfg = KernelConfig(cfg.block_m, cfg.block_n // 2, cfg.num_warps, min(cfg.num_stages, 2))
    bm = min(cfg.block_m, max(16, pow2_bucket(n_q)))
    bn = min(cfg.block_n, max(16, pow2_bucket(n_kv)))
    return KernelConfig(bm, bn, cfg.num_warps, cfg.num_stages)


def candidates(head_dim: int, dtype: str, boxed: bool = False) -> list[KernelConfig]:
    """Configurations the tuner times (kept small: each one is a compilation)."""
    d = max(16, 1 << (head_dim - 1).bit_length())
    out: list[KernelConfig] = []
    if d <= 64:
        for bm, bn, w, s in [(128, 64, 4, 3), (128, 128, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3),
                             (64, 32, 4, 3), (128, 128, 8, 2)]:
            out.append(KernelConfig(bm, bn, w, s))
    elif d <= 128:
        for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2),
                             (128, 32, 4, 3), (64, 64, 4, 3)]:
            out.append(KernelConfig(bm, bn, w, s))
    else:
        for bm, bn, w, s in [(64, 64, 4, 2), (64, 32, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)]:
            out.append(KernelConfig(bm, bn, w, s))
    if dtype == "fp32":
        out = [c for c in out if c.block_n <= 64]
    if boxed:
        out = [c for c in out if c.block_n <= 64]
    return out


def read_json_object(path: Path) -> dict:
    """A cache file's JSON object; {} when it is missing, unreadable or not an object (caches are
    rebuilt, never trusted)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class TuneCache:
    """Best configurations on disk: ``{key: {"config": {...}, "ms": float}}`` in one JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            from einfuse.codegen.triton.loader import cache_dir

            path = cache_dir() / "autotune.json"
        self.path = Path(path)
        self._mem: dict[str, dict] | None = None

    def _read(self) -> dict[str, dict]:
        return read_json_object(self.path)

    def trials(self, key: str) -> dict:
        """Every configuration timed for ``key``: ms, or the error that ruled it out."""
        if self._mem is None:
            self._mem = self._read()
        return dict((self._mem.get(key) or {}).get("trials") or {})

    def get(self, key: str) -> KernelConfig | None:
        if self._mem is None:
            self._mem = self._read()
        entry = self._mem.get(key)
        if not entry:
            return None
        try:
            return KernelConfig.from_dict(entry["config"])
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, config: KernelConfig, ms: float, trials: dict | None = None) -> None:
        from einfuse.codegen.triton.loader import write_atomic

        data = self._read()  # merge with what other processes stored since we read
        data[key] = {"config": asdict(config), "ms": ms, "trials": trials or {}}
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        self._mem = data


def time_config(run: Callable[[], object]) -> float:
    """Median milliseconds of ``run`` with device events (warm-up excluded)."""
    import triton.testing

    return float(triton.testing.do_bench(run, warmup=10, rep=40, return_mode="median"))


def tune(make_run: Callable[[KernelConfig], Callable[[], object]], configs: Iterable[KernelConfig],
         key: str, cache: TuneCache, log: Callable[[str], None] | None = None) -> KernelConfig:
    """Time every configuration that compiles, store and return the fastest."""
    best: tuple[float, KernelConfig] | None = None
    errors = []
    trials: dict[str, object] = {}
    for cfg in configs:
        try:
            run = make_run(cfg)
            run()  # compile outside the timing
            ms = time_config(run)
        except Exception as exc:  # noqa: BLE001 - out of shared memory/registers: skip that config
            errors.append(f"{cfg}: {type(exc).__name__}")
            trials[str(cfg)] = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        trials[str(cfg)] = ms
        if log:
            log(f"  {cfg}: {ms:.4f} ms")
        if best is None or ms < best[0]:
            best = (ms, cfg)
    if best is None:
        raise CodegenError(f"autotuning {key}: no configuration ran ({'; '.join(errors)})")
    cache.put(key, best[1], best[0], trials)
    return best[1]


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
