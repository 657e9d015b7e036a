"""``is_zero(d)``: is an index expression identically zero, without ``sympy.simplify`` where it
cannot differ.

Passes, validation and the simulator ask this of differences of index expressions (``r+1 - r - 1``,
``idx - tile * outer - inner``), which are nearly always polynomials: structurally zero, or zero
once expanded (a polynomial's expanded form is canonical, so ``expand`` decides it exactly).
``simplify`` costs milliseconds a call, and its first call imports ``sympy.physics`` (0.15-0.4 s), on
every ``einfuse simulate`` and compile; it stays the answer for anything else (``floor``, ``Mod``).
"""

from __future__ import annotations

import sympy


def is_zero(d: object) -> bool:
    """``sympy.simplify(d) == 0``, decided by ``expand`` for polynomials."""
    d = sympy.sympify(d)
    if d == 0:
        return True
    if d.is_polynomial():
        return sympy.expand(d) == 0
    return sympy.simplify(d) == 0


__all__ = ["is_zero"]
