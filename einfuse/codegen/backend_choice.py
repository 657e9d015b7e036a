"""``target="auto"``: both back ends print the same plan; the faster one runs, chosen by timing.

The first call of a shape class (dtype, head dims, lengths bucketed to powers of two, GQA group; the
autotuner's classes) on a GPU times the Triton and the CUTLASS kernel on the call's own inputs and
keeps the faster; the choice is stored on disk beside the autotuning cache (one JSON file, merged and
written atomically, keyed by the device and compiler versions as autotuning is), so later processes
skip the timing. Calls the CUTLASS kernel cannot take (CPU tensors or the interpreter, float32, head
dims other than 64/128, runtime arguments it does not know) run on Triton without timing. Training
runs on Triton: attributes the wrapper does not define (``forward_with_lse``, ``source``, ...) are the
Triton kernel's, so the backward pass builds from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from einfuse.codegen.autotune import (
    device_key,
    interpreter_active,
    read_json_object,
    shape_class,
    time_config,
)

CUTLASS_DTYPES = ("torch.bfloat16", "torch.float16")
CUTLASS_HEAD_DIMS = (64, 128)


class ChoiceCache:
    """``{key: {"backend": "triton" | "cutlass", "ms": {backend: ms}}}`` in one JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            from einfuse.codegen.triton.loader import cache_dir

            path = cache_dir() / "backend-choice.json"
        self.path = Path(path)

    def read(self) -> dict[str, dict]:
        return read_json_object(self.path)

    def put(self, key: str, backend: str, times: dict[str, float | str]) -> None:
        from einfuse.codegen.triton.loader import write_atomic

        data = self.read()  # merge with what other processes stored since
        data[key] = {"backend": backend, "ms": times}
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


class FastestBackend:
    """A kernel-like object over a Triton and a CUTLASS kernel of one plan (see the module doc)."""

    def __init__(self, name: str, triton: Any, cutlass: Any, cache: ChoiceCache | None = None) -> None:
        self.name = name
        self.triton = triton
        self.cutlass = cutlass
        self.cache = cache or ChoiceCache()
        self.choices: dict[str, str] = {}
        """Backend chosen per shape-class key in this process (what a call ran on: ``last_backend``)."""
        self.last_backend: str | None = None

    def __getattr__(self, attr: str) -> Any:  # the Triton kernel's API (forward_with_lse, source, ...)
        if attr in ("triton", "cutlass", "cache", "choices"):
            raise AttributeError(attr)
        return getattr(self.triton, attr)

    def eligible(self, q: Any, k: Any, v: Any, runtime: dict[str, Any]) -> bool:
        """Whether the CUTLASS kernel can take this call at all."""
        return (getattr(q, "is_cuda", False) and not interpreter_active() and str(q.dtype) in CUTLASS_DTYPES
                and q.shape[-1] in CUTLASS_HEAD_DIMS and v.shape[-1] == q.shape[-1]
                and set(runtime) <= {"return_lse"})

    def key(self, q: Any, k: Any, v: Any) -> str:
        cls = shape_class(str(q.dtype).replace("torch.", ""), q.shape[-1], v.shape[-1], q.shape[2],
                          k.shape[2], q.shape[1] // max(k.shape[1], 1))
        return f"{self.name}|{cls}|{device_key(q.device)}"

    def choose(self, q: Any, k: Any, v: Any, runtime: dict[str, Any]) -> str:
        if not self.eligible(q, k, v, runtime):
            return "triton"
        key = self.key(q, k, v)
        if key not in self.choices:
            stored = self.cache.read().get(key)
            if stored and stored.get("backend") in ("triton", "cutlass"):
                self.choices[key] = stored["backend"]
            else:
                self.choices[key] = self._time(key, q, k, v, runtime)
        return self.choices[key]

    def _time(self, key: str, q: Any, k: Any, v: Any, runtime: dict[str, Any]) -> str:
        times: dict[str, float | str] = {}
        for name, kern in (("triton", self.triton), ("cutlass", self.cutlass)):
            try:
                kern(q, k, v, **runtime)  # build and compile outside the timing
                times[name] = time_config(lambda kern=kern: kern(q, k, v, **runtime))
            except Exception as exc:  # noqa: BLE001 - a back end that cannot run this shape loses
                times[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        ms = {n: t for n, t in times.items() if isinstance(t, float)}
        best = min(ms, key=ms.__getitem__) if ms else "triton"
        self.cache.put(key, best, times)
        return best

    def __call__(self, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
        backend = self.choose(q, k, v, runtime)
        self.last_backend = backend
        return (self.cutlass if backend == "cutlass" else self.triton)(q, k, v, **runtime)


__all__ = ["ChoiceCache", "FastestBackend"]
