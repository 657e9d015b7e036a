"""Pareto fronts and constrained choices over design-space points (all objectives minimised).

A point is on the front when no other point is at least as good in every objective and strictly
better in one. Points with identical objectives do not dominate each other, so duplicates are all
kept (two parameter sets that give the same latency, energy and area are both worth reporting).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from einfuse.errors import SimulatorError

#: Objectives a sweep row can be judged by: the row key and how a user names it.
OBJECTIVES: Mapping[str, Callable[[Mapping[str, Any]], float]] = {
    "latency": lambda r: float(r["latency_s"]),
    "energy": lambda r: float(r["energy_pj"]),
    "area": lambda r: float(r["area_mm2"]),
    "edp": lambda r: float(r["energy_pj"]) * float(r["latency_s"]),
}


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    Sort by the objectives lexicographically; a point can only be dominated by one sorted before it
    (or equal to it), so each point is checked against the front found so far: O(n * front).
    """
    if not points:
        return []
    dims = {len(p) for p in points}
    if len(dims) != 1:
        raise SimulatorError(f"pareto_front: points have different numbers of objectives {sorted(dims)}")
    for p in points:
        if any(math.isnan(x) for x in p):
            raise SimulatorError(f"pareto_front: a point has a NaN objective {tuple(p)}")
    order = sorted(range(len(points)), key=lambda i: tuple(points[i]))
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i]) for j in front):
            front.append(i)
    return sorted(front)


def bucket(x: float, rel_tol: float) -> float:
    """``x`` on a logarithmic grid of relative width ``rel_tol`` (0: ``x`` itself). Two designs whose
    latencies differ by 0.01 % (a DRAM latency that shows once a layer) are the same latency to a
    designer; comparing on the grid keeps such near-ties from all landing on the front."""
    if rel_tol <= 0 or x <= 0:
        return x
    return float(math.floor(math.log(x) / math.log1p(rel_tol)))


def front_rows(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str] = ("latency", "energy", "area"),
               rel_tol: float = 0.0) -> list[Mapping[str, Any]]:
    """The rows on the front of ``objectives`` (names from :data:`OBJECTIVES`), comparing values on
    a ``rel_tol`` grid (:func:`bucket`; 0 is exact)."""
    fns = [objective(o) for o in objectives]
    idx = pareto_front([[bucket(f(r), rel_tol) for f in fns] for r in rows])
    return [rows[i] for i in idx]


def objective(name: str) -> Callable[[Mapping[str, Any]], float]:
    if name not in OBJECTIVES:
        raise SimulatorError(f"unknown objective {name!r}; objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


#: Constraint name -> (row objective, unit factor from the user's unit to the row's).
CONSTRAINTS: Mapping[str, tuple[str, float, str]] = {
    "max_latency": ("latency", 1e-3, "ms"),
    "max_energy": ("energy", 1e9, "mJ"),
    "max_area": ("area", 1.0, "mm2"),
}


def feasible(row: Mapping[str, Any], limits: Mapping[str, float]) -> bool:
    """``row`` meets every limit (``{"max_area": 300.0, "max_energy": 5.0}`` in mm2 / mJ / ms)."""
    for name, bound in limits.items():
        obj, scale, _ = CONSTRAINTS[name]
        if OBJECTIVES[obj](row) > bound * scale:
            return False
    return True


def best(rows: Sequence[Mapping[str, Any]], minimize: str = "latency",
         limits: Mapping[str, float] | None = None, rel_tol: float = 0.0) -> Mapping[str, Any] | None:
    """The feasible row with the smallest ``minimize`` objective, compared on a ``rel_tol`` grid
    (:func:`bucket`), ties going to the smaller area, then energy, then the objective itself; None
    when no row meets the limits."""
    for name in limits or {}:
        if name not in CONSTRAINTS:
            raise SimulatorError(f"unknown constraint {name!r}; constraints: {', '.join(CONSTRAINTS)}")
    f = objective(minimize)
    ok = [r for r in rows if feasible(r, limits or {})]
    if not ok:
        return None
    return min(ok, key=lambda r: (bucket(f(r), rel_tol), OBJECTIVES["area"](r), OBJECTIVES["energy"](r), f(r)))


def best_across(rows: Sequence[Mapping[str, Any]], minimize: str = "latency",
                limits: Mapping[str, float] | None = None,
                design: Callable[[Mapping[str, Any]], Any] = lambda r: r["design"],
                ) -> tuple[Any, float] | None:
    """One design for every workload in ``rows``: the design, among those simulated at every
    workload and within the limits at each, with the smallest geometric mean of ``minimize`` (a
    geometric mean, so a 1K and a 64K layer weigh the same). Returns (design, mean) or None."""
    f = objective(minimize)
    workloads = {(r["spec"], r["model"], r["seq"]) for r in rows}
    by: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(design(r), []).append(r)
    scored = []
    for d, rs in by.items():
        if {(r["spec"], r["model"], r["seq"]) for r in rs} != workloads or not all(feasible(r, limits or {}) for r in rs):
            continue
        vals = [f(r) for r in rs]
        if min(vals) <= 0:
            continue
        scored.append((math.exp(sum(math.log(v) for v in vals) / len(vals)), d))
    if not scored:
        return None
    mean, d = min(scored, key=lambda t: t[0])
    return d, mean
