"""Spatial-array accelerator simulator: a cascade, an architecture (YAML) and a workload in, cycles,
utilisation, DRAM traffic, buffer requirement and energy out, per Einsum and in total.

Public API::

    from einfuse.simulator import load_arch, simulate, sweep, workload, write_report
    r = simulate(einfuse.load_spec("softmax"), "fusemax", workload("bert-base", 65536))
    rows = sweep(cascade, ["unfused", "flat", "fusemax"], ["bert-base"], [1024, 4096])
    write_report(rows, "out/")
"""

from einfuse.simulator.arch import Arch, builtin_arch_names, load_arch
from einfuse.simulator.report import write_report
from einfuse.simulator.simulate import EinsumStats, SimResult, prepare, simulate
from einfuse.simulator.sweep import sweep
from einfuse.simulator.work import cascade_macs
from einfuse.simulator.workload import MODELS, Workload, parse_seq, workload

__all__ = [
    "MODELS", "Arch", "EinsumStats", "SimResult", "Workload", "builtin_arch_names", "cascade_macs",
    "load_arch", "parse_seq", "prepare", "simulate", "sweep", "workload", "write_report",
]
