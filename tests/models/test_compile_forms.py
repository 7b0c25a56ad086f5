"""The torch.compile forms Hugging Face users compile with (issue 18): `dynamic=True` lifts the models'
float attributes (RMSNorm's `variance_epsilon`, the attention `scaling`) to symbolic graph inputs and
makes Dynamo trace twice (AOTAutograd's tensorify pass restarts the analysis); every site must still
be replaced, counted once, and reported without the abandoned attempt's near misses."""

from __future__ import annotations

import collections

import pytest
import torch
import transformers
from helpers import tolerance
from hf_models import HEAD_DIM, HEADS, HIDDEN, KV_HEADS, LAYERS, VOCAB, build, expected_counts  # noqa: I001

import mps_inductor_ext as mpsk
from mps_inductor_ext.diagnostics import Collector

TOL = tolerance(torch.float32)


def gemma3() -> torch.nn.Module:
    """Gemma 3's text model: four norms per layer, q/k norms, (1 + w) weights, sliding windows."""
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=64,
        sliding_window=5, query_pre_attn_scalar=HEAD_DIM, attn_implementation="sdpa")
    return transformers.Gemma3ForCausalLM(cfg)


def model_and_counts(name: str) -> tuple[torch.nn.Module, dict[str, int]]:
    if name == "gemma3":
        model = gemma3()
        layers = model.config.num_hidden_layers
        # pre_feedforward_layernorm and the next input_layernorm (or the final norm) read residual
        # sums; input_layernorm of layer 0, post_attention / post_feedforward and q/k norms do not.
        return model, {"rms_norm": 4 * layers + 1, "add_rms_norm": 2 * layers, "rope_qk": layers,
                       "attention": layers}
    model = build(name, "sdpa")
    return model, expected_counts(name, model.config)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma3"])
def test_dynamic_true_replaces_every_site_once(name):
    model, expected = model_and_counts(name)
    model.eval()
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(5))
    torch._dynamo.reset()
    mpsk.reset_counters()
    with torch.no_grad(), mpsk.config.patch(emulate_metal=True), Collector(backend="mpsk") as collector, \
            torch._inductor.config.patch(fx_graph_cache=False):
        got = torch.compile(model, backend="mpsk", dynamic=True)(ids).logits
    assert dict(mpsk.counters) == expected  # the abandoned first attempt is not counted
    report = collector.report()
    replaced = collections.Counter(r.kind for g in report.graphs for r in g.replacements)
    replaced["rope"] -= 2 * replaced["rope_qk"]  # the report lists the ropes each rope_qk then fused
    assert dict(+replaced) == expected
    stale = [m for g in report.graphs for m in g.near_misses if m.kind in expected]
    assert stale == []  # no near miss of the abandoned attempt for sites that were replaced
    with torch.no_grad():
        torch.testing.assert_close(got, model(ids).logits, rtol=TOL, atol=TOL)


@pytest.mark.slow
def test_autocast_replaces_rope_and_attention_of_mixed_dtypes():
    """fp32 weights under bf16 autocast: q and k leave their Linear in bf16 while cos and sin stay fp32
    (RoPE computes in the promoted fp32), and SDPA gets fp32 q/k beside a bf16 v, which autocast casts
    to bf16. The replacements reproduce both: every site is taken, and the logits are autocast's."""
    model, expected = model_and_counts("llama")
    model.eval()
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(6))
    torch._dynamo.reset()
    mpsk.reset_counters()
    with torch.no_grad(), mpsk.config.patch(emulate_metal=True), torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.compile(model, backend="mpsk")(ids).logits
        ref = model(ids).logits
    # Each residual add sums the fp32 residual stream with a bf16 block output: mixed dtypes, which the
    # fused add_rms_norm declines (a near miss), so every norm is a plain one here.
    fused = expected.pop("add_rms_norm")
    expected["rms_norm"] += fused
    assert dict(mpsk.counters) == expected
    assert got.dtype == ref.dtype == torch.bfloat16
    bf16 = tolerance(torch.bfloat16)
    torch.testing.assert_close(got.float(), ref.float(), rtol=bf16, atol=bf16)
