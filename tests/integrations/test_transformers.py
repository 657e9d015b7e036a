"""einfuse as the attention of tiny random Hugging Face models (CPU, Triton interpreter, fp32, no
downloads): prefill logits, every step of a 16-token greedy generation over a KV cache, chunked
prefill, static caches (queries at an offset) and padded batches equal transformers' own sdpa
(eager for Gemma 2's soft-cap) path to 1e-4."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import einfuse.integrations.transformers as eft  # noqa: E402
from einfuse.errors import CodegenError  # noqa: E402

TOL = 1e-4
# the tests pass caches as past_key_values, the name every transformers 5 release takes
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=128)


def _family(name: str):
    t = transformers
    if name == "llama":
        return t.LlamaConfig(**COMMON), t.LlamaForCausalLM, "sdpa"
    if name == "mistral":  # a window shorter than prompt + generation
        return t.MistralConfig(**COMMON, sliding_window=7), t.MistralForCausalLM, "sdpa"
    if name == "gemma2":  # soft-capped scores, sliding window on alternate layers; sdpa refuses soft-caps
        cfg = t.Gemma2Config(**COMMON, sliding_window=6, attn_logit_softcapping=2.0, query_pre_attn_scalar=16)
        return cfg, t.Gemma2ForCausalLM, "eager"
    if name == "qwen2":
        return t.Qwen2Config(**COMMON), t.Qwen2ForCausalLM, "sdpa"
    raise KeyError(name)


def _models(name: str):
    """The same random weights twice: transformers' reference attention, and einfuse's."""
    eft.register()
    cfg, cls, base = _family(name)
    torch.manual_seed(0)
    ref = cls(copy.deepcopy(cfg)).eval()
    ours = cls(copy.deepcopy(cfg)).eval()
    ours.load_state_dict(ref.state_dict())
    ref.set_attn_implementation(base)
    ours.set_attn_implementation(eft.NAME)
    return ref, ours


def _err(a, b) -> float:
    return float((a - b).norm() / a.norm())


def _ids(batch: int = 2, n: int = 11):
    return torch.randint(0, COMMON["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2", "qwen2"])
def test_prefill_generation_and_chunked_prefill_match(name):
    ref, ours = _models(name)
    ids = _ids()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = ref(ids).logits
        assert _err(want, ours(ids).logits) < TOL
        kw = dict(max_new_tokens=16, do_sample=False, output_logits=True, return_dict_in_generate=True,
                  attention_mask=mask)
        ga, gb = ref.generate(ids, **kw), ours.generate(ids, **kw)
        assert torch.equal(ga.sequences, gb.sequences)
        steps = [_err(a, b) for a, b in zip(ga.logits, gb.logits)]
        assert len(steps) == 16 and max(steps) < TOL, steps
        # chunked prefill over a DynamicCache: 7 then 4 queries, each chunk the newest tokens
        cache = transformers.DynamicCache(config=ours.config)
        chunks = [ours(ids[:, :7], past_key_values=cache).logits, ours(ids[:, 7:], past_key_values=cache).logits]
        assert _err(want, torch.cat(chunks, 1)) < TOL
    assert any(k[-1] == "bottom_right" for k in eft._KERNELS)


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_prefill_longer_than_a_decode_block_matches(name):
    """21 tokens: more queries than the decode kernel takes, so the prefill kernel runs on the
    strided views transformers passes and writes the layer's (B, N, H, D) output memory directly."""
    ref, ours = _models(name)
    ids = _ids(2, 21)
    with torch.no_grad():
        assert _err(ref(ids).logits, ours(ids).logits) < TOL
    assert any(k.main is not None and k.main.last_config is not None for k in eft._KERNELS.values())


def test_a_prefill_call_copies_no_tensor(monkeypatch):
    """q/k/v as transformers' projections give them ((B, H, N, D) views of (B, N, H, D) memory) go
    to the kernel as they are, and its output is already the (B, N, H, D) tensor the layer wants."""
    eft.register()
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 21, 4, 16, generator=g).transpose(1, 2)
    k, v = (torch.randn(1, 21, 2, 16, generator=g).transpose(1, 2) for _ in range(2))
    copies = []
    real = torch.Tensor.contiguous

    def counting(self, *args, **kw):
        if not self.is_contiguous(*args, **kw):
            copies.append(tuple(self.shape))
        return real(self, *args, **kw)

    with torch.no_grad():
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        monkeypatch.setattr(torch.Tensor, "contiguous", counting)
        out, _ = eft.attention_forward(torch.nn.Module(), q, k, v, eft.EinfuseMask(0).encode(), scaling=0.25)
    assert copies == [] and out.is_contiguous() and out.shape == (1, 21, 4, 16)
    assert _err(want.transpose(1, 2), out) < TOL


def test_static_cache_uses_the_offset_kernel():
    """A StaticCache's keys are a fixed buffer: the queries sit at the cache position, not at its end."""
    ref, ours = _models("llama")
    ids = _ids()
    with torch.no_grad():
        want = ref(ids).logits
        cache = transformers.StaticCache(config=ours.config, max_cache_len=40)
        chunks = [ours(ids[:, :6], past_key_values=cache).logits, ours(ids[:, 6:], past_key_values=cache).logits]
        assert _err(want, torch.cat(chunks, 1)) < TOL
        kw = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
                  attention_mask=torch.ones_like(ids), cache_implementation="static")
        ga, gb = ref.generate(ids, **kw), ours.generate(ids, **kw)
        assert torch.equal(ga.sequences, gb.sequences)
        assert max(_err(a, b) for a, b in zip(ga.logits, gb.logits)) < TOL
    assert any(k[-1] == "offset" for k in eft._KERNELS)


def _varlen_ran() -> bool:
    return any(getattr(k.compiled, "_varlen_kernel", None) is not None for k in eft._KERNELS.values())


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_run_as_packed_sequences(side):
    """Left or right padding is one run of real tokens per row: fn.varlen, equal to sdpa on real tokens."""
    ref, ours = _models("qwen2")
    ids = _ids(batch=3)
    pad = torch.ones_like(ids)
    if side == "left":
        pad[0, :3] = 0
        pad[2, :10] = 0  # one real token
    else:
        pad[0, 8:] = 0
        pad[1, 1:] = 0
    keep = pad.bool()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=pad).logits, ours(ids, attention_mask=pad).logits
    assert _err(want[keep], got[keep]) < TOL
    assert _varlen_ran()


def test_generation_from_a_left_padded_batch_with_a_window():
    """Mistral (window 7) generating from a left-padded prompt: every decode step's mask is padding."""
    ref, ours = _models("mistral")
    ids = _ids()
    pad = torch.ones_like(ids)
    pad[1, :4] = 0
    kw = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
              attention_mask=pad, pad_token_id=0)
    with torch.no_grad():
        ga, gb = ref.generate(ids, **kw), ours.generate(ids, **kw)
    assert torch.equal(ga.sequences, gb.sequences)
    assert max(_err(a, b) for a, b in zip(ga.logits, gb.logits)) < TOL
    assert _varlen_ran()


def test_padding_with_a_hole_runs_unfused_and_strict_mode_refuses_it():
    ref, ours = _models("qwen2")
    ids = _ids()
    pad = torch.ones_like(ids)
    pad[0, 4] = 0  # a hole: not one run of tokens
    keep = pad.bool()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=pad).logits, ours(ids, attention_mask=pad).logits
        assert _err(want[keep], got[keep]) < TOL
        eft.register(strict=True)
        try:
            with pytest.raises(CodegenError, match="padding with holes"):
                ours(ids, attention_mask=pad)
        finally:
            eft.register()


def test_mask_descriptor_round_trips_and_other_tensors_are_not_taken_for_it():
    m = eft.EinfuseMask(q_offset=17, window=5)
    assert eft.EinfuseMask.decode(m.encode()) == m
    assert eft.EinfuseMask.decode(eft.EinfuseMask(3).encode()) == eft.EinfuseMask(3)
    assert eft.EinfuseMask.decode(torch.zeros(1, 1, 1, 3, dtype=torch.int64)) is None
    assert eft.EinfuseMask.decode(torch.ones(2, 1, 4, 4, dtype=torch.bool)) is None


def test_dropout_is_refused():
    q = torch.zeros(1, 2, 3, 16)
    with pytest.raises(CodegenError, match="dropout"):
        eft.attention_forward(None, q, q, q, None, dropout=0.1)


def test_importing_einfuse_does_not_import_transformers():
    code = "import sys, einfuse, einfuse.integrations; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
