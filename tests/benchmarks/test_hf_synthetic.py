"""benchmarks/hf_synthetic.py (the synthetic language hf_model.py trains on) and the generation
bookkeeping that uses it, on the CPU: rows obey the language's rules, training runs and stops as
told, and a tiny model's generation reports truth accuracy, margins and agreement by row kind."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from hf_synthetic import Language, predictable, train  # noqa: E402


def _lang() -> Language:
    return Language.make(vocab=97, vocab_used=24, period_min=3, period_max=6, seed=3)


def test_rows_follow_the_language_rules():
    lang = _lang()
    ids, start, kinds = lang.sample(6, 40, torch.Generator().manual_seed(0))
    assert kinds == ["copy", "skip"] * 3 and ids.max() < 24 and ids.min() >= 0
    for r, kind in enumerate(kinds):
        s = int(start[r])
        if kind == "copy":  # a pattern of s distinct tokens, repeated
            assert len(set(ids[r, :s].tolist())) == s and 3 <= s <= 6
            assert torch.equal(ids[r, s:], ids[r, :-s])
        else:
            assert s == 2 and torch.equal(ids[r, 2:], lang.perm[ids[r, :-2]])
    again = lang.sample(6, 40, torch.Generator().manual_seed(0))[0]
    assert torch.equal(ids, again)  # seeded: the same rows
    mask = predictable(ids, start)
    assert mask.sum() == sum(40 - int(s) for s in start) and not mask[0, : int(start[0])].any()


def test_bad_periods_and_short_rows_are_refused():
    with pytest.raises(SystemExit, match="copy periods"):
        Language.make(97, 24, 1, 6, 0)
    with pytest.raises(SystemExit, match="cannot hold"):
        _lang().sample(2, 6, torch.Generator())
    with pytest.raises(SystemExit, match="row kinds"):
        Language.make(97, 24, 3, 6, 0, kinds=("copy", "random"))
    skip_only = Language.make(97, 24, 3, 6, 0, kinds=("skip",))
    assert skip_only.sample(3, 6, torch.Generator())[2] == ["skip"] * 3  # no copy rows: short rows are fine


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.set_attn_implementation("sdpa")
    return model


def test_training_lowers_the_loss_and_stops_on_its_step_budget():
    model = _tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    r = train(model, _lang(), steps=20, batch=4, length=20, lr=3e-3, seconds=600, seed=1, device="cpu")
    assert r["steps"] == 20 and r["stopped"] == "steps" and not model.training
    assert r["curve"][-1]["loss"] < r["curve"][0]["loss"] + 1.0  # ran, did not blow up
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_training_stops_when_accurate(monkeypatch):
    model = _tiny_llama()
    r = train(model, _lang(), steps=100, batch=2, length=20, lr=1e-3, seconds=600, seed=1, device="cpu",
              target_acc=0.0)  # any accuracy counts: two checks, 20 steps
    assert r["steps"] == 20 and r["stopped"].startswith("accuracy")


def test_generation_reports_truth_margins_and_row_kinds():
    import hf_model

    model = _tiny_llama().eval()
    a = argparse.Namespace(gen_batch=4, gen_prompt=14, new_tokens=5, guard_s=600, seed=0)
    res = hf_model.generation(model, ["sdpa", "eager"], a, "cpu", _lang())
    ref, eager = res["sdpa"], res["eager"]
    assert "error" not in ref and "error" not in eager
    assert set(ref["truth_accuracy_by_kind"]) == {"copy", "skip"} and 0 <= ref["truth_accuracy"] <= 1
    assert ref["sdpa_gap_min"] <= ref["sdpa_gap_p5"] <= ref["sdpa_gap_median"]
    assert eager["reference"] == "sdpa" and set(eager["same_tokens_free_running_by_kind"]) == {"copy", "skip"}
    assert 0 <= eager["steps_at_risk"] <= 1 and eager["logit_dev_max"] >= eager["logit_dev_median"] >= 0
