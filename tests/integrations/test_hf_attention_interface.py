"""transformers' attention interface under the name "mpsk": `attn_implementation="mpsk"` runs
mpsk::attention (GQA by index, causal, sliding window, padding masks), with the mask function
registered under the same name; what the kernel cannot take runs SDPA (or the model's eager
attention) with a one-time note."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import emulated_metal, launched_variants  # noqa: F401 (emulated_metal: a fixture)
from helpers import kernel_counts as kernels

import mps_inductor_ext as mpsk
from mps_inductor_ext.integrations import hf_attention

transformers = pytest.importorskip("transformers")

import hf_models  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS  # noqa: E402

pytestmark = pytest.mark.usefixtures("emulated_metal")


def test_importing_the_package_registers_mpsk_without_importing_transformers():
    script = textwrap.dedent("""
        import sys
        import mps_inductor_ext
        assert "transformers" not in sys.modules, "importing mps_inductor_ext imported transformers"
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
        from mps_inductor_ext.integrations.hf_attention import mpsk_attention_forward
        assert AttentionInterface._global_mapping["mpsk"] is mpsk_attention_forward
        assert "mpsk" in AttentionMaskInterface._global_mapping
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


class Attn(torch.nn.Module):
    """What transformers' attention functions read from the calling module."""

    def __init__(self, groups: int, is_causal: bool = True):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, is_causal


def qkv(sq: int = 6, skv: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, sq, 16, generator=gen), torch.randn(2, 2, skv, 16, generator=gen),
            torch.randn(2, 2, skv, 16, generator=gen))


CASES = {
    "causal": dict(mask=None),
    "padding-mask": dict(mask=torch.tensor([[False, False, True, True, True, True], [True] * 6])[:, None, None, :]
                         & torch.ones(6, 6, dtype=torch.bool).tril()),
    "position-bias": dict(mask=None, position_bias=torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3))),
    "decode-with-cache": dict(mask=None, sq=1, skv=6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_function_computes_what_transformers_sdpa_computes(case):
    spec = dict(CASES[case])
    q, k, v = qkv(spec.pop("sq", 6), spec.pop("skv", 6))
    mask = spec.pop("mask")
    module = Attn(groups=2)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25, **spec)
    before = dict(hf_attention.calls)
    with launched_variants() as seen:
        got, weights = hf_attention.mpsk_attention_forward(module, q, k, v, mask, scaling=0.25, **spec)
    assert weights is None and got.shape == want.shape == (2, q.shape[2], 4, 16)
    assert sum(n for name, n in kernels(seen).items() if name.startswith("attn_")) == 1
    assert hf_attention.calls["kernel"] == before["kernel"] + 1
    rows = slice(None) if case != "padding-mask" else (1, slice(None))  # row 0's first queries see no key
    torch.testing.assert_close(got[rows], want[rows], rtol=1e-5, atol=1e-5)


def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, softcap=None, **kwargs):
    """A modeling file's eager attention (the fallback for what neither the kernel nor SDPA takes)."""
    scores = torch.tanh(query @ key.repeat_interleave(2, 1).transpose(-1, -2) * scaling / softcap) * softcap
    weights = scores.softmax(-1)
    return (weights @ value.repeat_interleave(2, 1)).transpose(1, 2), weights


def test_what_the_kernel_cannot_take_falls_back_with_one_note(caplog):
    q, k, v = qkv()
    module = Attn(groups=2)
    hf_attention._noted.clear()

    def dropped(fn):
        torch.manual_seed(5)  # the same dropout draws for both
        return fn(module, q, k, v, None, dropout=0.5, scaling=0.25)[0]

    with caplog.at_level(logging.WARNING, logger=hf_attention.__name__), launched_variants() as seen:
        drop = [dropped(hf_attention.mpsk_attention_forward) for _ in range(2)]
        _, weights = hf_attention.mpsk_attention_forward(module, q, k, v, None, scaling=0.25, softcap=5.0,
                                                         output_attentions=True)
    assert not seen
    assert all(torch.equal(out, dropped(sdpa_attention_forward)) for out in drop)
    assert weights is not None  # the eager attention's weights, which SDPA would not return
    notes = [r.getMessage() for r in caplog.records if r.name == hf_attention.__name__]
    assert notes == [
        "mpsk attention: attention dropout > 0 (training with attention_dropout) has no kernel; using SDPA "
        "attention for such calls",
        "mpsk attention: output_attentions=True needs the attention weights, which neither the kernel nor SDPA "
        "returns; using the model's eager attention for such calls",
    ]


def test_gemma2_softcapping_runs_the_kernel():
    q, k, v = qkv()
    module = Attn(groups=2, is_causal=False)  # as the eager reference below: no mask at all
    before = dict(hf_attention.calls)
    with launched_variants() as seen:
        got, weights = hf_attention.mpsk_attention_forward(module, q, k, v, None, scaling=0.25, softcap=5.0)
    assert weights is None and hf_attention.calls["kernel"] == before["kernel"] + 1
    assert sum(n for name, n in kernels(seen).items() if name.startswith("attn_")) == 1
    want = eager_attention_forward(module, q, k, v, None, scaling=0.25, softcap=5.0)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# Model level: a left-padded batch through tiny Llama and Mistral (sliding window 5 < the length).

def left_padded():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, hf_models.VOCAB, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    ids[0, :3] = 0
    return ids, mask


def pair(name: str):
    ref = hf_models.build(name, "sdpa").eval()
    model = hf_models.build(name, "mpsk").eval()
    model.load_state_dict(ref.state_dict())
    assert model.config._attn_implementation == "mpsk"
    return ref, model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_padded_batch_logits_equal_sdpa_on_real_tokens(name):
    ref_model, model = pair(name)
    ids, mask = left_padded()
    with torch.no_grad():
        want = ref_model(ids, attention_mask=mask).logits
        with launched_variants() as seen:
            got = model(ids, attention_mask=mask).logits
    assert kernels(seen) == {"attn_prefill_float": hf_models.LAYERS}
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_padded_batch_needs_the_mask_function_registered_too(name):
    """Why the mask function is registered: without it transformers hands the attention no mask at all."""
    ref_model, model = pair(name)
    ids, mask = left_padded()
    registered = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.pop("mpsk")
    try:
        with torch.no_grad():
            got = model(ids, attention_mask=mask).logits
    finally:
        ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["mpsk"] = registered
    with torch.no_grad():
        want = ref_model(ids, attention_mask=mask).logits
    assert (got[0, 3:] - want[0, 3:]).abs().max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_greedy_generate_gives_sdpa_tokens(name):
    ref_model, model = pair(name)
    ids, mask = left_padded()
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = ref_model.generate(ids, **settings)
        with launched_variants() as seen:
            got = model.generate(ids, **settings)
    launched = kernels(seen)
    assert launched["attn_prefill_float"] == hf_models.LAYERS and launched["attn_decode_float"] > 0
    assert torch.equal(got, want)


@pytest.mark.slow
def test_set_attn_implementation_switches_a_built_model():
    model = hf_models.build("llama", "sdpa").eval()
    ids, mask = left_padded()
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("mpsk")
        with launched_variants() as seen:
            got = model(ids, attention_mask=mask).logits
    assert kernels(seen) == {"attn_prefill_float": hf_models.LAYERS}
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-4, atol=1e-4)


def test_gemma2_under_patch_runs_its_softcapped_attention_on_the_kernel():
    """transformers allows Gemma 2 only eager attention (SDPA has no softcap); "mpsk" takes it whole."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=64, sliding_window=4, attn_implementation="eager",
                                    pad_token_id=0, attn_logit_softcapping=5.0)
    model = transformers.Gemma2ForCausalLM(cfg).eval()
    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), mpsk.config.patch(emulate_metal=True):
        ref = model(ids).logits
        report = mpsk.patch(model)
        before = dict(hf_attention.calls)
        got = model(ids).logits
        mpsk.unpatch(model)
    assert sum(s.kind == "attention" for s in report.patched) == 2
    assert hf_attention.calls == {"kernel": before["kernel"] + 2, "fallback": before["fallback"]}
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
