"""How long the simulator takes: 1M-token masked layers, lightning's scaling, and the CLI's start-up.

Issue 13's targets, on the project's 2-core CPU machine:

* a 1M-token causal and a 1M-token na2d (7x7 on a 1024x1024 grid) layer of BERT-base on FuseMax
  simulate in under a second each (in-process: ``load_spec`` + ``sweep``, what a Python user or a
  DSE worker pays; imports excluded, reported apart);
* lightning's cycles grow linearly with the sequence length (1K, 16K, 64K);
* the CLI (``einfuse simulate ... --seq 1M``) wall time, imports included.

Every measurement runs in a fresh process (nothing cached from a previous case), ``--repeat``
times; the table gives the minimum and the median of wall and CPU seconds. The machine is shared,
so the CPU seconds and the load average are recorded next to wall time: on a busy machine wall time
is several times the CPU time. Results go to ``benchmarks/results/sim-speed/`` as ``<cpu>.json`` and
``<cpu>.md`` (the CPU named from /proc/cpuinfo).

    python3 benchmarks/sim_speed.py                 # 3 repeats of every case, a few minutes
    python3 benchmarks/sim_speed.py --repeat 1 --no-cli
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "benchmarks", "results", "sim-speed")
K, M = 1024, 1 << 20
CASES = [   # (label, spec, seq): BERT-base on FuseMax, one layer, batch 64
    ("causal 1M", "causal", M),
    ("na2d 7x7 1M", "na2d:shape=1024x1024,kernel=7", M),
    ("softmax 1M", "softmax", M),
    ("sliding window 256, 1M", "sliding_window:window=256", M),
    ("lightning 1K", "lightning", K),
    ("lightning 16K", "lightning", 16 * K),
    ("lightning 64K", "lightning", 64 * K),
]
CLI_CASES = [("causal 1M", "causal", "1M"), ("na2d 7x7 1M", "na2d:shape=1024x1024,kernel=7", "1M")]
TARGET_S = 1.0

# Runs in the child: imports, then one simulation, timed apart; prints one JSON line.
CHILD = r"""
import json, sys, time
w0, c0 = time.perf_counter(), time.process_time()
from einfuse.frontends import load_spec
from einfuse.simulator.sweep import sweep
w1, c1 = time.perf_counter(), time.process_time()
spec, seq = sys.argv[1], int(sys.argv[2])
r = sweep(load_spec(spec), ["fusemax"], ["bert-base"], [seq], progress=False)[0]
w2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"import_wall_s": w1 - w0, "import_cpu_s": c1 - c0, "wall_s": w2 - w1, "cpu_s": c2 - c1,
                  "cycles": r.cycles, "energy_pj": r.energy_pj, "dram_bytes": r.dram_bytes, "macs": r.macs,
                  "tile_classes": r.sim.get("tile_classes"), "approximate": r.sim.get("approximate")}))
"""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PYC = os.path.join(tempfile.gettempdir(), "einfuse-sim-speed-pyc")


def _env(cached: bool = True) -> dict[str, str]:
    """The children's environment. ``cached``: Python may write and read byte-code (in a temporary
    PYTHONPYCACHEPREFIX, filled by a warm-up run), as in any normal install; otherwise the caller's
    environment as it is (a PYTHONDONTWRITEBYTECODE there makes every einfuse module compile from
    source in every process, and lazily imported ones inside the timed simulation)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if cached:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYC
    return env


def run_case(spec: str, seq: int, cached: bool = True) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, spec, str(seq)], capture_output=True, text=True,
                         cwd=ROOT, env=_env(cached), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(spec: str, seq: str, cached: bool = True) -> dict:
    cmd = [sys.executable, "-m", "einfuse.cli", "simulate", spec, "--arch", "fusemax", "--model", "bert-base",
           "--seq", seq, "--no-progress", "--json"]
    before = os.times()
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(cached), check=True)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": wall, "cpu_s": cpu}


def _stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI wall-time runs")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--label", default="", help="appended to the file names (e.g. 'before')")
    args = ap.parse_args()

    load0 = os.getloadavg()
    for _, spec, seq in CASES:      # warm-up: fills the byte-code cache (lazily imported modules too)
        run_case(spec, seq)
    cases = []
    for label, spec, seq in CASES:
        runs = [run_case(spec, seq) for _ in range(args.repeat)]
        first = runs[0]
        if any((r["cycles"], r["energy_pj"]) != (first["cycles"], first["energy_pj"]) for r in runs):
            raise SystemExit(f"{label}: results differ between runs")
        cases.append({"case": label, "spec": spec, "seq": seq, "cycles": first["cycles"],
                      "energy_pj": first["energy_pj"], "dram_bytes": first["dram_bytes"], "macs": first["macs"],
                      "tile_classes": first["tile_classes"], "approximate": first["approximate"],
                      "wall_s": _stats([r["wall_s"] for r in runs]), "cpu_s": _stats([r["cpu_s"] for r in runs]),
                      "import_wall_s": _stats([r["import_wall_s"] for r in runs]),
                      "import_cpu_s": _stats([r["import_cpu_s"] for r in runs])})
        print(f"{label}: {cases[-1]['wall_s']['min']:.2f} s wall, {cases[-1]['cpu_s']['min']:.2f} s CPU (min)",
              file=sys.stderr)
    cli = []
    as_env = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    if not args.no_cli:
        for cached in (True, False) if as_env else (True,):
            for label, spec, seq in CLI_CASES:
                runs = [run_cli(spec, seq, cached) for _ in range(args.repeat)]
                cli.append({"case": label, "command": f"einfuse simulate {spec} --arch fusemax --model bert-base "
                            f"--seq {seq} --no-progress --json", "bytecode_cached": cached,
                            "wall_s": _stats([r["wall_s"] for r in runs]),
                            "cpu_s": _stats([r["cpu_s"] for r in runs])})
                print(f"CLI {label} (byte-code {'cached' if cached else 'compiled each run'}): "
                      f"{cli[-1]['wall_s']['min']:.2f} s wall (min)", file=sys.stderr)
    light = {c["seq"]: c["cycles"] for c in cases if c["spec"] == "lightning"}
    base = min(light)
    linear = {str(n): (light[n] / light[base]) / (n / base) for n in sorted(light)}
    result = {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "pythondontwritebytecode_in_caller": as_env,
              "repeat": args.repeat, "load_average_1min_before": load0[0],
              "load_average_1min_after": os.getloadavg()[0], "cases": cases, "cli": cli,
              "lightning_cycles_per_token_relative_to_1K": linear, "target_s": TARGET_S}
    os.makedirs(args.out, exist_ok=True)
    stem = re.sub(r"[^a-z0-9]+", "-", result["cpu"].lower()).strip("-") + (f"-{args.label}" if args.label else "")
    with open(os.path.join(args.out, f"{stem}.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(args.out, f"{stem}.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [f"# Simulator speed on {r['cpu']} ({r['cpus']} cores)", "",
             f"Generated by `benchmarks/sim_speed.py` ({r['repeat']} fresh processes per case). BERT-base, "
             f"FuseMax, batch 64, one layer. Load average (1 min) {r['load_average_1min_before']:.1f} before, "
             f"{r['load_average_1min_after']:.1f} after: the machine was shared, so wall time can be several "
             "times the CPU time; the CPU seconds are what an idle machine's wall time would be.", "",
             "In-process: `load_spec` + `sweep` in a fresh process (imports timed apart, byte-code cached as "
             f"in a normal install). Target: < {r['target_s']:g} s for the 1M causal and na2d layers.", "",
             "| case | cycles | energy (pJ) | wall min / median (s) | CPU min / median (s) | imports wall min (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in r["cases"]:
        lines.append(f"| {c['case']} | {c['cycles']:,} | {c['energy_pj']:.6g} | {c['wall_s']['min']:.2f} / "
                     f"{c['wall_s']['median']:.2f} | {c['cpu_s']['min']:.2f} / {c['cpu_s']['median']:.2f} | "
                     f"{c['import_wall_s']['min']:.2f} |")
    if r["cli"]:
        lines += ["", "CLI, whole process (Python start-up, imports, simulation, JSON output); byte-code "
                  "cached (a normal install) or compiled from source in every process (PYTHONDONTWRITEBYTECODE, "
                  "as the caller's environment had it):", "",
                  "| command | byte-code | wall min / median (s) | CPU min / median (s) |", "|---|---|---:|---:|"]
        for c in r["cli"]:
            lines.append(f"| `{c['command']}` | {'cached' if c['bytecode_cached'] else 'compiled'} | "
                         f"{c['wall_s']['min']:.2f} / {c['wall_s']['median']:.2f} | "
                         f"{c['cpu_s']['min']:.2f} / {c['cpu_s']['median']:.2f} |")
    lin = r["lightning_cycles_per_token_relative_to_1K"]
    lines += ["", "Lightning (linear attention, kernel plan's intra/inter split): cycles per token relative to "
              "1K: " + ", ".join(f"{int(n) // 1024}K {v:.3f}" for n, v in lin.items())
              + " (1.000 everywhere = linear in N).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
