"""Tiny Hugging Face causal LMs from configs (random weights, nothing downloaded), and how many of
each replaceable subgraph their modeling code holds: shared by the model tests on the CPU emulator
(test_models.py) and on the emulated mps device (mps_device/test_models_mps.py)."""

from __future__ import annotations

import torch
import transformers

LAYERS, HIDDEN, HEADS, KV_HEADS, VOCAB = 2, 64, 4, 2, 128
WINDOW = 5  # Mistral's sliding window, shorter than the tests' lengths so that it masks keys
HEAD_DIM = HIDDEN // HEADS
FAMILIES = ("llama", "mistral", "gpt2", "qwen2", "qwen3", "gemma")

_DECODERS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
}


def build(name: str, impl: str, **overrides) -> torch.nn.Module:
    """A tiny model with random weights and every dropout at 0 (so training is deterministic)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; one of {FAMILIES}")
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  attn_implementation=impl)
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_positions=64, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0, **{**common, **overrides})
        return transformers.GPT2LMHeadModel(cfg)
    config_cls, model_cls = _DECODERS[name]
    extra = {"sliding_window": WINDOW} if name == "mistral" else {}
    if name in ("qwen3", "gemma"):
        extra["head_dim"] = HEAD_DIM
    cfg = config_cls(**{"intermediate_size": 2 * HIDDEN, "num_key_value_heads": KV_HEADS,
                        "max_position_embeddings": 64, "attention_dropout": 0.0, **common, **extra, **overrides})
    return model_cls(cfg)


def expected_counts(name: str, config) -> dict[str, int]:
    """Every replaceable instance in the model, read from transformers' modeling code.

    Llama / Mistral / Qwen2: each decoder layer has input_layernorm and post_attention_layernorm
    (the HF RMSNorm form) and the model a final norm; apply_rotary_pos_emb rotates q and k with
    the same tables, one rope_qk per layer; one attention per layer (SDPA, or eager matmul-softmax-matmul with
    repeat_kv for the 2 KV heads). Qwen3 adds q_norm and k_norm (RMSNorm over the head dim) per
    layer. Gemma's RMSNorm scales by (1 + weight), the weight-offset form. GPT-2: ln_1 and ln_2
    per block and ln_f (nn.LayerNorm), one attention per block, learned positions (no RoPE). The
    eager attention's softmax is part of its attention, and nothing else takes a softmax, so no
    softmax is replaced on its own.

    Of those norms, every one that reads a residual sum is the fused add_rms_norm / add_layer_norm:
    post_attention_layernorm (ln_2) after `residual + attn`, the next layer's input_layernorm
    (ln_1) after `residual + mlp`, and the final norm after the last layer's: two per layer. The
    first layer's input norm reads the embedding (GPT-2: through the embedding dropout) and stays
    a plain norm, as do q_norm and k_norm.
    """
    layers = config.num_hidden_layers
    if name == "gpt2":
        return {"layer_norm": 1, "add_layer_norm": 2 * layers, "attention": layers}
    plain = 2 * layers + 1 if name == "qwen3" else 1
    return {"rms_norm": plain, "add_rms_norm": 2 * layers, "rope_qk": layers, "attention": layers}
