"""Autotuning results shipped with einfuse: the configuration a fresh machine uses before any tuning.

Why: the on-disk tune cache (:mod:`einfuse.codegen.autotune`) is empty on a new machine, so without
this table every call there runs the heuristic, which can be well off the tuned time on some rows
(issue 14: "a fresh machine without a tune cache gets within 10 % of the tuned time"). The table,
``tuned_defaults.json`` next to this module, is written by ``benchmarks/tuned_defaults.py
--write-table`` from a full search on the GPU and committed.

Order of choice (runtime.AttentionKernel.config, linear.LinearKernel.prepare): options given
explicitly > the tune cache (``autotune=True`` results) > this table > the heuristic.

An entry (one JSON object in ``entries``) names

- ``device``: the device family, ``sm<major><minor>`` (``sm90`` for H100 and H200), and optionally
  ``device_name`` (``torch.cuda.get_device_name``); an entry of the same device name wins over one of
  the same family only;
- ``kernel``: ``attention`` (the one-pass softmax/sigmoid/normsum kernel) or ``linear``;
- ``variant``: the cascade's name (``softmax_causal``, ``na2d``, ``lightning``, ...); ``layout``: the
  tile order (``flat``, ``box``, ``span``);
- ``dtype`` (``bf16``, ``fp16``, ``fp32``), ``head_dim``, ``value_dim``, ``group`` (query heads per
  K/V head, capped at 8 as in :func:`autotune.shape_class`);
- ``n_q``, ``n_kv``: sequence lengths rounded up to powers of two (:func:`autotune.pow2_bucket`);
- ``config``: for ``attention`` the four :class:`KernelConfig` fields, for ``linear`` any
  :class:`LinearOptions` fields; ``measured`` (free-form) says where the numbers came from.

A lookup matches every field but the lengths exactly; among those it takes the entry nearest in
lengths (|log2 n_q ratio| + |log2 n_kv ratio|, at most :data:`MAX_OCTAVES`), so a shape near a tuned
one gets its configuration, and anything else gets the heuristic (an unknown GPU, a new variant).

Bad entries are **ignored with a warning** (:class:`TunedDefaultsWarning`, naming the file, the
entry's index and what is wrong), never an error: any configuration computes the same result, so a
broken table entry must not stop a user's call; the heuristic stands in. ``load_table(path,
strict=True)`` raises :class:`TunedDefaultsError` instead, for the table writer and tests.
``EINFUSE_TUNED_DEFAULTS=off`` turns the table off; ``EINFUSE_TUNED_DEFAULTS=/path.json`` reads
another one (the benchmark uses both).
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from einfuse.errors import CodegenError

TABLE_PATH = Path(__file__).with_name("tuned_defaults.json")
ENV = "EINFUSE_TUNED_DEFAULTS"
MAX_OCTAVES = 2
KERNELS = ("attention", "linear")
LAYOUTS = ("flat", "box", "span")
DTYPES = ("bf16", "fp16", "fp32")
_ATTENTION_FIELDS = ("block_m", "block_n", "num_warps", "num_stages")
_REQUIRED = ("device", "kernel", "variant", "layout", "dtype", "head_dim", "value_dim", "group", "n_q",
             "n_kv", "config")


class TunedDefaultsError(CodegenError):
    """The shipped tuned-defaults table (or an entry of it) is malformed (strict loading only)."""


class TunedDefaultsWarning(UserWarning):
    """A tuned-defaults entry was ignored; the heuristic stands in for the shapes it covered."""


@dataclass(frozen=True)
class Entry:
    """One checked table entry (lengths already powers of two)."""

    device: str
    device_name: str | None
    kernel: str
    variant: str
    layout: str
    dtype: str
    head_dim: int
    value_dim: int
    group: int
    n_q: int
    n_kv: int
    config: dict[str, Any]

    def key(self) -> tuple:
        """Entries with equal keys describe the same shapes (the writer replaces, never duplicates)."""
        return (self.device, self.device_name, self.kernel, self.variant, self.layout, self.dtype,
                self.head_dim, self.value_dim, self.group, self.n_q, self.n_kv)


def _pos_int(d: dict, name: str) -> int:
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}={v!r} must be a positive integer")
    return v


def _pow2(d: dict, name: str) -> int:
    v = _pos_int(d, name)
    if v & (v - 1):
        raise ValueError(f"{name}={v} must be a power of two (a length bucket)")
    return v


def check_config(kernel: str, config: Any) -> dict[str, Any]:
    """The entry's configuration, checked as the options it stands for would be when given by hand."""
    if not isinstance(config, dict) or not config:
        raise ValueError(f"config={config!r} must be a non-empty object")
    if kernel == "attention":
        missing = [f for f in _ATTENTION_FIELDS if f not in config]
        extra = sorted(set(config) - set(_ATTENTION_FIELDS))
        if missing or extra:
            raise ValueError(f"an attention config needs exactly {', '.join(_ATTENTION_FIELDS)} "
                             f"(missing {missing}, unknown {extra})")
        from einfuse.codegen.triton.runtime import LaunchOptions

        LaunchOptions.from_kwargs(dict(config))  # CodegenError names the option
    else:
        from einfuse.codegen.triton.linear import LinearOptions

        LinearOptions.of(dict(config))
    return dict(config)


def parse_entry(d: Any) -> Entry:
    """A raw JSON object as an :class:`Entry`; ValueError (or CodegenError) says what is wrong."""
    if not isinstance(d, dict):
        raise ValueError(f"an entry must be an object, not {type(d).__name__}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    for name, allowed in (("kernel", KERNELS), ("layout", LAYOUTS), ("dtype", DTYPES)):
        if d[name] not in allowed:
            raise ValueError(f"{name}={d[name]!r} must be one of {', '.join(allowed)}")
    for name in ("device", "variant"):
        if not isinstance(d[name], str) or not d[name]:
            raise ValueError(f"{name}={d[name]!r} must be a non-empty string")
    if not d["device"].startswith("sm"):
        raise ValueError(f"device={d['device']!r} must be a family like 'sm90'")
    name = d.get("device_name")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"device_name={name!r} must be a string")
    return Entry(d["device"], name, d["kernel"], d["variant"], d["layout"], d["dtype"],
                 _pos_int(d, "head_dim"), _pos_int(d, "value_dim"), min(_pos_int(d, "group"), 8),
                 _pow2(d, "n_q"), _pow2(d, "n_kv"), check_config(d["kernel"], d["config"]))


def load_table(path: Path | str, strict: bool = False) -> list[Entry]:
    """The checked entries of a table file. Not strict: a missing file is an empty table, and an
    unreadable file or bad entry is skipped with a :class:`TunedDefaultsWarning`; strict: the first
    problem raises :class:`TunedDefaultsError`."""
    path = Path(path)

    def bad(msg: str) -> None:
        if strict:
            raise TunedDefaultsError(f"tuned defaults {path}: {msg}")
        warnings.warn(f"tuned defaults {path}: {msg}; the heuristic stands in", TunedDefaultsWarning,
                      stacklevel=3)

    if not path.exists():
        if strict:
            raise TunedDefaultsError(f"tuned defaults {path}: no such file")
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        bad(f"unreadable ({type(exc).__name__}: {exc})")
        return []
    raw = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        bad("the file must be an object with an 'entries' list")
        return []
    out: list[Entry] = []
    for i, d in enumerate(raw):
        try:
            out.append(parse_entry(d))
        except (ValueError, CodegenError) as exc:
            what = f"{d.get('kernel')}/{d.get('variant')}" if isinstance(d, dict) else "?"
            bad(f"entry {i} ({what}) ignored: {exc}")
    return out


@functools.lru_cache(maxsize=8)
def _cached_table(path: str, mtime: float) -> tuple[Entry, ...]:
    return tuple(load_table(path))


def active_table() -> tuple[Entry, ...]:
    """The table calls consult: the shipped one, another named by ``$EINFUSE_TUNED_DEFAULTS``, or
    none when that variable is ``off``/``0``. Re-read when the file changes (the benchmark rewrites it)."""
    where = os.environ.get(ENV, "")
    if where.lower() in ("off", "0", "none", "false"):
        return ()
    path = Path(where) if where else TABLE_PATH
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return ()
    return _cached_table(str(path), mtime)


def _octaves(a: int, b: int) -> float:
    return abs(math.log2(a) - math.log2(b))


def lookup(entries: tuple[Entry, ...] | list[Entry], *, kernel: str, variant: str, device: str,
           device_name: str | None, layout: str, dtype: str, head_dim: int, value_dim: int, group: int,
           n_q: int, n_kv: int) -> Entry | None:
    """The entry for these shapes (see the module docstring for the matching rule), or None."""
    from einfuse.codegen.autotune import pow2_bucket

    bq, bkv, g = pow2_bucket(n_q), pow2_bucket(n_kv), min(group, 8)
    best: tuple[tuple[int, float], Entry] | None = None
    for e in entries:
        if (e.kernel, e.variant, e.layout, e.dtype, e.head_dim, e.value_dim, e.group) != (
                kernel, variant, layout, dtype, head_dim, value_dim, g):
            continue
        if e.device_name is not None and e.device_name == device_name:
            rank = 0
        elif e.device == device:
            rank = 1
        else:
            continue
        dist = _octaves(e.n_q, bq) + _octaves(e.n_kv, bkv)
        if dist > MAX_OCTAVES:
            continue
        score = (rank, dist)
        if best is None or score < best[0]:
            best = (score, e)
    return best[1] if best else None


@functools.lru_cache(maxsize=16)
def device_of(device: str) -> tuple[str, str] | None:
    """(family ``sm90``, name) of a CUDA device; None for anything else (the interpreter)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    dev = torch.device(device)
    major, minor = torch.cuda.get_device_capability(dev)
    return f"sm{major}{minor}", torch.cuda.get_device_name(dev)


def find(device: Any, **shape: Any) -> Entry | None:
    """:func:`lookup` in the active table for a torch device (None off CUDA or without a table)."""
    table = active_table()
    if not table:
        return None
    fam = device_of(str(device))
    if fam is None:
        return None
    return lookup(table, device=fam[0], device_name=fam[1], **shape)


def attention_config(device: Any, variant: str, layout: str, dtype: str, head_dim: int, value_dim: int,
                     group: int, n_q: int, n_kv: int) -> Any:
    """The table's :class:`KernelConfig` for an attention call, tiles clamped to the lengths as the
    heuristic clamps them (a nearby entry may be for longer sequences), or None."""
    from einfuse.codegen.autotune import KernelConfig, pow2_bucket

    e = find(device, kernel="attention", variant=variant, layout=layout, dtype=dtype, head_dim=head_dim,
             value_dim=value_dim, group=group, n_q=n_q, n_kv=n_kv)
    if e is None:
        return None
    c = KernelConfig.from_dict(e.config)
    return KernelConfig(min(c.block_m, max(16, pow2_bucket(n_q))), min(c.block_n, max(16, pow2_bucket(n_kv))),
                        c.num_warps, c.num_stages)


def entry_dict(e: Entry, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """An entry as the JSON object the table stores."""
    d: dict[str, Any] = {"device": e.device}
    if e.device_name:
        d["device_name"] = e.device_name
    d.update(kernel=e.kernel, variant=e.variant, layout=e.layout, dtype=e.dtype, head_dim=e.head_dim,
             value_dim=e.value_dim, group=e.group, n_q=e.n_q, n_kv=e.n_kv, config=dict(e.config))
    if measured:
        d["measured"] = measured
    return d


def merge_table(path: Path | str, new: list[tuple[Entry, dict[str, Any]]], about: str = "") -> dict[str, Any]:
    """Write ``path`` holding its present entries (strictly checked) with ``new`` ones replacing
    those of equal key; returns the JSON object written (entries sorted, so diffs stay readable)."""
    from einfuse.codegen.triton.loader import write_atomic

    path = Path(path)
    old_raw: list[dict] = []
    if path.exists():
        load_table(path, strict=True)
        old_raw = json.loads(path.read_text(encoding="utf-8"))["entries"]
    keyed = {parse_entry(d).key(): d for d in old_raw}
    for e, measured in new:
        keyed[e.key()] = entry_dict(e, measured)
    entries = [keyed[k] for k in sorted(keyed, key=lambda k: tuple(str(x) for x in k))]
    data = {"version": 1, "about": about or _ABOUT, "entries": entries}
    write_atomic(path, json.dumps(data, indent=1) + "\n")
    return data


_ABOUT = ("Tuned launch configurations used when the tune cache has no entry (einfuse/codegen/"
          "tuned_defaults.py); written by benchmarks/tuned_defaults.py --write-table.")
