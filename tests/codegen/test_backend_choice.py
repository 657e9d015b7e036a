"""``target="auto"``: the faster back end per shape class, timed once, remembered on disk."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen import backend_choice
from einfuse.codegen.backend_choice import ChoiceCache, FastestBackend
from einfuse.codegen.reference import run_cascade


class FakeKernel:
    """Stands in for a back end: counts calls, returns a tag, or raises."""

    def __init__(self, tag: str, fail: bool = False) -> None:
        self.tag, self.fail, self.calls = tag, fail, 0
        self.forward_with_lse = lambda *a, **k: ("lse", tag)

    def __call__(self, q, k, v, **runtime):
        self.calls += 1
        if self.fail:
            raise RuntimeError("this back end cannot run it")
        return self.tag


@pytest.fixture
def timed(monkeypatch):
    """Every call is eligible for CUTLASS; timing returns the kernel's configured milliseconds."""
    speeds: dict[str, float] = {}
    monkeypatch.setattr(FastestBackend, "eligible", lambda self, q, k, v, rt: True)
    monkeypatch.setattr(backend_choice, "time_config", lambda run: speeds[run()])
    return speeds


def _qkv(n=40):
    return torch.zeros(1, 2, n, 64), torch.zeros(1, 2, n, 64), torch.zeros(1, 2, n, 64)


@pytest.mark.parametrize("faster", ["triton", "cutlass"])
def test_the_faster_backend_runs_and_the_choice_is_stored(tmp_path, timed, faster):
    timed.update(triton=1.0 if faster == "triton" else 2.0, cutlass=1.0 if faster == "cutlass" else 2.0)
    cache = ChoiceCache(tmp_path / "choice.json")
    fb = FastestBackend("causal", FakeKernel("triton"), FakeKernel("cutlass"), cache)
    assert fb(*_qkv()) == faster and fb.last_backend == faster
    stored = json.loads((tmp_path / "choice.json").read_text())
    (entry,) = stored.values()
    assert entry["backend"] == faster and set(entry["ms"]) == {"triton", "cutlass"}
    # a later process reads the choice: no kernel is timed again
    t2, c2 = FakeKernel("triton"), FakeKernel("cutlass")
    fb2 = FastestBackend("causal", t2, c2, cache)
    assert fb2(*_qkv()) == faster
    assert (t2.calls, c2.calls) == ((1, 0) if faster == "triton" else (0, 1))


def test_another_shape_class_is_timed_again(tmp_path, timed):
    timed.update(triton=1.0, cutlass=2.0)
    fb = FastestBackend("causal", FakeKernel("triton"), FakeKernel("cutlass"), ChoiceCache(tmp_path / "c.json"))
    fb(*_qkv(40))
    fb(*_qkv(50))      # same power-of-two bucket: no new timing
    fb(*_qkv(300))     # another bucket
    assert len(json.loads((tmp_path / "c.json").read_text())) == 2


def test_a_backend_that_fails_loses_and_its_error_is_kept(tmp_path, timed):
    timed.update(triton=5.0)
    fb = FastestBackend("causal", FakeKernel("triton"), FakeKernel("cutlass", fail=True),
                        ChoiceCache(tmp_path / "c.json"))
    assert fb(*_qkv()) == "triton"
    (entry,) = json.loads((tmp_path / "c.json").read_text()).values()
    assert entry["ms"]["cutlass"].startswith("RuntimeError")


def test_training_attributes_are_the_triton_kernels(tmp_path):
    fb = FastestBackend("causal", FakeKernel("triton"), FakeKernel("cutlass"), ChoiceCache(tmp_path / "c.json"))
    assert fb.forward_with_lse() == ("lse", "triton")


def test_cpu_calls_are_not_eligible_for_cutlass(tmp_path):
    fb = FastestBackend("causal", FakeKernel("triton"), FakeKernel("cutlass"), ChoiceCache(tmp_path / "c.json"))
    assert not fb.eligible(*_qkv(), {})
    assert fb(*_qkv()) == "triton" and not (tmp_path / "c.json").exists()


def test_auto_target_compiles_and_runs_on_the_cpu_interpreter():
    f = einfuse.compile("causal", target="auto")
    assert isinstance(f.kernel, FastestBackend) and f.has_backward
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 64, generator=g) for _ in range(3))
    out = f(q, k, v)
    c = einfuse.load_spec("causal")
    want = run_cascade(c, {"Q": q.double(), "K": k.double(), "V": v.double()})[c.outputs[0]]
    assert rel_err(out, want) < 1e-4 and f.kernel.last_backend == "triton"


def test_auto_target_of_linear_attention_is_triton_alone():
    f = einfuse.compile("lightning", target="auto")
    assert not isinstance(f.kernel, FastestBackend)
