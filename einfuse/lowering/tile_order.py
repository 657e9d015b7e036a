"""Which tokens a query or key tile holds: contiguous runs, or boxes of a token grid.

A tile is BLOCK consecutive flat positions by default. For attention over a grid of tokens
(neighbourhood attention: the sequence is the row-major flattening of a 2-D or 3-D grid) a run of
128 flat positions is a thin strip of the grid, whose neighbourhoods together touch many key tiles;
a box (8 x 16 tokens) touches far fewer. A :class:`TileOrder` names that choice once and gives it
in both places it is needed: as Triton code (the positions and validity of a tile's rows) and as
host arrays (for classifying tile pairs). The mask is always evaluated on the true positions, so
the order changes speed, never results.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TileOrder:
    """``grid = ()`` for contiguous tiles; else the token grid whose boxes the tiles are.

    The box shape follows from the tile size (:func:`box_for`), so one generated kernel serves every
    tile size the autotuner tries: the box dimensions are constexpr arguments of the kernel.
    """

    grid: tuple[int, ...] = ()

    @property
    def is_flat(self) -> bool:
        return not self.grid

    def box(self, block: int) -> tuple[int, int, int]:
        """The box of a ``block``-token tile as three extents (leading 1s for 2-D grids)."""
        if self.is_flat:
            return (1, 1, block)
        b = box_for(self.grid, block)
        return (1,) * (3 - len(b)) + b

    def tiles_per_axis(self, block: int) -> tuple[int, ...]:
        box = self.box(block)[3 - len(self.grid):]
        return tuple(-(-g // t) for g, t in zip(self.grid, box))

    def whole(self, n: int, block: int) -> bool:
        """Whether every tile's positions all exist (no bounds checks needed)."""
        if self.is_flat:
            return n % block == 0
        box = self.box(block)[3 - len(self.grid):]
        return all(g % b == 0 for g, b in zip(self.grid, box))

    def num_tiles(self, n: int, block: int) -> int:
        if self.is_flat:
            return -(-n // block)
        return math.prod(self.tiles_per_axis(block))

    def describe(self) -> str:
        if self.is_flat:
            return "contiguous runs of positions"
        return f"boxes of the {'x'.join(map(str, self.grid))} token grid (box shape set by the tile size)"

    # ---- Triton ------------------------------------------------------------------------------
    def triton_function(self, name: str, block: str) -> str:
        """Source of ``name(t, offs, N, BLOCK, S0, S1, S2) -> (positions, valid)`` for tile ``t``;
        ``S0..S2`` are the box extents (constexpr), unused for contiguous tiles."""
        head = (f"@triton.jit\ndef {name}(t, offs, N, {block}: tl.constexpr, S0: tl.constexpr, "
                f"S1: tl.constexpr, S2: tl.constexpr):\n")
        if self.is_flat:
            return (head + f'    """Tile t holds positions t*{block} + offs; those < N exist."""\n'
                    f"    pos = t * {block} + offs\n    return pos, pos < N\n")
        nd = len(self.grid)
        ext = [f"S{3 - nd + ax}" for ax in range(nd)]  # box extent of each grid axis
        lines = [head + f'    """Tile t is a {"x".join(ext)} box of the {"x".join(map(str, self.grid))} '
                        'token grid (boxes and tokens row-major)."""']
        rest = "t"
        for ax in range(nd - 1, 0, -1):  # which box: its coordinates on the grid of boxes
            nb = f"(({self.grid[ax]} + {ext[ax]} - 1) // {ext[ax]})"
            lines.append(f"    b{ax} = {rest} % {nb}")
            lines.append(f"    r{ax} = {rest} // {nb}")
            rest = f"r{ax}"
        lines.append(f"    b0 = {rest}")
        stride = "1"
        for ax in range(nd - 1, -1, -1):  # which token of the box: offs split row-major over the box
            local = "offs" if stride == "1" else f"(offs // ({stride}))"
            if ax > 0:
                local = f"{local} % {ext[ax]}"
            lines.append(f"    c{ax} = b{ax} * {ext[ax]} + {local}")
            stride = ext[ax] if stride == "1" else f"{stride} * {ext[ax]}"
        flat = "c0"
        for ax in range(1, nd):
            flat = f"({flat}) * {self.grid[ax]} + c{ax}"
        valid = " & ".join(f"(c{ax} < {self.grid[ax]})" for ax in range(nd))
        lines.append(f"    return {flat}, {valid}")
        return "\n".join(lines) + "\n"

    # ---- host --------------------------------------------------------------------------------
    def positions(self, n: int, block: int, device: object = "cpu"):
        """``(pos, valid)``: int64 tensors of shape (num_tiles, block) on ``device``."""
        import torch

        nt = self.num_tiles(n, block)
        offs = torch.arange(block, device=device, dtype=torch.int64)
        t = torch.arange(nt, device=device, dtype=torch.int64)[:, None]
        if self.is_flat:
            pos = t * block + offs
            return pos, pos < n
        per_axis = self.tiles_per_axis(block)
        box = self.box(block)[3 - len(self.grid):]
        tile_c, rest = [], t
        for ax in range(len(self.grid) - 1, 0, -1):
            tile_c.insert(0, rest % per_axis[ax])
            rest = rest // per_axis[ax]
        tile_c.insert(0, rest)
        coords, stride = [None] * len(self.grid), 1
        for ax in range(len(self.grid) - 1, -1, -1):
            local = (offs // stride) % box[ax] if ax > 0 else offs // stride
            coords[ax] = tile_c[ax] * box[ax] + local
            stride *= box[ax]
        valid = torch.ones_like(coords[0], dtype=torch.bool)
        pos = torch.zeros_like(coords[0])
        for ax, c in enumerate(coords):
            valid &= c < self.grid[ax]
            pos = pos * self.grid[ax] + c
        return pos, valid


FLAT = TileOrder()


@dataclass(frozen=True)
class SpanBoxes:
    """Key tiles laid over each query tile's *key span* instead of a fixed partition of the grid.

    With a fixed partition, a neighbourhood's span (query box + kernel - 1 per axis) straddles box
    boundaries and pays up to a whole extra box per axis: 16x32x32 grid, kernel 7, 4x4x4 query boxes
    need 10 keys per axis and visit three 4-wide key boxes (12), 1728 key positions per query tile for
    1000 in the span. Boxes laid from the span's first key, with a shape chosen to fit it (any extents,
    e.g. 2x5x5 in a 64-lane tile), visit 1280. The box shape and each query tile's box origins are
    decided with the block tables (:mod:`span_tables`); the kernel reads a tile as ``(origin token,
    box extents)``. Lanes past the box or the grid do not exist (masked like a ragged tile), so such
    tiles are never FULL.
    """

    grid: tuple[int, ...]

    @property
    def is_flat(self) -> bool:
        return False

    def whole(self, n: int, block: int) -> bool:
        return False  # a box may have fewer tokens than lanes, or reach past the grid

    def describe(self) -> str:
        return (f"boxes laid over each query tile's key span on the {'x'.join(map(str, self.grid))} "
                "token grid (box shape and origins from the block tables)")

    def triton_function(self, name: str, block: str) -> str:
        """Source of ``name(t, offs, N, BLOCK, S0, S1, S2) -> (positions, valid)`` where ``t`` is the
        box's first token and ``S0..S2`` its extents (constexpr; not necessarily powers of two)."""
        nd = len(self.grid)
        ext = [f"S{3 - nd + ax}" for ax in range(nd)]
        lines = [f"@triton.jit\ndef {name}(t, offs, N, {block}: tl.constexpr, S0: tl.constexpr, "
                 f"S1: tl.constexpr, S2: tl.constexpr):\n"
                 f'    """Tile t is the {"x".join(ext)} box whose first token is t on the '
                 f'{"x".join(map(str, self.grid))} token grid; lanes past the box or the grid do not exist."""']
        rest, stride = "t", 1
        for ax in range(nd - 1, 0, -1):  # the origin's coordinates
            lines.append(f"    o{ax} = ({rest}) % {self.grid[ax]}" if ax == nd - 1 else
                         f"    o{ax} = (t // {stride}) % {self.grid[ax]}")
            stride *= self.grid[ax]
        lines.append(f"    o0 = t // {stride}")
        inner = "1"
        for ax in range(nd - 1, -1, -1):  # the lane's coordinates inside the box
            local = "offs" if inner == "1" else f"(offs // ({inner}))"
            if ax > 0:
                local = f"{local} % {ext[ax]}"
            lines.append(f"    l{ax} = {local}")
            lines.append(f"    c{ax} = o{ax} + l{ax}")
            inner = ext[ax] if inner == "1" else f"{inner} * {ext[ax]}"
        flat = "c0"
        for ax in range(1, nd):
            flat = f"({flat}) * {self.grid[ax]} + c{ax}"
        valid = " & ".join(["(l0 < " + ext[0] + ")"] + [f"(c{ax} < {self.grid[ax]})" for ax in range(nd)])
        lines.append(f"    return {flat}, {valid}")
        return "\n".join(lines) + "\n"


def grid_of(cascade_attrs: dict, params: dict[str, float]) -> tuple[int, ...] | None:
    """The token grid a cascade declares (``attrs['neighborhood']['shape']``), if any."""
    info = cascade_attrs.get("neighborhood")
    if not isinstance(info, dict):
        return None
    shape = info.get("shape") or []
    if len(shape) < 2:
        return None
    names = ("X0", "X1", "X2")[: len(shape)]
    # the grid sizes may have been rebound through params (compile(..., sizes={"X1": ...}))
    return tuple(int(params.get(n, s)) for n, s in zip(names, shape))


@functools.lru_cache(maxsize=4096)
def box_for(grid: tuple[int, ...], block: int) -> tuple[int, ...]:
    """A near-cubic box of ``block`` tokens (powers of two), grown from the innermost axis.

    Cached: launches ask for the boxes of their tiles on every call (a backward call ~9 times)."""
    dims = [1] * len(grid)
    while math.prod(dims) < block:
        growable = [a for a in range(len(grid)) if dims[a] * 2 <= grid[a]]
        if not growable:  # grid smaller than a tile: extra tokens fall outside it and are masked
            dims[-1] *= 2
            continue
        a = min(growable, key=lambda a: (dims[a], -a))
        dims[a] *= 2
    return tuple(dims)
