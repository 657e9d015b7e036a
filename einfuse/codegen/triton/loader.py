"""Write generated kernels to real ``.py`` files and import them.

Triton's JIT reads a kernel's source with ``inspect``, so generated code must live in a file. Files
are named by a hash of their source in ``$EINFUSE_CACHE_DIR/kernels`` (default
``~/.cache/einfuse/kernels``) and written atomically (temporary file + ``os.replace``) so that
concurrent processes never import a half-written kernel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

_LOADED: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    """Root of einfuse's on-disk caches (kernels, autotuning results)."""
    root = os.environ.get("EINFUSE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "einfuse")
    return Path(root)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def module_name(source: str, stem: str) -> str:
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() else "_" for ch in stem)
    return f"einfuse_kernel_{safe}_{digest}"


def load_module(source: str, stem: str) -> ModuleType:
    """Import ``source`` as a module (written once per distinct source); returns the module."""
    name = module_name(source, stem)
    if name in _LOADED:
        return _LOADED[name]
    path = cache_dir() / "kernels" / f"{name}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        write_atomic(path, source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _LOADED[name] = module
    return module
