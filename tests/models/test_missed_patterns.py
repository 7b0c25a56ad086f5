"""Forms real models write that the patterns used to miss (issue 18), counted in whole tiny models:
T5's RMSNorm (the variance of `x.to(float32)`, the product on the uncast x: T5 and its many copies),
and RoPE with `q.float()` written once per product (ModernBERT, ESM)."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import tolerance

import mps_inductor_ext as mpsk


def t5() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                                num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    # Encoder: two norms per layer and a final one; decoder: three per layer and a final one.
    # Attention: self-attention per encoder layer, self- and cross-attention per decoder layer.
    return transformers.T5ForConditionalGeneration(cfg), {"rms_norm": 2 * 2 + 1 + 3 * 2 + 1, "attention": 2 + 2 * 2}


def modernbert() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.ModernBertConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, global_attn_every_n_layers=3, local_attention=8, attn_implementation="sdpa",
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    # q and k rotated with the same tables in every layer (one rope_qk); LayerNorms: embeddings,
    # attn_norm (an Identity in layer 0), mlp_norm, and the final one.
    return transformers.ModernBertModel(cfg), {"rope_qk": 3, "attention": 3, "layer_norm": 1 + 2 + 3 + 1}


def esm() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.EsmConfig(vocab_size=33, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, position_embedding_type="rotary", max_position_embeddings=64,
                                 pad_token_id=1, attn_implementation="sdpa")
    # Two LayerNorms per layer and the one after the encoder.
    return transformers.EsmModel(cfg), {"rope_qk": 2, "attention": 2, "layer_norm": 2 * 2 + 1}


@pytest.mark.slow
@pytest.mark.parametrize("build", [t5, modernbert, esm], ids=["t5", "modernbert", "esm"])
def test_every_site_is_replaced(build):
    torch.manual_seed(0)
    model, expected = build()
    model.eval()
    g = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(3, model.config.vocab_size, (1, 7), generator=g)}
    if build is t5:
        inputs["decoder_input_ids"] = torch.randint(3, 128, (1, 5), generator=g)
    torch._dynamo.reset()
    mpsk.reset_counters()
    with torch.no_grad(), mpsk.config.patch(emulate_metal=True):
        got = torch.compile(model, backend="mpsk")(**inputs)[0]
        ref = model(**inputs)[0]
    assert dict(mpsk.counters) == expected
    tol = tolerance(torch.float32)
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
