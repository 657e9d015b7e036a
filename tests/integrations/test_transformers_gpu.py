"""einfuse as Hugging Face attention on a real GPU (``pytest -m gpu``): small random Llama and
Mistral models (prompts past a tile and past the window, GQA), prefill logits and greedy decoding
over a KV cache against transformers' sdpa, fp32 to 1e-4 and bf16 to 2e-2."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import einfuse.integrations.transformers as eft  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
COMMON = dict(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
              num_key_value_heads=2, head_dim=64, max_position_embeddings=1024)


def _models(name: str, dtype):
    eft.register()
    t = transformers
    cfg, cls = ((t.LlamaConfig(**COMMON), t.LlamaForCausalLM) if name == "llama" else
                (t.MistralConfig(**COMMON, sliding_window=64), t.MistralForCausalLM))
    torch.manual_seed(0)
    ref = cls(copy.deepcopy(cfg)).to("cuda", dtype).eval()
    ours = cls(copy.deepcopy(cfg)).to("cuda", dtype).eval()
    ours.load_state_dict(ref.state_dict())
    ref.set_attn_implementation("sdpa")
    ours.set_attn_implementation(eft.NAME)
    return ref, ours


def _err(a, b) -> float:
    return float((a.float() - b.float()).norm() / a.float().norm())


# fp32 decode steps: the split-KV decode kernel multiplies fp32 exactly ('ieee', as the prefill
# kernel does), so every step is held to the 1e-4
@pytest.mark.parametrize("name", ["llama", "mistral"])
@pytest.mark.parametrize("dtype,tol,step_tol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 2e-2, 2e-2)])
def test_prefill_and_decode_steps_match_sdpa(name, dtype, tol, step_tol):
    ref, ours = _models(name, dtype)
    ids = torch.randint(0, COMMON["vocab_size"], (2, 301), device="cuda",
                        generator=torch.Generator(device="cuda").manual_seed(1))
    with torch.no_grad():
        a, b = ref(ids, use_cache=True), ours(ids, use_cache=True)
        assert _err(a.logits, b.logits) < tol
        ca, cb = a.past_key_values, b.past_key_values
        tok = a.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(12):  # teacher-forced on sdpa's tokens: every step's logits
            a, b = ref(tok, past_key_values=ca), ours(tok, past_key_values=cb)
            assert _err(a.logits, b.logits) < step_tol
            ca, cb, tok = a.past_key_values, b.past_key_values, a.logits[:, -1].argmax(-1, keepdim=True)


def test_a_gpu_prefill_call_copies_no_tensor(monkeypatch):
    eft.register()
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(2, 300, 8, 64, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    k, v = (torch.randn(2, 300, 2, 64, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
            for _ in range(2))
    copies = []
    real = torch.Tensor.contiguous

    def counting(self, *args, **kw):
        if not self.is_contiguous(*args, **kw):
            copies.append(tuple(self.shape))
        return real(self, *args, **kw)

    with torch.no_grad():
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        monkeypatch.setattr(torch.Tensor, "contiguous", counting)
        out, _ = eft.attention_forward(torch.nn.Module(), q, k, v, eft.EinfuseMask(0).encode(), scaling=0.125)
    assert copies == [] and out.is_contiguous() and out.shape == (2, 300, 8, 64)
    assert _err(want.transpose(1, 2), out) < 2e-2
