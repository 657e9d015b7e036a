"""The launch cache (einfuse.codegen.triton.launch): a call whose signature (shapes, strides,
dtypes, device, options) was seen before reuses its prepared launch; any other signature is checked
and planned again, bad inputs still raise a CodegenError, and cached launches read the new tensors
(checked against the float64 reference on fresh inputs each call)."""

import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.codegen.triton import launch
from einfuse.codegen.triton.launch import BoundLaunch, CallCache, signature_key
from einfuse.errors import CodegenError


def rand(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def qkv(B, H, Hkv, N, M, D, seed, dtype=torch.float32):
    return (rand(B, H, N, D, seed=seed, dtype=dtype), rand(B, Hkv, M, D, seed=seed + 1, dtype=dtype),
            rand(B, Hkv, M, D, seed=seed + 2, dtype=dtype))


def counted(f):
    """Count f.prepare calls (the full path: checks, plan, tables, binding)."""
    calls = []
    prepare = f.prepare

    def spy(*a, **kw):
        calls.append(1)
        return prepare(*a, **kw)

    f.prepare = spy
    return calls


def check(f, c, q, k, v, tol=2e-5, **runtime):
    out = f(q, k, v, **runtime)
    ref = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(out, ref) < tol
    return out


@pytest.fixture(scope="module")
def causal():
    c = einfuse.load_spec("causal")
    return c, einfuse.compile(c, decode=False)


def test_same_signature_reuses_the_prepared_call_on_new_data(causal):
    c, f = causal
    f._calls.clear()
    calls = counted(f)
    for seed in (0, 10, 20):  # fresh inputs each call: the cached launch must read them
        check(f, c, *qkv(1, 4, 2, 37, 37, 16, seed))
    assert len(calls) == 1 and len(f._calls) == 1


def test_new_shape_dtype_or_strides_are_prepared_again(causal):
    c, f = causal
    f._calls.clear()
    calls = counted(f)
    check(f, c, *qkv(1, 4, 2, 37, 37, 16, 0))
    check(f, c, *qkv(1, 4, 2, 45, 45, 16, 3))  # another length
    assert len(calls) == 2
    q, k, v = qkv(1, 4, 2, 37, 37, 16, 6, dtype=torch.float64)  # another dtype
    check(f, c, q, k, v, tol=1e-10)
    assert len(calls) == 3
    # the same shapes laid out (B, N, H, D) and viewed as (B, H, N, D): other strides, which the
    # launch bakes in, so a stale entry would read the wrong elements
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in qkv(1, 4, 2, 37, 37, 16, 9))
    assert q.stride() != (4 * 37 * 16, 37 * 16, 16, 1)
    check(f, c, q, k, v)
    assert len(calls) == 4 and len(f._calls) == 4
    check(f, c, *qkv(1, 4, 2, 45, 45, 16, 12))  # seen before
    assert len(calls) == 4


def test_options_are_part_of_the_signature(causal):
    c, f = causal
    f._calls.clear()
    q, k, v = qkv(1, 2, 2, 40, 40, 16, 1)
    check(f, c, q, k, v)
    check(f, c, q, k, v, block_m=16, block_n=16)
    assert (f.kernel.last_config.block_m, f.kernel.last_config.block_n) == (16, 16)
    check(f, c, q, k, v)  # last_config follows the call, cached or not
    assert f.kernel.last_config.block_m != 16 or f.kernel.last_config.block_n != 16
    assert len(f._calls) == 2


BAD = {  # input that differs from a cached signature in one way, and the error it must still get
    "k dtype": (lambda q, k, v: (q, k.double(), v), "dtypes differ"),
    "k heads": (lambda q, k, v: (q, torch.cat([k, k[:, :1]], 1), torch.cat([v, v[:, :1]], 1)), "must divide"),
    "v length": (lambda q, k, v: (q, k, v[:, :, :-1]), "must share heads and length"),
    "head dim": (lambda q, k, v: (q, k[..., :8], v), "head dim"),
    "last stride": (lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v), "contiguous"),
    "meta q": (lambda q, k, v: (torch.empty_like(q, device="meta"), k, v), "meta tensor"),
    "not a tensor": (lambda q, k, v: (q.numpy(), k, v), "must be a torch.Tensor"),
    "3-d q": (lambda q, k, v: (q[0], k, v), r"shape \(B, H, N, D\)"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_inputs_raise_after_a_cached_call(causal, bad):
    c, f = causal
    q, k, v = qkv(1, 4, 2, 24, 24, 16, 2)
    f(q, k, v)
    make, words = BAD[bad]
    with pytest.raises(CodegenError, match=words):
        f(*make(q, k, v))
    with pytest.raises(CodegenError, match=words):  # and again: a failed call caches nothing
        f(*make(q, k, v))


def test_grad_calls_and_runtime_errors_after_a_cached_call():
    lin = einfuse.compile("linear")
    q, k, v = qkv(1, 2, 2, 16, 16, 16, 4)
    lin(q, k, v)
    assert lin(q.requires_grad_(), k, v).requires_grad  # a grad call bypasses the cached launch
    with pytest.raises(CodegenError, match="q_offset"):
        lin(q.detach(), k, v, q_offset=3)
    with pytest.raises(CodegenError, match="unexpected runtime argument"):
        lin(q.detach(), k, v, block_q=16)
    sm = einfuse.compile("causal", decode=False)
    sm(q.detach(), k, v)
    with pytest.raises(CodegenError, match="unknown option block_q"):
        sm(q.detach(), k, v, block_q=16)


def test_gradients_and_inference_share_the_forward_cache(causal):
    c, f = causal
    f._calls.clear()
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 1, 20, 20, 16, 5))
    out = f(q, k, v)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with torch.no_grad():
        check(f, c, q, k, v)
    assert len(f._calls) == 1  # the no-grad call; the grad path keeps its own (the kernel's) entry


def test_misaligned_inputs_are_not_cached_and_still_correct(causal):
    c, f = causal
    f._calls.clear()
    base = rand(1 * 2 * 24 * 16 + 1, seed=7)
    q = base[1:].view(1, 2, 24, 16)  # 4 bytes past a 16-byte boundary: Triton specialises on that
    _, k, v = qkv(1, 2, 2, 24, 24, 16, 8)
    assert signature_key(q, k, v) is None
    check(f, c, q, k, v)
    check(f, c, q, k, v)
    assert len(f._calls) == 0


def test_decode_path_is_cached_and_reads_new_inputs():
    c = einfuse.load_spec("causal")
    f = einfuse.compile(c)
    calls = counted(f)
    for seed in (0, 30):  # 3 queries over 70 keys, GQA 4:1 -> the split-KV decode kernels
        check(f, c, *qkv(2, 4, 1, 3, 70, 24, seed))
    assert len(calls) == 1
    assert type(next(iter(f._calls.values()))).__name__ == "PreparedDecode"


def test_direct_decode_launches_share_one_workspace(monkeypatch):
    f = einfuse.compile("causal")
    q, k, v = qkv(1, 4, 2, 1, 90, 16, 3)
    f(q, k, v)
    prepared = next(iter(f._calls.values()))
    part, comb = _direct(monkeypatch, prepared.partial), _Recorder()
    prepared.combine.compiled, prepared.combine._stream, prepared.combine._device = comb, (lambda d: 0), 0
    out = f(q, k, v)
    p_args = dict(zip(prepared.partial.fn.arg_names, part.runs[0][9:], strict=True))
    c_args = dict(zip(prepared.combine.fn.arg_names, comb.runs[0][9:], strict=True))
    assert p_args["Q"] == q.data_ptr() and p_args["R"] == prepared.n == c_args["R"]
    assert c_args["WS"] == p_args["WS"] and c_args["O"] == out.data_ptr()
    assert (p_args["PAGED"], p_args["HAS_LENS"], c_args["WRITE_LSE"]) == (False, False, False)
    assert (p_args["sk_b"], p_args["NK"]) == (k.stride(0), 90)


def test_linear_attention_is_cached():
    c = einfuse.load_spec("linear")
    f = einfuse.compile(c)
    calls = counted(f)
    for seed in (0, 40):
        check(f, c, *qkv(1, 2, 2, 40, 40, 16, seed), tol=1e-4)
    assert len(calls) == 1


def test_cache_drops_its_oldest_entry_at_the_limit(monkeypatch):
    monkeypatch.setattr(launch, "CACHE_LIMIT", 3)
    cache = CallCache()
    for i in range(5):
        cache.remember((i,), i)
    assert list(cache) == [(2,), (3,), (4,)]
    cache.remember(None, 9)  # an uncacheable call is not stored
    assert len(cache) == 3


def test_signature_key_covers_what_the_launch_bakes_in():
    q, k, v = qkv(1, 2, 2, 8, 8, 16, 0)
    key = signature_key(q, k, v)
    assert key == signature_key(*qkv(1, 2, 2, 8, 8, 16, 5))  # same signature, other data
    assert key != signature_key(q.double(), k, v)
    assert key != signature_key(q, k.transpose(2, 3).contiguous().transpose(2, 3), v)
    assert key != signature_key(q, k, v, {"block_m": 16})
    assert signature_key(q, k, v, {"x": [1]}) is None  # unhashable option: not cacheable
    assert signature_key(q.numpy(), k, v) is None


def test_bound_launch_refuses_arguments_that_do_not_match_the_kernel():
    from einfuse.codegen.triton.emit import KERNEL_NAME
    from einfuse.codegen.triton.runtime import _FLAT_LAYOUT

    f = einfuse.compile("softmax", decode=False)
    fn = getattr(f.kernel.module(_FLAT_LAYOUT), KERNEL_NAME)
    with pytest.raises(CodegenError, match="launch arguments do not match.*missing"):
        BoundLaunch(fn, (1, 1), 5, (), {"BLOCK_M": 16}, 4, 1)


class _Recorder:
    """Stands in for Triton's CompiledKernel: records what the direct launch path hands its launcher."""

    function, packed_metadata = "function", "packed"

    def __init__(self):
        self.runs, self.metadata = [], []

    def run(self, *args):
        self.runs.append(args)

    def launch_metadata(self, grid, stream, *args):
        self.metadata.append((grid, stream, args))
        return "meta"


class _Hooks:
    def __init__(self, calls):
        self.calls = calls


def _direct(monkeypatch, bound, hooks=()):
    """Switch a bound launch to the direct path with a recording launcher (no GPU here)."""
    from types import SimpleNamespace

    rec = _Recorder()
    monkeypatch.setattr(launch, "_RUNTIME", SimpleNamespace(launch_enter_hook=_Hooks(list(hooks)),
                                                            launch_exit_hook=_Hooks([])))
    monkeypatch.setattr(launch, "_data_ptr", torch.Tensor.data_ptr)
    bound.compiled, bound._stream, bound._device = rec, (lambda device: 1000 + device), 3
    return rec


def test_direct_launch_hands_the_launcher_every_argument_in_parameter_order(monkeypatch):
    f = einfuse.compile("causal", decode=False)
    q, k, v = qkv(2, 4, 2, 40, 40, 16, 1)
    f(q, k, v)
    prepared = next(iter(f._calls.values()))
    rec = _direct(monkeypatch, prepared.launch)
    out = f(q, k, v)
    (args,) = rec.runs
    grid = prepared.launch.grid
    assert args[:9] == (*grid, 1003, "function", "packed", None, None, None)  # no hooks: no metadata
    params = dict(zip(prepared.launch.fn.arg_names, args[9:], strict=True))
    assert [params[n] for n in ("Q", "K", "V", "Out", "LSE")] == [t.data_ptr() for t in (q, k, v, out, out)]
    assert (params["stride_qb"], params["stride_kh"], params["stride_on"]) == (4 * 40 * 16, 40 * 16, 16)
    assert (params["N_Q"], params["N_KV"], params["H"], params["B"], params["GROUP"]) == (40, 40, 4, 2, 2)
    assert params["BLOCK_M"] == prepared.config.block_m and params["STORE_LSE"] is False
    tables = prepared.tables  # causal: block tables (device tensors kept by the launch), by address
    assert not tables.dense and params["TABLES"] is True
    assert (params["FULL_NUM"], params["PART_IDX"]) == (tables.full_num.data_ptr(), tables.part_idx.data_ptr())
    assert grid == (-(-40 // prepared.config.block_m), 2 * 4, 1)


def test_direct_launch_gives_listening_profilers_the_launch_metadata(monkeypatch):
    f = einfuse.compile("causal", decode=False)
    q, k, v = qkv(1, 2, 2, 24, 24, 16, 2)
    f(q, k, v)
    bound = next(iter(f._calls.values())).launch
    rec = _direct(monkeypatch, bound, hooks=[lambda meta: None])
    f(q, k, v)
    (args,) = rec.runs
    assert args[6] == "meta" and args[7] is launch._RUNTIME.launch_enter_hook
    assert rec.metadata[0][:2] == (bound.grid, 1003)


def test_fast_launch_switch_is_read_when_a_signature_is_prepared(monkeypatch):
    f = einfuse.compile("causal", decode=False)
    q, k, v = qkv(1, 2, 2, 24, 24, 16, 4)
    monkeypatch.setenv("EINFUSE_FAST_LAUNCH", "0")
    f(q, k, v)
    monkeypatch.delenv("EINFUSE_FAST_LAUNCH")
    assert next(iter(f._calls.values())).launch._direct_ok is False
    f(*qkv(1, 2, 2, 30, 30, 16, 5))
    assert list(f._calls.values())[1].launch._direct_ok is launch.fast_launch_enabled()


@pytest.mark.parametrize("n_q", [29, 3])  # main kernel (prepared launch), decode kernel
def test_kv_of_batch_one_are_broadcast_by_the_cached_call(n_q):
    c = einfuse.load_spec("causal")
    f = einfuse.compile(c)
    calls = counted(f)
    for seed in (0, 50):  # the prepared launch bakes stride 0 in, and reads the caller's k, v
        q = rand(3, 4, n_q, 16, seed=seed)
        _, k, v = qkv(1, 4, 2, n_q, 41, 16, seed + 1)
        out = f(q, k, v)
        kk, vv = (x.expand(3, -1, -1, -1) for x in (k, v))
        assert rel_err(out, run_cascade(c, {"Q": q, "K": kk, "V": vv})["O"]) < 2e-5
    assert len(calls) == 1


def test_captured_tensor_calls_are_prepared_every_time():
    bias = torch.randn(64)
    c = einfuse.attention("biased", score_mod=lambda s, b, h, q, kv: s + bias[kv], head_dim=16)
    f = einfuse.compile(c, decode=False)
    calls = counted(f)
    q, k, v = qkv(1, 2, 2, 20, 20, 16, 6)
    first = f(q, k, v)
    bias.add_(1.0 + torch.arange(64.0))  # new values in place: the next call must read them
    second = f(q, k, v)
    assert len(calls) == 2 and len(f._calls) == 0 and not torch.allclose(first, second)
    assert rel_err(second, run_cascade(c, {"Q": q, "K": k, "V": v})["O"]) < 2e-5
