"""Kernel-option parsing and small launch arithmetic shared by the Triton generators.

Each generator declares its tuning knobs as a frozen dataclass; :func:`parse_options` turns the
keyword arguments a user passed to ``einfuse.compile`` into one, rejecting unknown names with the
list of valid ones (so a typo never silently falls back to a default).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from einfuse.errors import CodegenError

# options every builder accepts because the dispatcher passes them to all of them
IGNORED_OPTIONS = frozenset({"autotune", "device", "dtype"})

T = TypeVar("T")


def parse_options(cls: type[T], options: dict[str, Any], what: str,
                  power_of_two: tuple[str, ...] = ()) -> T:
    """``cls(**options)`` after checking names, and that ``power_of_two`` fields are powers of 2 >= 16."""
    valid = {f.name for f in fields(cls)}
    bad = set(options) - valid - IGNORED_OPTIONS
    if bad:
        raise CodegenError(f"unknown {what} option(s) {', '.join(sorted(bad))}; "
                           f"valid: {', '.join(sorted(valid))}")
    for f in fields(cls):
        if f.name in options:
            check_option_value(f.name, options[f.name], f.default)
    opts = cls(**{k: v for k, v in options.items() if k in valid})
    for name in power_of_two:
        val = getattr(opts, name)
        if val < 16 or val & (val - 1):
            raise CodegenError(f"option {name}={val} must be a power of two >= 16")
    return opts


def check_option_value(name: str, value: Any, default: Any) -> None:
    """An option's value has its default's type (None defaults take an int), and counts make sense:
    ``num_warps*`` a power of two 1..32, ``num_stages*`` >= 1, other integers >= 0."""
    import numbers

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CodegenError(f"option {name}={value!r} must be True or False")
        return
    if isinstance(default, str):
        if not isinstance(value, str):
            raise CodegenError(f"option {name}={value!r} must be a string")
        return
    if isinstance(default, int) or default is None:
        if value is None and default is None:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise CodegenError(f"option {name}={value!r} must be an integer")
        if name.startswith("num_warps") and (value < 1 or value > 32 or value & (value - 1)):
            raise CodegenError(f"option {name}={value} must be a power of two from 1 to 32")
        if name.startswith("num_stages") and value < 1:
            raise CodegenError(f"option {name}={value} must be >= 1")
        if value < 0:
            raise CodegenError(f"option {name}={value} must be >= 0")


def pow2(n: int, lo: int = 16) -> int:
    """The smallest power of two >= max(n, lo) (Triton block shapes must be powers of two)."""
    p = lo
    while p < n:
        p *= 2
    return p


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
