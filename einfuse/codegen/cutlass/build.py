"""Find the CUTLASS headers and nvcc, compile generated sources, load them as torch extensions.

* Headers: the ``nvidia-cutlass`` wheel (``pip install nvidia-cutlass==4.2.0.0``, or the
  ``einfuse[cutlass]`` extra) ships ``cute/`` and ``cutlass/`` under
  ``cutlass_library/source/include``; CUTLASS is never vendored into this repository.
* Flags: C++20 (torch's headers need it; CUTLASS 4 takes it), fast math, half/bfloat16 operators on
  (torch's extension flags turn them off; CuTe's numeric types need them).
* Arch: ``sm_90a`` on Hopper, the device's own ``sm_XY`` elsewhere (the SM80-style kernel needs
  sm_80 or newer).
* Cache: one build folder per (source, arch, nvcc, torch, CUTLASS) hash under
  ``$EINFUSE_CACHE_DIR/cutlass``; the source is written atomically and torch's build lock (a file
  baton in that folder) makes two processes building the same kernel wait for one another.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType

from einfuse.codegen.triton.loader import cache_dir, write_atomic
from einfuse.errors import CodegenError

NVCC_FLAGS = ("-std=c++20", "-O3", "--expt-relaxed-constexpr", "--use_fast_math",
              "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-diag-suppress=177")


def cutlass_include() -> Path:
    """The CUTLASS/CuTe include folder of the ``nvidia-cutlass`` wheel."""
    try:
        import cutlass_library
    except ImportError:
        raise CodegenError("the CUTLASS back end needs the CUTLASS headers: pip install nvidia-cutlass==4.2.0.0 "
                           "(or pip install 'einfuse[cutlass]')") from None
    inc = Path(cutlass_library.__file__).parent / "source" / "include"
    if not (inc / "cute" / "tensor.hpp").exists():
        raise CodegenError(f"the nvidia-cutlass wheel at {inc.parent.parent} has no cute/tensor.hpp; "
                           "reinstall it: pip install --force-reinstall nvidia-cutlass==4.2.0.0")
    return inc


def find_nvcc() -> str:
    """nvcc from $CUDA_HOME (or $CUDA_PATH), else from PATH."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found is None:
        raise CodegenError("the CUTLASS back end needs nvcc (the CUDA toolkit, 12.3 or newer): install it and "
                           "put it on PATH or set CUDA_HOME")
    return found


@functools.cache
def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def arch_of(device: object = None) -> str:
    """``90a`` on Hopper, else the device's compute capability (``80``, ``86``, ``100``, ...)."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise CodegenError(f"the CUTLASS back end needs an sm_80 or newer GPU; this one is sm_{major}{minor}")
    return f"{major}{minor}" + ("a" if major == 9 else "")


def arch_flag(arch: str) -> str:
    return f"-gencode=arch=compute_{arch},code=sm_{arch}"


def compile_object(source: str, arch: str, cache: Path | None = None, extra: tuple[str, ...] = ()) -> Path:
    """``nvcc -c`` the source for ``arch`` (``90a``, ``80``); objects are cached by a hash of the
    source, arch, flags and nvcc version (default folder: the temp dir). Raises CodegenError with
    nvcc's messages when it fails."""
    nvcc = find_nvcc()
    flags = (*NVCC_FLAGS, arch_flag(arch), *extra)
    key = hashlib.sha256("\0".join((source, *flags, nvcc_version(nvcc))).encode()).hexdigest()[:20]
    folder = cache or Path(tempfile.gettempdir()) / "einfuse-nvcc-cache"
    obj = folder / f"{key}.o"
    if obj.exists():
        return obj
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{key}.cu"
    write_atomic(src, source)
    tmp = folder / f".{key}.{os.getpid()}.o"
    proc = subprocess.run([nvcc, *flags, f"-I{cutlass_include()}", "-c", str(src), "-o", str(tmp)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise CodegenError(f"nvcc failed on the generated source {src}:\n{proc.stderr[-4000:]}")
    os.replace(tmp, obj)
    return obj


_LOADED: dict[str, ModuleType] = {}


def load_extension(source: str, arch: str) -> ModuleType:
    """Build (once per cache key) and import the generated source as a torch extension."""
    import torch
    from torch.utils.cpp_extension import load

    nvcc = find_nvcc()
    inc = cutlass_include()
    key_text = "\0".join((source, arch, nvcc_version(nvcc), torch.__version__, str(inc), *NVCC_FLAGS))
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    name = f"einfuse_cutlass_{key}"
    if name in _LOADED:
        return _LOADED[name]
    folder = cache_dir() / "cutlass" / name
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "kernel.cu"
    if not src.exists() or src.read_text(encoding="utf-8") != source:
        write_atomic(src, source)
    os.environ.setdefault("CUDA_HOME", str(Path(nvcc).parent.parent))
    try:
        mod = load(name=name, sources=[str(src)], extra_include_paths=[str(inc)],
                   extra_cuda_cflags=[*NVCC_FLAGS, arch_flag(arch), "-DEINFUSE_TORCH_EXTENSION"],
                   build_directory=str(folder), verbose=bool(os.environ.get("EINFUSE_VERBOSE_BUILD")))
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        raise CodegenError(f"building the CUTLASS kernel in {folder} failed (set EINFUSE_VERBOSE_BUILD=1 "
                           f"to see nvcc's output): {str(exc)[-2000:]}") from None
    _LOADED[name] = mod
    return mod


def prebuild(source: str, arch: str) -> None:
    """Build the extension into the on-disk cache without keeping it (a worker process's job when
    several kernels are built at once: nvcc takes about a minute each)."""
    load_extension(source, arch)
