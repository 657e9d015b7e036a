"""Tile classes of the score constraint: which (query sub-block, key tile) pairs are empty, partial, full.

The classification comes from :mod:`einfuse.simulator.tilemap` when the constraint flattens onto the
query and key ranks (interval subdivision of whole-tile boxes, present points counted exactly per
tile class); then from the passes' ``classify_tiles`` (analytic, no dense mask); otherwise small problems are classified exactly here by evaluating the constraint on every
tile, and large ones conservatively treat every tile as partial (no work is skipped). The density of
partial tiles (fraction of their points inside the constraint) turns performed work into useful
work for MAC counts and utilisation. With ``classify_tiles`` it is counted exactly from the flat
constraint, per distinct tile class (:mod:`einfuse.simulator.counting`); a constraint that lives
inside one key tile (lightning's intra-block ``m0 <= p0``) is evaluated on one tile; otherwise the
partial tiles are sampled (flagged not exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.errors import EinfuseError
from einfuse.ir.cascade import Cascade
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, index_symbol, size_symbol
from einfuse.ir.symeval import evaluate
from einfuse.simulator.mapping import Roles

EMPTY, PARTIAL, FULL = 0, 1, 2
_EXACT_LIMIT = 1 << 24        # points evaluated for an exact classification without the pass
_DENSITY_SAMPLES = 64


@dataclass(frozen=True)
class Tiles:
    kinds: np.ndarray | None     # (heads_with_distinct_masks, sub-blocks, key tiles); None = all FULL
    density: float               # mean fraction of present points in PARTIAL tiles
    exact: bool                  # density computed from every partial tile
    method: str

    @property
    def heads(self) -> int:
        return 1 if self.kinds is None else self.kinds.shape[0]

    def min_row_tiles(self, p1: int) -> int:
        """Fewest non-empty tiles in a key-tile row of a row block of ``p1`` sub-blocks."""
        if self.kinds is None:
            return p1
        nonempty = self.kinds != EMPTY                     # (heads, sub-blocks, key tiles)
        h, n_sub, n_stream = nonempty.shape
        blocks = -(-n_sub // p1)
        pad = nonempty
        if blocks * p1 != n_sub:
            pad = np.zeros((h, blocks * p1, n_stream), bool)
            pad[:, :n_sub] = nonempty
        counts = count_true(pad.reshape(h, blocks, p1, n_stream), axis=2)
        counts = counts[counts > 0]
        return int(counts.min()) if counts.size else p1

    def skipped_fraction(self) -> float:
        if self.kinds is None:
            return 0.0
        # EMPTY is 0: the empty tiles are the table's zeros (count_nonzero is ~20x faster than the
        # mean of a 16.7 M-tile comparison; the same count over the same size, the same float)
        return float((self.kinds.size - np.count_nonzero(self.kinds)) / self.kinds.size)


def count_true(b: np.ndarray, axis: int) -> np.ndarray:
    """How many of ``b`` (boolean) are True along ``axis``, as int64. Summed as bytes into int16
    when the axis is shorter than 2**15 (exact): numpy's bool -> int64 sum over a middle axis of a
    1M-token tile table (4096 x 4096) costs ~30 ms, this ~3 ms."""
    if b.shape[axis] < 1 << 15:
        return np.add.reduce(b.view(np.uint8), axis=axis, dtype=np.int16).astype(np.int64)
    return b.sum(axis=axis, dtype=np.int64)


def score_constraint(c: Cascade, roles: Roles, members: list[int] | None = None) -> tuple[int, sympy.Basic] | None:
    """The first constraint over both the key and the query variables (the mask)."""
    keyed = {v for v in (roles.stream, roles.rows) if v}
    for i, e in enumerate(c.einsums):
        if members is not None and i not in members:
            continue
        if e.where is None:
            continue
        names = {str(s) for s in e.where.free_symbols}
        if names & keyed and roles.cols in names:
            return i, e.where
    return None


def classify(c: Cascade, roles: Roles, sizes: dict[str, int], heads: int,
             members: list[int] | None = None) -> Tiles:
    """Tile classes of the constraint among ``members`` (a fusion group's Einsums; all if None)."""
    found = score_constraint(c, roles, members)
    if found is None:
        return Tiles(None, 1.0, True, "unconstrained")
    _, where = found
    n_sub, n_stream = roles.n_sub, roles.n_stream
    table = _from_tilemap(c, sizes, roles, heads)
    if table is not None:
        return Tiles(table.kinds, table.present / table.area if table.area else 1.0, True,
                     "exact tile classes (interval subdivision, present points counted per class)")
    kinds = _from_pass(c, sizes, roles)
    if kinds is not None:
        counted = _count_from_pass(c, sizes, roles, kinds)
        if counted is not None:
            density, exact = counted
            how = "exact counts" if exact else "counts of a random sample of partial tiles"
            return Tiles(kinds, density, exact, f"classify_tiles, {how}")
        density, exact = _density(kinds, where, roles, sizes)
        return Tiles(kinds, density, exact, "classify_tiles")
    if _block_local(where, roles):
        # the constraint lives inside a key tile (lightning's m0 <= p0): every key tile alike
        kinds, density = _block_local_kinds(where, roles, sizes, heads)
        return Tiles(kinds, density, True, "exact (one key tile, the same in every block)")
    total = n_sub * n_stream * roles.rows_tile * roles.cols_tile
    if total > _EXACT_LIMIT:
        return Tiles(np.full((1, n_sub, n_stream), PARTIAL, np.int8), 1.0, False,
                     "conservative (classify_tiles unavailable: every tile partial)")
    kinds = _exact(where, roles, sizes, heads)
    density, exact = _density(kinds, where, roles, sizes)
    return Tiles(kinds, density, exact, "exact")


def _from_tilemap(c: Cascade, sizes: dict[str, int], roles: Roles, heads: int):
    """Exact tile table of the flat constraint (:mod:`einfuse.simulator.tilemap`), or None when the
    constraint cannot be flattened onto the query and key ranks."""
    from einfuse.passes.block_sparsity import score_constraint as flat_constraint
    from einfuse.simulator.tilemap import bind_sizes, tile_table

    try:
        pred = flat_constraint(c)
        env = tuple(sorted({**{k: float(v) for k, v in c.params.items()},
                            **{k: float(v) for k, v in sizes.items()}}.items()))
        bound, P, M, hs = bind_sizes(pred, c.ranks["P"].extent, c.ranks["M"].extent, env)
    except (EinfuseError, KeyError, TypeError, ValueError):
        return None
    table = tile_table(bound, index_symbol("P"), index_symbol("M"), P, M, roles.cols_tile, roles.rows_tile,
                       hs)
    if table.kinds.shape[1:] != (roles.n_sub, roles.n_stream):
        return None
    return table


def _count_from_pass(c: Cascade, sizes: dict[str, int], roles: Roles,
                     kinds: np.ndarray) -> tuple[float, bool] | None:
    """Exact density of the partial tiles from the flat constraint (see :mod:`.counting`)."""
    from einfuse.passes.block_sparsity import _bind
    from einfuse.passes.block_sparsity import score_constraint as flat_constraint
    from einfuse.simulator.counting import partial_points

    try:
        pred = flat_constraint(c)
        env = tuple(sorted({**{k: float(v) for k, v in c.params.items()},
                            **{k: float(v) for k, v in sizes.items()}}.items()))
        bound, P, M, _ = _bind(pred, c.ranks["P"].extent, c.ranks["M"].extent, env, "P", "M")
    except (EinfuseError, KeyError, TypeError, ValueError):
        return None
    present, area, exact = partial_points(bound, index_symbol("P"), index_symbol("M"), P, M,
                                          roles.cols_tile, roles.rows_tile, kinds)
    return (present / area if area else 1.0), exact


def _block_local(where: sympy.Basic, roles: Roles) -> bool:
    if not roles.stream or roles.stream == roles.rows:
        return False
    names = {str(s) for s in where.free_symbols}
    return roles.stream not in names and roles.stream_elems % roles.rows_tile == 0


def _block_local_kinds(where, roles: Roles, sizes: dict[str, int], heads: int) -> tuple[np.ndarray, float]:
    hs = heads if HEAD_INDEX in where.free_symbols else 1
    kinds = np.zeros((hs, roles.n_sub, 1), np.int8)
    present = total = 0
    for h in range(hs):
        for q in range(roles.n_sub):
            m = _tile_mask(where, roles, sizes, q, 0, h)
            kinds[h, q, 0] = FULL if m.all() else (PARTIAL if m.any() else EMPTY)
            if kinds[h, q, 0] == PARTIAL:
                present += int(m.sum())
                total += m.size
    kinds = np.repeat(kinds, roles.n_stream, axis=2)
    return kinds, (present / total if total else 1.0)


def _from_pass(c: Cascade, sizes: dict[str, int], roles: Roles) -> np.ndarray | None:
    try:
        from einfuse.passes.block_sparsity import classify_tiles
    except ImportError:
        return None
    try:
        tm = classify_tiles(c, dict(sizes), roles.cols_tile, roles.rows_tile)
    except (EinfuseError, ValueError, TypeError, KeyError, NotImplementedError):
        # the pass may not handle every constraint; fall back to our own classification
        return None
    kinds = np.asarray(tm.kinds, dtype=np.int8)
    if kinds.ndim == 2:
        kinds = kinds[None]
    if kinds.shape[1:] != (roles.n_sub, roles.n_stream):
        return None
    return kinds


def _env(where: sympy.Basic, roles: Roles, sizes: dict[str, int], q: int, s: int, h: int) -> dict:
    env: dict = {size_symbol(k): v for k, v in sizes.items()}
    env[BATCH_INDEX] = 0
    env[HEAD_INDEX] = h
    cols = np.arange(roles.cols_tile) + q * roles.cols_tile
    cols = cols[cols < roles.cols_extent]
    if roles.stream != roles.rows and roles.stream:
        env[index_symbol(roles.stream)] = s
        rows = np.arange(roles.rows_tile)
        rows = rows[s * roles.rows_tile + rows < roles.stream_elems]
    else:
        rows = np.arange(roles.rows_tile) + s * roles.rows_tile
        rows = rows[rows < roles.stream_elems]
    env[index_symbol(roles.rows)] = rows[:, None]
    env[index_symbol(roles.cols)] = cols[None, :]
    return env


def _tile_mask(where, roles, sizes, q, s, h) -> np.ndarray:
    env = _env(where, roles, sizes, q, s, h)
    shape = (env[index_symbol(roles.rows)].shape[0], env[index_symbol(roles.cols)].shape[1])
    return np.broadcast_to(evaluate(where, env), shape)


def _exact(where, roles, sizes, heads) -> np.ndarray:
    hs = heads if HEAD_INDEX in where.free_symbols else 1
    kinds = np.zeros((hs, roles.n_sub, roles.n_stream), np.int8)
    for h in range(hs):
        for q in range(roles.n_sub):
            for s in range(roles.n_stream):
                m = _tile_mask(where, roles, sizes, q, s, h)
                kinds[h, q, s] = FULL if m.all() else (PARTIAL if m.any() else EMPTY)
    return kinds


def _density(kinds, where, roles, sizes) -> tuple[float, bool]:
    idx = np.argwhere(kinds == PARTIAL)
    if len(idx) == 0:
        return 1.0, True
    exact = len(idx) <= _DENSITY_SAMPLES
    if not exact:
        pick = np.linspace(0, len(idx) - 1, _DENSITY_SAMPLES).astype(int)
        idx = idx[pick]
    present = total = 0
    for h, q, s in idx:
        m = _tile_mask(where, roles, sizes, int(q), int(s), int(h))
        present += int(m.sum())
        total += m.size
    return present / max(total, 1), exact
