"""A whole Hugging Face model with einfuse as its attention, beside sdpa and flex attention (issue 18).

    python benchmarks/hf_model.py                  # GPU, bf16: Llama- and Mistral-style random models
    python benchmarks/hf_model.py --dry-run        # CPU, Triton interpreter, fp32, tiny sizes: checks the script
                                                   # (~2 min; its 30 training steps teach a tiny model little)

Random weights built from transformers configs (nothing downloaded); one model per family, whose
attention implementation is switched between runs, so every implementation sees the same weights.
Default size (~1.1 B parameters, Llama-3.2-1B-like with head dim 128): 16 layers, hidden 2048, 32
heads / 8 KV heads, head dim 128, MLP 5632, vocab 32000; the Mistral-style model adds a sliding
window of 1024. Measured in one run:

* prefill: ``model(ids, use_cache=False, logits_to_keep=1)``, B4 x 4096, median of synchronised
  calls, the host time until the call returns, and the top GPU kernels of one call (torch.profiler);
* training (before generation; ``--train-steps 0`` skips it): random weights give nearly flat
  logits, so bf16 rounding flips greedy tokens whatever the attention (eager agreed with sdpa on
  ~50 % of free-running steps). Each model is first trained for <= ``--train-seconds`` on a
  deterministic synthetic language (benchmarks/hf_synthetic.py: copy rows, skip-bigram rows), with
  sdpa attention and bf16 autocast over fp32 weights, on rows as long as the generation;
* prefill: also the GPU ms of the attention kernels and of everything else in one profiled call;
* generation: 128 greedy tokens over the model's own KV cache (B4, prompt 1536 of held-out language
  rows: past the window), each 1-token step synchronised and timed; the fraction of steps whose
  token equals sdpa's, free-running (the issue's target) and teacher-forced on sdpa's sequence, the
  logits' error, sdpa's top-2 margins and the steps a logit change of that size could flip, and the
  fraction equal to the language's true continuation; eager attention (sdpa's math in other
  kernels) is the bf16 noise floor;
* fp32 control: the fp32 (trained) weights, einfuse vs sdpa teacher-forced for ``--fp32-steps``
  steps, prefill and decode logits held to 1e-4 (relative), where precision is not the question.

Results: ``benchmarks/results/hf-model/<device>.{json,md}`` and ``$OUT`` when set.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import signal
import statistics
import sys
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "hf-model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="llama,mistral")
    p.add_argument("--impls", default="einfuse,sdpa,flex_attention",
                   help="prefill implementations (einfuse-autotune: einfuse with autotune=True)")
    p.add_argument("--gen-impls", default="sdpa,einfuse,eager",
                   help="generation implementations; sdpa first (the reference); add flex_attention to try it")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--window", type=int, default=1024, help="the Mistral-style model's sliding window")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--gen-batch", type=int, default=4)
    p.add_argument("--gen-prompt", type=int, default=1536)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--fp32-steps", type=int, default=24, help="teacher-forced fp32 steps (0: skip)")
    p.add_argument("--train-steps", type=int, default=300,
                   help="steps of training on the synthetic language before generation (0: random weights)")
    p.add_argument("--train-batch", type=int, default=4, help="rows per step, each gen-prompt + new-tokens long")
    p.add_argument("--train-seconds", type=float, default=40, help="stop training a model after this long")
    p.add_argument("--train-lr", type=float, default=6e-4)
    p.add_argument("--lang-vocab", type=int, default=1024, help="tokens the synthetic language uses")
    p.add_argument("--copy-periods", default="8,256", help="MIN,MAX period of the language's copy rows")
    p.add_argument("--lang-kinds", default="copy,skip", help="row kinds of the language, cycled over a batch")
    p.add_argument("--rep", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-range", type=float, default=0.02, help="initializer_range of the random weights")
    p.add_argument("--guard-s", type=int, default=300, help="give up one implementation's step after this long")
    p.add_argument("--out-dir", "--results-dir", dest="out_dir", default=None,
                   help="default benchmarks/results/hf-model (a temporary folder with --dry-run); $OUT as well when set")
    p.add_argument("--tag", default="", help="appended to the result files' names (another size, say)")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, fp32, tiny sizes")
    a = p.parse_args(argv)
    if a.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        for k, v in dict(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96, vocab=97,
                         window=7, batch=2, seq=21, gen_batch=2, gen_prompt=11, new_tokens=6, fp32_steps=2,
                         rep=1, train_steps=min(a.train_steps, 30), lang_vocab=24, copy_periods="3,5").items():
            setattr(a, k, v)
        a.impls = ",".join(x for x in a.impls.split(",") if x != "flex_attention")
    if a.out_dir is None:
        import tempfile

        a.out_dir = tempfile.mkdtemp(prefix="hf-model-") if a.dry_run else RESULTS
    return a


# ---- models ------------------------------------------------------------------------------------------

def build(family: str, a: argparse.Namespace, device: str, dtype: Any) -> Any:
    """A random-weight model of ``family`` on ``device``; the same seed gives the same weights."""
    import torch
    import transformers as tf

    common = dict(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                  num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                  head_dim=a.head_dim, max_position_embeddings=max(a.seq, a.gen_prompt + a.new_tokens) + 8,
                  initializer_range=a.init_range, tie_word_embeddings=False, eos_token_id=None,
                  bos_token_id=None, pad_token_id=None)
    if family == "llama":
        cfg, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif family == "mistral":
        cfg, cls = tf.MistralConfig(**common, sliding_window=a.window), tf.MistralForCausalLM
    else:
        raise SystemExit(f"unknown model family {family!r}: use llama, mistral")
    torch.manual_seed(a.seed)
    with torch.device(device):
        model = cls(cfg)
    return model.to(dtype).eval()


_REGISTERED: str | None = None


def use(model: Any, impl: str) -> None:
    """Switch the model's attention; einfuse strictly (a fallback to PyTorch would be an error)."""
    global _REGISTERED
    name = impl
    if impl.startswith("einfuse"):
        import einfuse.integrations.transformers as eft

        if _REGISTERED != impl:  # registering again drops the compiled kernels
            eft.register(strict=True, **({"autotune": True} if impl == "einfuse-autotune" else {}))
            _REGISTERED = impl
        name = eft.NAME
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers
        model.config._attn_implementation = name


def forward(model: Any, ids: Any, **kw: Any) -> Any:
    """``model(ids, logits_to_keep=1, ...)``; releases without ``logits_to_keep`` keep every logit."""
    try:
        return model(ids, logits_to_keep=1, **kw)
    except TypeError as exc:
        if "logits_to_keep" not in str(exc):
            raise
        return model(ids, **kw)


# ---- timing ------------------------------------------------------------------------------------------

def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def guard(seconds: int):
    """Raise TimeoutError when the block runs longer than ``seconds`` (flex attention compiles)."""
    def fire(*_: Any) -> None:
        raise TimeoutError(f"gave up after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def time_prefill(model: Any, ids: Any, rep: int) -> dict[str, Any]:
    for _ in range(2):  # compile, autotune, caches
        forward(model, ids, use_cache=False)
    sync()
    ms, host = [], []
    for _ in range(rep):
        t0 = time.perf_counter()
        forward(model, ids, use_cache=False)
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        host.append((t1 - t0) * 1e3)
        ms.append((t2 - t0) * 1e3)
    kernels = kernel_times(lambda: forward(model, ids, use_cache=False))
    out = {"ms": statistics.median(ms), "ms_min": min(ms), "host_ms": statistics.median(host),
           "top_kernels": dict(list(kernels.items())[:8])}
    if kernels and not any(k.startswith("profiler failed") for k in kernels):
        attn = sum(v for k, v in kernels.items() if ATTENTION_KERNEL.search(k))
        out.update(attention_gpu_ms=attn, other_gpu_ms=sum(kernels.values()) - attn,
                   attention_kernels=sorted(k[:60] for k in kernels if ATTENTION_KERNEL.search(k)))
    return out


ATTENTION_KERNEL = re.compile(r"attn|attention|sdpa|fmha|flash|decode_partial|decode_combine", re.IGNORECASE)
"""Names of attention kernels: einfuse (attn_fwd, decode_*), cuDNN / flash / memory-efficient sdpa,
flex attention. Mask construction and RoPE run in other kernels and count as "other"."""


def kernel_times(fn: Any) -> dict[str, float]:
    """GPU ms by kernel name for one call, largest first (empty without a GPU or a working profiler)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        rows = {}
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None)
            t = t if t is not None else getattr(e, "self_cuda_time_total", 0)
            if t:
                rows[e.key] = rows.get(e.key, 0.0) + t / 1e3
        return dict(sorted(rows.items(), key=lambda kv: -kv[1]))
    except Exception as exc:  # noqa: BLE001 - a diagnostic, not a result
        return {f"profiler failed: {type(exc).__name__}: {exc}"[:120]: 0.0}


def greedy(model: Any, prompt: Any, steps: int, force: Any = None) -> dict[str, Any]:
    """``steps`` greedy tokens over the model's own KV cache (``force``: feed these tokens instead of
    the model's, teacher forcing); per-step synchronised times, predicted tokens, float32 logits."""
    import torch

    sync()
    t0 = time.perf_counter()
    out = forward(model, prompt, use_cache=True)
    sync()
    prefill_ms = (time.perf_counter() - t0) * 1e3
    cache = out.past_key_values
    tokens, logits, times = [], [], []
    for i in range(steps):
        last = out.logits[:, -1].float()
        tokens.append(last.argmax(-1))
        logits.append(last)
        if i == steps - 1:
            break
        feed = (tokens[-1] if force is None else force[:, i])[:, None]
        sync()
        t = time.perf_counter()
        out = model(feed, past_key_values=cache, use_cache=True)
        sync()
        times.append((time.perf_counter() - t) * 1e3)
        cache = out.past_key_values
    return {"prefill_ms": prefill_ms, "times": times, "tokens": torch.stack(tokens, 1),
            "logits": torch.stack(logits, 1)}


def agreement(run: dict[str, Any], ref: dict[str, Any], forced: dict[str, Any] | None) -> dict[str, Any]:
    """Token agreement with the reference run, free-running and teacher-forced on its sequence."""
    got, want = run["tokens"], ref["tokens"]
    same = (got == want)
    flips = (~same).any(0).nonzero()
    out = {"same_tokens_free_running": float(same.float().mean()),
           "first_flip_step": int(flips[0]) if len(flips) else None}
    if forced is not None:
        tf_same = forced["tokens"] == want
        rl, fl = ref["logits"], forced["logits"]
        rel = ((fl - rl).norm(dim=-1) / rl.norm(dim=-1)).flatten()
        top2 = rl.topk(2, dim=-1).values
        gap = (top2[..., 0] - top2[..., 1])
        dev = (fl - rl).abs().amax(-1)  # the largest logit change at each step
        out.update({"same_tokens_teacher_forced": float(tf_same.float().mean()),
                    "teacher_forced_flips": int((~tf_same).sum()),
                    "logit_rel_err_median": float(rel.median()), "logit_rel_err_max": float(rel.max()),
                    "logit_dev_median": float(dev.median()), "logit_dev_max": float(dev.max()),
                    # a step can flip only where the top-2 gap is below twice the largest logit change
                    "steps_at_risk": float((gap <= 2 * dev).float().mean()),
                    **margins(rl),
                    "sdpa_gap_at_flips_median": float(gap[~tf_same].median()) if (~tf_same).any() else None})
    return out


def margins(logits: Any) -> dict[str, float]:
    """The reference's top-1 minus top-2 logit per step: median, 5th percentile and minimum."""
    import torch

    top2 = logits.float().topk(2, dim=-1).values
    gap = (top2[..., 0] - top2[..., 1]).flatten()
    return {"sdpa_gap_median": float(gap.median()), "sdpa_gap_p5": float(torch.quantile(gap, 0.05)),
            "sdpa_gap_min": float(gap.min())}


def language_prompts(lang: Any, a: argparse.Namespace, seed: int) -> tuple[Any, Any, list[str]]:
    """Held-out rows of the synthetic language: ``gen_prompt`` tokens of prompt, the true
    ``new_tokens`` continuation (CPU), and each row's kind."""
    import torch

    rows, _, kinds = lang.sample(a.gen_batch, a.gen_prompt + a.new_tokens, torch.Generator().manual_seed(seed))
    return rows[:, :a.gen_prompt], rows[:, a.gen_prompt:], kinds


def by_kind(same: Any, kinds: list[str]) -> dict[str, float]:
    """The fraction of equal tokens of (B, steps) ``same`` for each kind of row."""
    return {k: float(same[[i for i, x in enumerate(kinds) if x == k]].float().mean()) for k in sorted(set(kinds))}


def generation(model: Any, impls: list[str], a: argparse.Namespace, device: str, lang: Any) -> dict[str, Any]:
    import torch

    prompt, truth, kinds = language_prompts(lang, a, a.seed + 1)
    prompt = prompt.to(device)
    res: dict[str, Any] = {}
    ref, ref_impl = None, None
    for impl in impls:
        try:
            with guard(a.guard_s):
                use(model, impl)
                with torch.no_grad():
                    # warm-up: compile, block tables of the prompt, decode kernels at key counts of every
                    # specialisation (Triton specialises integers divisible by 16)
                    greedy(model, prompt, min(17, a.new_tokens))
                    run = greedy(model, prompt, a.new_tokens)
                    if ref is None:  # the first that runs (sdpa unless it failed) is the reference
                        ref, ref_impl = run, impl
                        forced = None
                    else:
                        forced = greedy(model, prompt, a.new_tokens, force=ref["tokens"])
            r = {"prefill_ms": run["prefill_ms"], "step_ms_median": statistics.median(run["times"]),
                 "step_ms_mean": statistics.fmean(run["times"]),
                 "tokens_per_s": a.gen_batch * len(run["times"]) / (sum(run["times"]) / 1e3),
                 # how well the model learnt the language: its free-running tokens against the truth
                 "truth_accuracy": float((run["tokens"].cpu() == truth).float().mean()),
                 "truth_accuracy_by_kind": by_kind(run["tokens"].cpu() == truth, kinds)}
            if run is not ref:
                r.update(agreement(run, ref, forced), reference=ref_impl,
                         same_tokens_free_running_by_kind=by_kind(run["tokens"] == ref["tokens"], kinds))
            else:
                r.update(margins(run["logits"]))
            res[impl] = r
            print(f"  generate {impl:16s} step {r['step_ms_median']:.3f} ms  "
                  + " ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float) and "same" in k), flush=True)
        except Exception as exc:  # noqa: BLE001 - recorded as the row's error
            res[impl] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  generate {impl}: {res[impl]['error']}\n{traceback.format_exc(limit=3)}", flush=True)
    return res


def fp32_control(model: Any, a: argparse.Namespace, device: str, lang: Any) -> dict[str, Any]:
    """einfuse vs sdpa in float32 (the model's fp32 weights, trained when training ran), teacher-forced:
    token flips or logit errors above 1e-4 here would be bugs, not bf16 rounding. Step 0's logits are
    the prefill's; the others are decode steps over the KV cache."""
    import torch

    prompt = language_prompts(lang, a, a.seed + 2)[0].to(device)
    with torch.no_grad():
        use(model, "sdpa")
        ref = greedy(model, prompt, a.fp32_steps)
        use(model, "einfuse")
        forced = greedy(model, prompt, a.fp32_steps, force=ref["tokens"])
    r = agreement(forced, ref, forced)
    rl, fl = ref["logits"], forced["logits"]
    rel = (fl - rl).norm(dim=-1) / rl.norm(dim=-1)  # (B, steps)
    r["prefill_logit_rel_err_max"] = float(rel[:, 0].max())
    r["decode_logit_rel_err_max"] = float(rel[:, 1:].max()) if rel.shape[1] > 1 else None
    return {k: v for k, v in r.items() if k.startswith(("same_tokens_teacher", "teacher", "logit", "prefill", "decode"))}


# ---- the run -----------------------------------------------------------------------------------------

def env_info(device: str) -> dict[str, Any]:
    import torch
    import transformers

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = None
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (Triton interpreter, dry run)"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__, "triton": tv,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    import warnings

    import torch

    # transformers >= 5.2x renames past_key_values to cache; the old name is what every 5.x takes
    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
    from hf_model_report import markdown, targets
    from hf_synthetic import Language, train

    device = "cpu" if a.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU: run with --dry-run to check the script on the CPU")
    dtype = torch.float32 if a.dry_run else torch.bfloat16
    results: dict[str, Any] = {"env": env_info(device), "models": {}, "setup": {
        k: getattr(a, k) for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
                                   "window", "batch", "seq", "gen_batch", "gen_prompt", "new_tokens", "rep",
                                   "seed", "init_range", "fp32_steps", "train_steps", "train_batch", "train_seconds",
                                   "train_lr", "lang_vocab", "copy_periods", "lang_kinds")} | {"dtype": str(dtype).replace("torch.", "")}}
    print(json.dumps(results["env"]), flush=True)
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(device)
    lo, hi = (int(x) for x in a.copy_periods.split(","))
    lang = Language.make(a.vocab, a.lang_vocab, lo, hi, a.seed + 3, tuple(a.lang_kinds.split(",")))
    for family in a.models.split(","):
        print(f"{family}:", flush=True)
        # fp32 weights: training's master copy, then the fp32 control; the timed model is a copy in dtype
        master = build(family, a, device, torch.float32)
        res: dict[str, Any] = {"parameters": sum(p.numel() for p in master.parameters()), "prefill": {}}
        if a.train_steps:
            use(master, "sdpa")
            res["training"] = train(master, lang, steps=a.train_steps, batch=a.train_batch,
                                    length=a.gen_prompt + a.new_tokens, lr=a.train_lr, seconds=a.train_seconds,
                                    seed=a.seed + 4, device=device)
            print(f"  trained {res['training']['steps']} steps in {res['training']['seconds']} s "
                  f"({res['training']['stopped']}): accuracy {res['training']['final_accuracy']}", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
        model = master if dtype == torch.float32 else copy.deepcopy(master).to(dtype).eval()
        for impl in a.impls.split(","):
            try:
                with guard(a.guard_s), torch.no_grad():
                    use(model, impl)
                    res["prefill"][impl] = time_prefill(model, ids, a.rep)
                print(f"  prefill  {impl:16s} {res['prefill'][impl]['ms']:.3f} ms "
                      f"(host {res['prefill'][impl]['host_ms']:.3f} ms)", flush=True)
            except Exception as exc:  # noqa: BLE001 - recorded as the row's error
                res["prefill"][impl] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  prefill {impl}: {res['prefill'][impl]['error']}\n{traceback.format_exc(limit=3)}", flush=True)
        res["generation"] = generation(model, a.gen_impls.split(","), a, device, lang)
        if "einfuse.integrations.transformers" in sys.modules:  # the kernels einfuse compiled for this model
            res["einfuse_variants"] = [str(k) for k in sys.modules["einfuse.integrations.transformers"]._KERNELS]
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        if a.fp32_steps:
            try:
                res["fp32_control"] = fp32_control(master, a, device, lang)
                print(f"  fp32 control {res['fp32_control']}", flush=True)
            except Exception as exc:  # noqa: BLE001
                res["fp32_control"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  fp32 control: {res['fp32_control']['error']}\n{traceback.format_exc(limit=3)}", flush=True)
        del master
        if device == "cuda":
            torch.cuda.empty_cache()
        res["targets"] = targets(res)
        results["models"][family] = res
        print(f"  ({time.perf_counter() - t_start:.0f} s so far)", flush=True)
        results["wall_s"] = round(time.perf_counter() - t_start, 1)
        write(results, a, markdown(results), show=False)  # after each model: a run cut short keeps what it did
    print(markdown(results), flush=True)
    return results


def write(results: dict[str, Any], a: argparse.Namespace, md: str, show: bool = True) -> None:
    stem = ("dry-run" if a.dry_run else slug(results["env"]["device"])) + (f"-{a.tag}" if a.tag else "")
    dirs = [a.out_dir] + ([os.environ["OUT"]] if os.environ.get("OUT") else [])
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"hf-model-{stem}.json"), "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=str)
        with open(os.path.join(d, f"hf-model-{stem}.md"), "w", encoding="utf-8") as fh:
            fh.write(md)
    if show:
        print(md, flush=True)


if __name__ == "__main__":
    main()
