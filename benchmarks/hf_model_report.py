"""Results of benchmarks/hf_model.py -> targets (issue 18) and a markdown table.

Targets: whole-model prefill time of einfuse <= sdpa's in the same run, and bf16 greedy generation
whose tokens equal sdpa's at >= 95 % of steps. Both agreement measures are reported: free-running
(the issue's wording: each model generates from its own tokens, so one flip changes every later
context) and teacher-forced (each step predicted on sdpa's sequence, so steps are independent);
eager attention, the same math as sdpa in other kernels, is the noise floor of bf16 ties. With
training on the synthetic language (benchmarks/hf_synthetic.py) the model is sure of its tokens, so
the floor is near 100 % and a flip points at attention. The fp32 control holds einfuse to sdpa's
logits within 1e-4 (relative), prefill and decode steps, where precision is not the question.
"""

from __future__ import annotations

from typing import Any

SAME_TOKENS_TARGET = 0.95
FP32_REL_ERR = 1e-4


def targets(model: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for one model's results, each with its numbers and met / missed / unknown."""
    out: dict[str, Any] = {}
    pre = model.get("prefill", {})
    ours, sdpa = pre.get("einfuse", {}).get("ms"), pre.get("sdpa", {}).get("ms")
    out["prefill_le_sdpa"] = {"einfuse_ms": ours, "sdpa_ms": sdpa,
                              "speedup": sdpa / ours if ours and sdpa else None,
                              "status": "unknown" if not (ours and sdpa) else ("met" if ours <= sdpa else "missed")}
    gen = model.get("generation", {}).get("einfuse", {})
    for kind in ("free_running", "teacher_forced"):
        frac = gen.get(f"same_tokens_{kind}")
        out[f"same_tokens_{kind}"] = {
            "fraction": frac, "needed": SAME_TOKENS_TARGET,
            "status": "unknown" if frac is None else ("met" if frac >= SAME_TOKENS_TARGET else "missed")}
        floor = model.get("generation", {}).get("eager", {}).get(f"same_tokens_{kind}")
        if floor is not None:  # eager vs sdpa: what bf16 rounding alone gives
            out[f"same_tokens_{kind}"]["eager_floor"] = floor
        learnt = model.get("generation", {}).get("sdpa", {}).get("truth_accuracy")
        if learnt is not None:  # agreement means something only where the model is sure: did it learn?
            out[f"same_tokens_{kind}"]["sdpa_tokens_equal_truth"] = learnt
    if "fp32_control" in model:
        err = model["fp32_control"].get("logit_rel_err_max")
        out["fp32_logits_within_1e-4"] = {
            "rel_err_max": err, "needed": FP32_REL_ERR,
            "status": "unknown" if err is None else ("met" if err < FP32_REL_ERR else "missed")}
    return out


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown: setup, then per model a prefill and a generation table and the targets."""
    env, cfg = results["env"], results["setup"]
    lines = [f"# einfuse as Hugging Face attention: whole-model prefill and generation ({env['device']})", "",
             f"torch {env['torch']}, transformers {env['transformers']}, triton {env['triton']}, "
             f"{cfg['dtype']}, random weights (seed {cfg['seed']}, initializer_range {cfg['init_range']}). "
             f"Model: {cfg['layers']} layers, hidden {cfg['hidden']}, {cfg['heads']} heads / {cfg['kv_heads']} KV "
             f"heads, head dim {cfg['head_dim']}, MLP {cfg['intermediate']}, vocab {cfg['vocab']}; Mistral-style "
             f"sliding window {cfg['window']}.", "",
             f"Prefill: B{cfg['batch']} x {cfg['seq']} tokens, `use_cache=False`, `logits_to_keep=1`, median of "
             f"{cfg['rep']} synchronised calls; host ms = time until the call returns (no sync). Generation: B"
             f"{cfg['gen_batch']}, prompt {cfg['gen_prompt']}, {cfg['new_tokens']} greedy tokens over the model's "
             "own KV cache; a step is one synchronised 1-token forward.", ""]
    if env["device"].startswith("cpu"):
        lines += ["**Dry run** (Triton interpreter on the CPU, fp32): the times say nothing about speed.", ""]
    for name, model in results["models"].items():
        lines += [f"## {name}", ""]
        tr = model.get("training")
        if tr:
            lines += [f"Trained {tr['steps']} steps ({tr['seconds']} s, stopped: {tr['stopped']}; B{tr['batch']} x "
                      f"{tr['length']}, lr {tr['lr']}): final loss {_f(tr['final_loss'])}, accuracy on predictable "
                      f"tokens {_pct(tr['final_accuracy'])}.", ""]
        lines += ["| prefill | ms (median) | min | host ms | vs sdpa | attention GPU ms | other GPU ms | "
                  "top GPU kernels (ms) |", "|---|---|---|---|---|---|---|---|"]
        sdpa = model.get("prefill", {}).get("sdpa", {}).get("ms")
        for impl, r in model.get("prefill", {}).items():
            if "error" in r:
                lines.append(f"| {impl} | error: {r['error'][:150]} | | | | | | |")
                continue
            top = ", ".join(f"{k[:40]} {v:.2f}" for k, v in list(r.get("top_kernels", {}).items())[:4])
            ratio = f"{sdpa / r['ms']:.2f}x" if sdpa else "-"
            lines.append(f"| {impl} | {_f(r['ms'])} | {_f(r['ms_min'])} | {_f(r['host_ms'])} | {ratio} | "
                         f"{_f(r.get('attention_gpu_ms'))} | {_f(r.get('other_gpu_ms'))} | {top} |")
        lines += ["", "| generation | prefill ms | step ms (median) | step ms (mean) | tokens = truth | "
                      "same tokens as sdpa: free | first flip | teacher-forced | logit rel err (median / max) | "
                      "max logit change (median / max) | sdpa top-2 gap: median / p5 / min / at flips | "
                      "steps at risk |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for impl, r in model.get("generation", {}).items():
            if "error" in r:
                lines.append(f"| {impl} | error: {r['error'][:150]} | | | | | | | | | | |")
                continue
            lines.append(f"| {impl} | {_f(r['prefill_ms'])} | {_f(r['step_ms_median'])} | {_f(r['step_ms_mean'])} | "
                         f"{_pct(r.get('truth_accuracy'))} | {_pct(r.get('same_tokens_free_running'))} | "
                         f"{_f(r.get('first_flip_step'))} | {_pct(r.get('same_tokens_teacher_forced'))} | "
                         f"{_f(r.get('logit_rel_err_median'))} / {_f(r.get('logit_rel_err_max'))} | "
                         f"{_f(r.get('logit_dev_median'))} / {_f(r.get('logit_dev_max'))} | "
                         f"{_f(r.get('sdpa_gap_median'))} / {_f(r.get('sdpa_gap_p5'))} / {_f(r.get('sdpa_gap_min'))} / "
                         f"{_f(r.get('sdpa_gap_at_flips_median'))} | {_pct(r.get('steps_at_risk'))} |")
        kinds = {impl: r["same_tokens_free_running_by_kind"] for impl, r in model.get("generation", {}).items()
                 if "same_tokens_free_running_by_kind" in r}
        if kinds:
            lines += ["", "Free-running agreement with sdpa by row kind: " + "; ".join(
                f"{impl} " + ", ".join(f"{k} {_pct(v)}" for k, v in d.items()) for impl, d in kinds.items())]
        if "fp32_control" in model:
            c = model["fp32_control"]
            lines += ["", "fp32 control (einfuse vs sdpa, teacher-forced): " + (
                c["error"] if "error" in c else f"same tokens {_pct(c.get('same_tokens_teacher_forced'))}, logit rel "
                f"err median {_f(c.get('logit_rel_err_median'))}, max {_f(c.get('logit_rel_err_max'))} (prefill "
                f"{_f(c.get('prefill_logit_rel_err_max'))}, decode steps {_f(c.get('decode_logit_rel_err_max'))})")]
        lines += ["", "Targets:", ""]
        for key, t in model.get("targets", {}).items():
            detail = {k: v for k, v in t.items() if k != "status"}
            shown = ", ".join(f"{k} {_f(v)}" for k, v in detail.items())
            lines.append(f"- **{key}**: {t['status'].upper()} ({shown})")
        lines.append("")
    lines += ["Free-running: each implementation continues from its own tokens, so after a first flip the contexts "
              "differ and later steps rarely agree. Teacher-forced: each step predicted on sdpa's sequence. The "
              "top-2 gap is sdpa's own top-1 minus top-2 logit: flips at gaps far below the typical gap are ties "
              "at bf16 precision; eager attention (sdpa's math in other kernels) shows how often bf16 alone flips. "
              "Max logit change: the largest |logit - sdpa's logit| of a teacher-forced step; a step is at risk "
              "when its top-2 gap is at most twice that change (only there can rounding flip the token). Tokens = "
              "truth: free-running tokens equal to the synthetic language's continuation (how well training went). "
              "Attention GPU ms: the prefill's attention kernels in one profiled call (names matching "
              "attn/attention/sdpa/fmha/flash); other: every other kernel (projections, MLP, norms, RoPE, masks).",
              ""]
    if results.get("wall_s") is not None:
        lines += [f"Wall time of the run up to this model: {results['wall_s']} s.", ""]
    return "\n".join(lines)
