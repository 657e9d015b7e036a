"""The reference executor against independent formulas (torch SDPA, NumPy), in float64."""

import math

import numpy as np
import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import ExecutionError
from einfuse.ir import parse_cascade


def rand(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def sdpa(q, k, v, mask=None, scale=None):
    t = [torch.from_numpy(x) for x in (q, k, v)]
    groups = t[0].shape[1] // t[1].shape[1]
    k_, v_ = (x.repeat_interleave(groups, dim=1) for x in t[1:])
    m = None if mask is None else torch.from_numpy(mask)
    return torch.nn.functional.scaled_dot_product_attention(t[0], k_, v_, attn_mask=m, scale=scale).numpy()


@pytest.mark.parametrize("B,H,Hkv,N,M,D", [(2, 4, 4, 37, 37, 24), (1, 4, 2, 19, 45, 16), (2, 3, 1, 8, 5, 7)])
def test_softmax_matches_sdpa(B, H, Hkv, N, M, D):
    rng = np.random.default_rng(N * M)
    q, k, v = rand(rng, B, H, N, D), rand(rng, B, Hkv, M, D), rand(rng, B, Hkv, M, D)
    out = run_cascade(einfuse.load_spec(f"softmax:head_dim={D}"), {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(out, sdpa(q, k, v)) < 1e-12


def test_causal_with_large_logits_matches_sdpa():
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, 2, 2, 33, 24, scale=30.0), rand(rng, 2, 2, 33, 24, scale=30.0), rand(rng, 2, 2, 33, 24)
    out = run_cascade(einfuse.load_spec("causal:head_dim=24"), {"Q": q, "K": k, "V": v})["O"]
    mask = np.tril(np.ones((33, 33), bool))
    assert np.isfinite(out).all()
    assert rel_err(out, sdpa(q, k, v, mask)) < 1e-10


def test_fully_masked_rows_are_zero_not_nan():
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 4, scale=1.0)
    rng = np.random.default_rng(2)
    q, k, v = (rand(rng, 1, 2, 11, 8) for _ in range(3))
    out = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert not np.isnan(out).any()
    assert np.all(out[:, :, :4] == 0)
    mask = np.arange(11)[None, :] <= np.arange(11)[:, None] - 4
    ref = sdpa(q[:, :, 4:], k, v, mask[4:], scale=1.0)
    assert rel_err(out[:, :, 4:], ref) < 1e-12


@pytest.mark.parametrize("lowered", [False, True])
def test_rows_a_score_mod_sends_to_minus_inf_are_zero_not_nan(lowered):
    """``where(q < 4, s, -inf)`` leaves queries 4.. without a finite score: like a fully masked row
    they give 0 (as FlexAttention and the kernels do), in the naive and the one-pass cascade."""
    from einfuse.passes.fusion import fuse_online_softmax

    c = einfuse.attention(score_mod=lambda s, b, h, q, kv: einfuse.where((q < 4) & (kv <= q + 6), s, -math.inf),
                          scale=1)
    if lowered:
        c = fuse_online_softmax(c, tile=4)
    rng = np.random.default_rng(3)
    q, k, v = (rand(rng, 1, 2, 11, 8) for _ in range(3))
    out = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert np.isfinite(out).all() and np.all(out[:, :, 4:] == 0)
    mask = np.arange(11)[None, :] <= np.arange(11)[:, None] + 6
    assert rel_err(out[:, :, :4], sdpa(q[:, :, :4], k, v, mask[:4], scale=1.0)) < 1e-12


def test_hand_written_one_pass_cascade_equals_dense_formula(flash_text):
    """FuseMax Cascade 5 with ragged key tiles (N=37, M0=8) and rows 0..2 fully masked."""
    rng = np.random.default_rng(3)
    q, k, v = (rand(rng, 2, 3, 37, 24) for _ in range(3))
    out = run_cascade(parse_cascade(flash_text), {"Q": q, "K": k, "V": v})["AV"]
    mask = np.arange(37)[None, :] <= np.arange(37)[:, None] - 3
    assert np.all(out[:, :, :3] == 0) and np.isfinite(out).all()
    assert rel_err(out[:, :, 3:], sdpa(q[:, :, 3:], k, v, mask[3:], scale=1.0)) < 1e-12


@pytest.mark.parametrize("tile", [1, 5, 8, 64])
def test_one_pass_cascade_any_tile(flash_text, tile):
    rng = np.random.default_rng(tile)
    q, k, v = (rand(rng, 1, 2, 21, 6) for _ in range(3))
    out = run_cascade(parse_cascade(flash_text), {"Q": q, "K": k, "V": v}, sizes={"M0": tile})["AV"]
    mask = np.arange(21)[None, :] <= np.arange(21)[:, None] - 3
    assert rel_err(out[:, :, 3:], sdpa(q[:, :, 3:], k, v, mask[3:], scale=1.0)) < 1e-12


def test_sigmoid_and_linear_match_numpy():
    rng = np.random.default_rng(4)
    q, k, v = (rand(rng, 2, 2, 13, 5) for _ in range(3))
    s = np.einsum("bhpe,bhme->bhpm", q, k)
    out = run_cascade(einfuse.load_spec("sigmoid:bias=-1.5,scale=1"), {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(out, (1 / (1 + np.exp(-(s - 1.5)))) @ v) < 1e-12
    out = run_cascade(einfuse.load_spec("linear:feature_map=relu"), {"Q": q, "K": k, "V": v})["O"]
    fs = np.einsum("bhpe,bhme->bhpm", np.maximum(q, 0), np.maximum(k, 0)) * np.tril(np.ones((13, 13)))
    assert rel_err(out, fs @ v) < 1e-12


def test_lightning_decay_matches_numpy():
    rng = np.random.default_rng(5)
    H = 4
    q, k, v = (rand(rng, 1, H, 17, 6) for _ in range(3))
    out = run_cascade(einfuse.load_spec("lightning"), {"Q": q, "K": k, "V": v})["O"]
    pm = np.arange(17)[:, None] - np.arange(17)[None, :]
    ref = np.zeros_like(out)
    for h in range(H):
        rate = 2.0 ** (-8 * (h + 1) / H)
        w = np.where(pm >= 0, np.exp(-rate * np.maximum(pm, 0)), 0.0)
        ref[:, h] = (q[:, h] @ k[:, h].transpose(0, 2, 1) * w) @ v[:, h]
    assert rel_err(out, ref) < 1e-12


def test_bad_inputs_raise_execution_errors():
    c = einfuse.load_spec("softmax")
    rng = np.random.default_rng(6)
    q, k = rand(rng, 1, 4, 8, 4), rand(rng, 1, 3, 8, 4)
    with pytest.raises(ExecutionError, match="missing input tensor V"):
        run_cascade(c, {"Q": q, "K": k})
    with pytest.raises(ExecutionError, match="heads do not divide"):
        run_cascade(c, {"Q": q, "K": k, "V": k})
    with pytest.raises(ExecutionError, match=r"input K: rank E has size 5"):
        run_cascade(c, {"Q": q, "K": rand(rng, 1, 4, 8, 5), "V": q})
    with pytest.raises(ExecutionError, match="shape"):
        run_cascade(c, {"Q": q[0], "K": q, "V": q})
