"""The token grid a neighbourhood variant declares, and the one rule it imposes on sequence lengths.

``na2d:shape=16x16`` flattens a 16 x 16 grid row-major into 256 tokens, so it is defined for
256 queries and 256 keys only: any other length would silently give a mask over the wrong grid. Every
user entry point that binds a length (compiled kernels, ``einfuse run/check/demo``, the simulator,
``einfuse passes --sparsity``) checks it with :func:`check_grid`, and the commands
whose length is a default rather than asked for (``run``/``check``/``demo`` without ``--shape``,
``simulate`` without ``--seq``) use the grid's token count. The grid is never derived from N (a
length rarely names one grid); ``na1d`` without ``shape`` has no grid and follows the sequence
length. The reference executor and the analyses evaluate the mask at any sizes they are given (the
formula is defined for every flat index; the kernel plan check runs it on a few dozen positions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from einfuse.errors import EinfuseError, SpecError
from einfuse.ir.cascade import Cascade

AXIS_SIZE_NAMES = ("X0", "X1", "X2")


def declared_grid(c: Cascade, sizes: Mapping[str, float] | None = None) -> tuple[int, ...] | None:
    """The grid (with sizes rebound through ``sizes`` or params, e.g. ``X1=9``), or None."""
    info = c.attrs.get("neighborhood")
    shape = info.get("shape") if isinstance(info, dict) else None
    if not shape:
        return None
    merged = {**c.params, **(sizes or {})}
    return tuple(int(merged.get(n, s)) for n, s in zip(AXIS_SIZE_NAMES, shape))


def grid_tokens(c: Cascade, sizes: Mapping[str, float] | None = None) -> int | None:
    """Number of tokens of the declared grid (None without one)."""
    grid = declared_grid(c, sizes)
    return None if grid is None else math.prod(grid)


def check_grid(c: Cascade, n_q: int | None, n_kv: int | None = None,
               sizes: Mapping[str, float] | None = None, given_by: str = "the inputs",
               error: type[EinfuseError] = SpecError) -> None:
    """Raise ``error`` unless the query and key lengths equal the token count of the grid."""
    grid = declared_grid(c, sizes)
    if grid is None:
        return
    tokens = math.prod(grid)
    for n, what in ((n_q, "queries"), (n_kv, "keys")):
        if n is not None and int(n) != tokens:
            raise error(f"{c.name}: the {'x'.join(map(str, grid))} grid has {tokens} tokens, but there are {n} "
                        f"{what} ({given_by}); use N = {tokens}, or a shape= whose sizes multiply to {n}")


__all__ = ["check_grid", "declared_grid", "grid_tokens"]
