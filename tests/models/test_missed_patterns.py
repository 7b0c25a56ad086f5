"""Forms real models write that the patterns used to miss (issue 18), counted in whole tiny models:
T5's RMSNorm (the variance of `x.to(float32)`, the product on the uncast x: T5 and its many copies),
RoPE with `q.float()` written once per product (ModernBERT, ESM), Cohere's written-out LayerNorm,
DeepSeek V3's interleaved-pair and V2's complex-number RoPE, and OLMo2's fp32 cos/sin with bf16 q/k."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import tolerance

import mps_inductor_ext as mpsk


def t5() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                                num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    # Encoder: two norms per layer and a final one; decoder: three per layer and a final one; each
    # stack's first norm reads its embedding, every other one a residual sum (add_rms_norm).
    # Attention: self-attention per encoder layer, self- and cross-attention per decoder layer.
    return transformers.T5ForConditionalGeneration(cfg), {"rms_norm": 2, "add_rms_norm": 2 * 2 + 3 * 2,
                                                          "attention": 2 + 2 * 2}


def modernbert() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.ModernBertConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, global_attn_every_n_layers=3, local_attention=8, attn_implementation="sdpa",
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    # q and k rotated with the same tables in every layer (one rope_qk); LayerNorms: embeddings,
    # attn_norm (an Identity in layer 0), mlp_norm, and the final one; all but the embeddings' read
    # a residual sum (add_layer_norm).
    return transformers.ModernBertModel(cfg), {"rope_qk": 3, "attention": 3, "layer_norm": 1,
                                               "add_layer_norm": 2 + 3 + 1}


def esm() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.EsmConfig(vocab_size=33, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, position_embedding_type="rotary", max_position_embeddings=64,
                                 pad_token_id=1, attn_implementation="sdpa")
    # Two LayerNorms per layer and the one after the encoder; all but the first read a residual sum.
    return transformers.EsmModel(cfg), {"rope_qk": 2, "attention": 2, "layer_norm": 1, "add_layer_norm": 2 * 2}


def cohere() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.CohereConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    attn_implementation="sdpa", pad_token_id=0, eos_token_id=2, bos_token_id=1)
    # CohereLayerNorm: one per layer (attention and MLP run in parallel on it) and the final one; all
    # but the first read the residual sum x + attn + mlp (add_layer_norm).
    return transformers.CohereForCausalLM(cfg), {"layer_norm": 1, "add_layer_norm": 2, "rope_qk": 2, "attention": 2}


def _deepseek(config_cls, model_cls, **extra) -> torch.nn.Module:
    cfg = config_cls(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                     num_hidden_layers=2, first_k_dense_replace=2, num_attention_heads=4, num_key_value_heads=4,
                     max_position_embeddings=64, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                     qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                     attn_implementation="sdpa", pad_token_id=0, **extra)
    return model_cls(cfg)


# DeepSeek (MLA, dense MLPs): q's and k's rotary parts per layer; RMSNorms: input, post-attention and
# kv_a_layernorm per layer, and the final one.
# Every norm but layer 0's input norm and the kv_a norms reads a residual sum (add_rms_norm). The
# DeepSeek RoPE rewrites build each call's tables themselves, so rope_qk does not pair q and k (yet).
DEEPSEEK = {"rope": 2 * 2, "attention": 2, "rms_norm": 1 + 2, "add_rms_norm": 2 + 2}


def deepseek_v3() -> tuple[torch.nn.Module, dict]:
    model = _deepseek(transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM, n_group=1, topk_group=1)
    assert model.config.rope_interleave  # apply_rotary_pos_emb_interleave
    return model, DEEPSEEK


def deepseek_v2() -> tuple[torch.nn.Module, dict]:
    return _deepseek(transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM), DEEPSEEK


def olmo2() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.Olmo2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attn_implementation="sdpa", pad_token_id=0)
    # Run in bf16, where the rotary embedding's cos/sin stay fp32: q and k are rotated in fp32 and cast
    # back. RMSNorms: q_norm and k_norm (over the whole projection), post-attention and
    # post-feedforward per layer (norms of sublayer outputs, added to the residual after), and the
    # final one, which reads the last residual sum (add_rms_norm).
    return transformers.Olmo2ForCausalLM(cfg).to(torch.bfloat16), {"rope_qk": 2, "attention": 2,
                                                                     "rms_norm": 4 * 2, "add_rms_norm": 1}


def gemma2() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=64, sliding_window=4, attn_implementation="eager",
                                    pad_token_id=0)
    assert cfg.attn_logit_softcapping  # tanh between the scores and the softmax, in every layer
    # RMSNorms (1 + w): input, post-attention, pre- and post-feedforward per layer, and the final one.
    # Residual sums feed pre-feedforward, the next input norm and the final one (add_rms_norm).
    return transformers.Gemma2ForCausalLM(cfg), {"attention": 2, "rope_qk": 2, "rms_norm": 1 + 2 * 2,
                                                 "add_rms_norm": 2 + 1 + 1}


def falcon() -> tuple[torch.nn.Module, dict]:
    cfg = transformers.FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    alibi=False, new_decoder_architecture=False, parallel_attn=True, bias=False,
                                    max_position_embeddings=64, attn_implementation="eager", pad_token_id=0)
    # Eager attention divides the scores in place (`scores /= sqrt(d)`). LayerNorms: one per layer
    # (attention and MLP in parallel on it) and the final one; all but the first read a residual sum.
    return transformers.FalconForCausalLM(cfg), {"attention": 2, "rope_qk": 2, "layer_norm": 1, "add_layer_norm": 2}


MODELS = [t5, modernbert, esm, cohere, deepseek_v3, deepseek_v2, olmo2, gemma2, falcon]


@pytest.mark.slow
@pytest.mark.parametrize("build", MODELS, ids=[build.__name__ for build in MODELS])
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
    tol = tolerance(got.dtype)
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)
