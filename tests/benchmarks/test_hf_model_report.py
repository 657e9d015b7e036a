"""benchmarks/hf_model.py's bookkeeping: token agreement (free-running, teacher-forced, first flip)
and the issue-18 targets it flags, on synthetic runs (the benchmark itself needs a GPU)."""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from hf_model import agreement  # noqa: E402
from hf_model_report import markdown, targets  # noqa: E402


def _run(tokens: list[list[int]], vocab: int = 5, seed: int = 0) -> dict:
    t = torch.tensor(tokens)
    logits = torch.randn(*t.shape, vocab, generator=torch.Generator().manual_seed(seed))
    logits.scatter_(-1, t[..., None], 10.0)  # argmax = the token
    return {"tokens": t, "logits": logits}


def test_agreement_counts_steps_and_finds_the_first_flip():
    ref = _run([[1, 2, 3, 4], [0, 0, 1, 1]])
    free = _run([[1, 2, 0, 0], [0, 0, 1, 1]])  # diverged at step 2 in row 0: 6 of 8 equal
    forced = _run([[1, 2, 3, 4], [0, 3, 1, 1]], seed=1)  # one flip at step 1
    r = agreement(free, ref, forced)
    assert r["same_tokens_free_running"] == pytest.approx(6 / 8)
    assert r["first_flip_step"] == 2  # row 0 leaves the reference at step 2
    assert r["same_tokens_teacher_forced"] == pytest.approx(7 / 8) and r["teacher_forced_flips"] == 1
    assert r["logit_rel_err_max"] > 0 and r["sdpa_gap_at_flips_median"] is not None
    same = agreement(ref, ref, ref)
    assert same["first_flip_step"] is None and same["logit_rel_err_max"] == 0
    assert same["same_tokens_teacher_forced"] == 1.0 and same["sdpa_gap_at_flips_median"] is None


def test_targets_are_met_missed_or_unknown():
    model = {"prefill": {"einfuse": {"ms": 4.0}, "sdpa": {"ms": 4.1}},
             "generation": {"einfuse": {"same_tokens_free_running": 0.9, "same_tokens_teacher_forced": 0.99}}}
    t = targets(model)
    assert t["prefill_le_sdpa"]["status"] == "met" and t["prefill_le_sdpa"]["speedup"] == pytest.approx(4.1 / 4)
    assert t["same_tokens_free_running"]["status"] == "missed"
    assert t["same_tokens_teacher_forced"]["status"] == "met"
    model["prefill"]["einfuse"] = {"error": "CodegenError: ..."}
    model["generation"] = {}
    t = targets(model)
    assert {v["status"] for v in t.values()} == {"unknown"}


def test_markdown_shows_rows_errors_and_targets():
    env = {"device": "NVIDIA H200", "torch": "2", "transformers": "5", "triton": "3"}
    setup = dict(dtype="bfloat16", seed=0, init_range=0.02, layers=16, hidden=2048, heads=32, kv_heads=8, head_dim=128,
                 intermediate=5632, vocab=32000, window=1024, batch=4, seq=4096, rep=10, gen_batch=4, gen_prompt=1536,
                 new_tokens=128)
    model = {"prefill": {"einfuse": {"ms": 4.0, "ms_min": 3.9, "host_ms": 1.0, "top_kernels": {"attn": 1.0},
                                     "attention_gpu_ms": 1.0, "other_gpu_ms": 2.5},
                         "sdpa": {"ms": 4.1, "ms_min": 4.0, "host_ms": 1.0},
                         "flex_attention": {"error": "TimeoutError: gave up"}},
             "training": {"steps": 120, "seconds": 30.0, "stopped": "accuracy >= 0.999 twice", "batch": 4,
                          "length": 1664, "lr": 6e-4, "final_loss": 0.01, "final_accuracy": 0.9995},
             "generation": {"sdpa": {"prefill_ms": 2.0, "step_ms_median": 5.0, "step_ms_mean": 5.1,
                                     "truth_accuracy": 1.0},
                            "einfuse": {"prefill_ms": 2.0, "step_ms_median": 5.5, "step_ms_mean": 5.6,
                                        "same_tokens_free_running": 0.97, "same_tokens_teacher_forced": 0.99,
                                        "same_tokens_free_running_by_kind": {"copy": 0.94, "skip": 1.0}},
                            "eager": {"prefill_ms": 2.0, "step_ms_median": 5.5, "step_ms_mean": 5.6,
                                      "same_tokens_free_running": 1.0, "same_tokens_teacher_forced": 1.0}},
             "fp32_control": {"logit_rel_err_max": 3e-4, "prefill_logit_rel_err_max": 1e-7,
                              "decode_logit_rel_err_max": 3e-4}}
    model["targets"] = targets(model)
    md = markdown({"env": env, "setup": setup, "models": {"llama": model}})
    assert "| einfuse | 4 | 3.9 | 1 | 1.02x | 1 | 2.5 | attn 1.00 |" in md
    assert "flex_attention | error: TimeoutError" in md and "97.0 %" in md
    assert "**prefill_le_sdpa**: MET" in md and "**same_tokens_free_running**: MET" in md
    assert "eager_floor 1, sdpa_tokens_equal_truth 1)" in md and "einfuse copy 94.0 %, skip 100.0 %" in md
    assert "Trained 120 steps" in md and "accuracy on predictable tokens 100.0 %" in md
    assert "**fp32_logits_within_1e-4**: MISSED" in md and "decode steps 0.0003" in md
