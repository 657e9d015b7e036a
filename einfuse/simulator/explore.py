"""Design-space exploration: architecture parameters x variants x workloads, one simulation a point.

A sweep is a list of :class:`Point` s. Each point is simulated by :func:`run_point` through the
simulator's public entry points (``load_arch``, ``prepare``, ``simulate``) and becomes one flat row:
latency, energy, area (:mod:`einfuse.simulator.area`), utilisation and what limits it. Rows go to a
JSON-lines table (:class:`ResultTable`) as they finish, so a sweep that is stopped resumes where it
was: the points whose key is already in the table are not simulated again.

Points run on local processes (``concurrent.futures``) by default, or on a Dask distributed cluster
given its scheduler address. Dask rather than Ray: pure Python, 34 MB installed with its dependencies
(Ray ~285 MB), a local two-process cluster starts in seconds, ``dask scheduler`` / ``dask worker``
on other machines need nothing else, and its futures API is the one ``concurrent.futures`` users know.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from einfuse.errors import EinfuseError, SimulatorError

SCHEMA = "einfuse-explore/1"


@dataclass(frozen=True)
class Point:
    """One design point: a variant on a parameterised design at one workload."""

    spec: str
    arch: str                                   # built-in design name or YAML path
    params: tuple[tuple[str, float], ...]       # (name, value) in --vary order
    model: str
    seq: int
    batch: int = 64
    sizes: tuple[tuple[str, int], ...] = ()
    area_table: str | None = None
    inputs: str = ""                            # fingerprint of the design and area table contents
    fast_forward: bool = True                   # False: every tile simulated (to check approximate rows)
    cascade_text: str = field(default="", compare=False, repr=False)
    """The variant as cascade text (einfuse.ir's form): workers parse it, so this layer never loads
    specs itself (the front ends sit above the simulator); not part of the key."""

    @property
    def key(self) -> str:
        """Stable id of the point in the results table (same inputs -> same key, across runs)."""
        fields = [self.spec, self.arch, [list(p) for p in self.params], self.model, self.seq, self.batch,
                  [list(s) for s in self.sizes], self.area_table, self.inputs]
        text = json.dumps(fields + ([] if self.fast_forward else ["no-fast-forward"]), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def make_points(specs: Sequence[str], arch: str, grid: Sequence[Mapping[str, float]], models: Sequence[str],
                seqs: Sequence[int], batch: int = 64, sizes: Mapping[str, int] | None = None,
                area_table: str | None = None, fast_forward: bool = True,
                resolve: Callable[[str], Any] | None = None) -> list[Point]:
    """Every (spec, parameter set, model, length), lengths innermost. ``resolve`` turns a spec into
    its cascade (``einfuse.load_spec``; the caller's, since the front ends sit above this layer); a
    spec it is not given for must be cascade text already.

    Each point's key covers the contents of the design and the area table as well as their names,
    so editing a design's YAML (or the area table) makes a rerun simulate afresh instead of reusing
    rows of the old file. Changes to einfuse itself are not covered: start a new table then."""
    from einfuse.simulator.area import load_area_table

    sz = tuple(sorted((sizes or {}).items()))
    inputs = hashlib.sha1((repr(_base_arch(arch)) + repr(load_area_table(area_table))).encode()).hexdigest()[:12]
    from einfuse.ir.printer import format_cascade

    texts = {s: format_cascade(resolve(s)) if resolve is not None else s for s in specs}
    return [Point(s, arch, tuple(g.items()), m, n, batch, sz, area_table, inputs, fast_forward, texts[s])
            for s in specs for g in grid for m in models for n in seqs]


# ---- one point --------------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def _parse(text: str):
    from einfuse.ir.parser import parse_cascade

    try:
        return parse_cascade(text)
    except EinfuseError as exc:
        raise SimulatorError(f"explore: a point's variant is not cascade text ({exc}); make the points "
                             "with make_points(..., resolve=einfuse.load_spec)") from None


def _cascade(point: Point):
    return _parse(point.cascade_text or point.spec)


def _base_arch(name: str):
    """The design, parsed once per file version (a YAML edited between two sweeps is read again)."""
    return _load_arch(name, os.stat(name).st_mtime_ns if os.path.isfile(name) else 0)


@lru_cache(maxsize=8)
def _load_arch(name: str, mtime: int):
    from einfuse.simulator.arch import load_arch

    return load_arch(name)


@lru_cache(maxsize=64)
def _prepared(text: str, arch_name: str, params: tuple[tuple[str, float], ...]):
    """The cascade as the design maps it; it depends on the array height only (the key tile)."""
    from einfuse.simulator.simulate import prepare
    from einfuse.simulator.vary import apply_params

    return prepare(_parse(text), apply_params(_base_arch(arch_name), dict(params)))


def run_point(point: Point) -> dict[str, Any]:
    """Simulate one point and return its row (runs in a worker process: everything it needs is in
    ``point``, and every import happens here)."""
    from einfuse.simulator.area import area_breakdown, load_area_table
    from einfuse.simulator.simulate import simulate
    from einfuse.simulator.vary import apply_params
    from einfuse.simulator.workload import workload

    t0 = time.perf_counter()
    arch = apply_params(_base_arch(point.arch), dict(point.params))
    lowering_key = tuple((k, v) for k, v in point.params if k in ("pe", "rows"))
    cascade = _prepared(point.cascade_text or point.spec, point.arch, lowering_key)
    wl = workload(point.model, point.seq, point.batch, dict(point.sizes))
    r = simulate(cascade, arch, wl, lower=False, fast_forward=point.fast_forward)
    area = area_breakdown(arch, load_area_table(point.area_table))
    busy = {"2-D array": r.busy_2d, "1-D array": r.busy_1d, "DRAM": r.busy_dram}
    return {
        "schema": SCHEMA, "key": point.key, "spec": point.spec, "arch": point.arch, "design": arch.name,
        "params": dict(point.params), "model": point.model, "seq": point.seq, "batch": point.batch,
        "sizes": dict(point.sizes), "cycles": r.cycles, "latency_s": r.latency_s, "energy_pj": r.energy_pj,
        "energy_breakdown": dict(r.energy_breakdown), "area_mm2": sum(area.values()), "area": area,
        "util_2d": r.util_2d, "util_1d": r.util_1d, "busy_2d": r.busy_2d, "busy_1d": r.busy_1d,
        "busy_dram": r.busy_dram, "dram_bytes": r.dram_bytes, "buffer_bytes": r.buffer_bytes,
        "bound": max(busy, key=busy.__getitem__), "limit": limit_text(r.stalls, r.cycles, busy),
        "explanation": r.explain(), "macs_exact": bool(r.sim.get("macs_exact", True)),
        "approximate": bool(r.sim.get("approximate", False)),   # the engine extrapolated (fast-forward)
        "fast_forward": point.fast_forward,
        "row_block": r.sim.get("row_block"), "technology_nm": r.technology_nm,
        "wall_s": time.perf_counter() - t0, "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def limit_text(stalls: Mapping[str, Mapping[str, int]], cycles: int, busy: Mapping[str, float]) -> str:
    """One phrase: the busiest unit, and when the 2-D array is not it, what the 2-D array waits on."""
    from einfuse.simulator.simulate import NO_WORK

    unit = max(busy, key=busy.__getitem__)
    text = f"{unit} bound ({100 * busy[unit]:.0f}% busy)"
    if unit != "2-D array" and cycles:
        causes = {k: v for k, v in stalls.get("2d", {}).items() if v > 0}
        if causes:
            cause, v = max(causes.items(), key=lambda kv: kv[1])
            why = "no work then" if cause == NO_WORK else f"waiting for {cause}"
            text += f"; 2-D array {100 * busy['2-D array']:.0f}% busy, {100 * v / cycles:.0f}% {why}"
    return text


# ---- the results table ------------------------------------------------------------------------------

@dataclass
class ResultTable:
    """A JSON-lines file of rows, appended to and never rewritten.

    Each row is one ``write`` of one line on a file opened for appending, followed by ``fsync``:
    a killed sweep leaves whole rows and at most one torn last line. Reading keeps every line that
    parses as a row of this schema and counts the rest (``foreign``); a torn last line is closed with
    a newline before the next append, so it can never glue onto a new row, and is otherwise left as
    it is, like any other line a user put in the file.
    """

    path: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    foreign: int = 0

    def load(self) -> ResultTable:
        self.rows.clear()
        self.foreign = 0
        if not os.path.exists(self.path):
            return self
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self.foreign += 1
                    continue
                if isinstance(row, dict) and row.get("schema") == SCHEMA and isinstance(row.get("key"), str):
                    self.rows[row["key"]] = row
                else:
                    self.foreign += 1
        return self

    def append(self, row: Mapping[str, Any]) -> None:
        line = (json.dumps(row, default=float, separators=(",", ":")) + "\n").encode()
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if _ends_without_newline(self.path):
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows[row["key"]] = dict(row)


def _ends_without_newline(path: str) -> bool:
    size = os.path.getsize(path)
    if size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) != b"\n"


# ---- running a sweep --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepStats:
    points: int
    reused: int
    computed: int
    failed: int
    wall_s: float
    where: str


def explore(points: Sequence[Point], table: ResultTable, workers: int | None = None, cluster: str | None = None,
            progress: bool = False, on_row: Callable[[dict[str, Any]], None] | None = None,
            connect_timeout: float = 30.0) -> tuple[list[dict[str, Any]], SweepStats]:
    """Simulate the points missing from ``table``, appending each row as it finishes.

    ``workers``: local processes (default: every core; 1 runs in this process). ``cluster``: the
    address of a Dask scheduler (``tcp://host:8786``) to run on instead. ``on_row`` is called after
    each row is stored; ``connect_timeout`` bounds the wait for the scheduler (seconds). Returns
    the rows of all ``points`` (reused and new) in ``points`` order. A point whose simulation raises an :class:`EinfuseError` (a design the variant cannot map) is
    stored as a row with its ``error``, so a resumed sweep does not retry it.
    """
    t0 = time.perf_counter()
    table.load()
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise SimulatorError("explore: the sweep lists a point twice (repeated spec, model or length)")
    # longest layers first: the slowest points start early and the last ones to finish are short
    todo = sorted((p for p in points if p.key not in table.rows), key=lambda p: -p.seq)
    _check_points(todo)  # also parses every spec once, before workers fork
    failed = 0

    def store(row: dict[str, Any]) -> None:
        nonlocal failed
        failed += "error" in row
        table.append(row)
        if on_row is not None:
            on_row(row)

    if cluster:
        where = f"dask {cluster}"
        _run_dask(todo, cluster, store, progress, connect_timeout)
    else:
        n = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
        where = f"{n} local process{'es' if n > 1 else ''}" if n > 1 else "this process"
        _run_local(todo, n, store, progress)
    rows = [table.rows[k] for k in keys if k in table.rows]
    return rows, SweepStats(len(points), len(points) - len(todo), len(todo), failed,
                            time.perf_counter() - t0, where)


def _check_points(points: Sequence[Point]) -> None:
    """Bad specs, designs, models and parameters fail here, once, before any worker starts."""
    from einfuse.ir.grid import check_grid
    from einfuse.simulator.area import area_breakdown, load_area_table
    from einfuse.simulator.vary import apply_params
    from einfuse.simulator.workload import workload

    seen: set[Any] = set()
    for p in points:
        if (p.spec, p.model, p.seq, p.sizes) not in seen:
            seen.add((p.spec, p.model, p.seq, p.sizes))
            w = workload(p.model, p.seq, p.batch, dict(p.sizes))
            check_grid(_cascade(p), w.seq, w.seq, w.sizes, "the sequence length (--seq)", SimulatorError)
        if (p.arch, p.params, p.area_table) not in seen:
            seen.add((p.arch, p.params, p.area_table))
            area_breakdown(apply_params(_base_arch(p.arch), dict(p.params)), load_area_table(p.area_table))


def _safe_run(point: Point) -> dict[str, Any]:
    try:
        return run_point(point)
    except EinfuseError as exc:
        return {"schema": SCHEMA, "key": point.key, "spec": point.spec, "arch": point.arch,
                "params": dict(point.params), "model": point.model, "seq": point.seq, "batch": point.batch,
                "error": f"{type(exc).__name__}: {exc}"}


def _bar(total: int, progress: bool):
    from contextlib import nullcontext

    if not progress or total <= 1:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]explore"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _run_local(points: Sequence[Point], workers: int, store: Callable[[dict], None], progress: bool) -> None:
    if workers == 1:
        with _bar(len(points), progress) as bar:
            task = bar.add_task("", total=len(points)) if bar else None
            for p in points:
                store(_safe_run(p))
                if bar:
                    bar.advance(task)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # fork where there is one: workers start with einfuse, sympy and the parsed specs already loaded
    # (a spawned worker imports them again, ~2 s each). All workers fork at the first submit, before
    # the progress bar starts its thread.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_safe_run, p) for p in points]
        try:
            with _bar(len(points), progress) as bar:
                task = bar.add_task("", total=len(points)) if bar else None
                for f in as_completed(futures):
                    store(f.result())
                    if bar:
                        bar.advance(task)
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _run_dask(points: Sequence[Point], address: str, store: Callable[[dict], None], progress: bool,
              timeout: float) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SimulatorError("--cluster needs Dask distributed: pip install 'einfuse[explore]'") from None
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise SimulatorError(f"--cluster {address}: cannot reach a Dask scheduler there ({exc})") from None
    try:
        futures = client.map(_safe_run, list(points), pure=False)
        with _bar(len(points), progress) as bar:
            task = bar.add_task("", total=len(points)) if bar else None
            try:
                for f in as_completed(futures):
                    store(f.result())
                    if bar:
                        bar.advance(task)
            except BaseException:
                client.cancel(futures)
                raise
    finally:
        client.close()


def point_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows that hold results (not errors)."""
    return [dict(r) for r in rows if "error" not in r]


def as_dict(stats: SweepStats) -> dict[str, Any]:
    return asdict(stats)
