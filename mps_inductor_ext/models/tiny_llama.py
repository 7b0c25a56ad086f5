"""A Llama-style decoder written the way Hugging Face writes it, so the demo exercises the
forms the mpsk patterns must recognize in real models: RMSNorm in the HF form (fp32 upcast,
mean of squares, rsqrt, cast back, weight), rotate_half RoPE on q and k, grouped-query
attention through F.scaled_dot_product_attention(is_causal=True, enable_gqa=True), and a
SwiGLU MLP. With a `KVCache` it decodes as Hugging Face's static cache does: keys and values are
written in place at the tokens' positions, and attention reads the whole cache under a mask.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class TinyLlamaConfig:
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class KVCache(nn.Module):
    """Static key/value buffers, (batch, kv_heads, max_len, head_dim) per layer, of one sequence batch."""

    def __init__(self, cfg: TinyLlamaConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        super().__init__()
        if batch < 1 or max_len < 1:
            raise ValueError(f"KVCache needs batch >= 1 and max_len >= 1, got {batch}, {max_len}")
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.max_len = max_len
        for i in range(cfg.num_layers):
            self.register_buffer(f"k{i}", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
            self.register_buffer(f"v{i}", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Writes k and v (batch, kv_heads, s, head_dim) at `positions`; returns the whole cache."""
        ck, cv = getattr(self, f"k{layer}"), getattr(self, f"v{layer}")
        ck.index_copy_(2, positions, k)
        cv.index_copy_(2, positions, v)
        return ck, cv


class Attention(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        d, h, kv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        self.head_dim = d
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            k, v = cache.update(layer, k, v, positions)
            mask = torch.arange(cache.max_len, device=x.device)[None, :] <= positions[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, positions)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLlama(nn.Module):
    """input_ids (B, S) -> logits (B, S, vocab)."""

    def __init__(self, cfg: TinyLlamaConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or TinyLlamaConfig()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        d = cfg.head_dim
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2).float() / d), persistent=False)

    def expected_replacements(self) -> dict[str, int]:
        """What backend="mpsk" should replace, from the structure: two RMSNorms per layer and the
        final one, RoPE of q and k with the same tables (one rope_qk), one attention per layer. Every
        norm but the first reads a residual sum (`x + attn`, `x + mlp`), so it is an add_rms_norm; the first reads the
        embedding."""
        n = self.config.num_layers
        return {"rms_norm": 1, "add_rms_norm": 2 * n, "rope_qk": n, "attention": n}

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Without a cache, the whole sequence from position 0. With one, `positions` (int64, one per
        token: prefill 0..s-1, then one position per decode step) say where the tokens go."""
        if (cache is None) != (positions is None):
            raise ValueError("TinyLlama: pass cache and positions together, or neither")
        x = self.embed_tokens(input_ids)
        if positions is None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.float32)
        else:
            pos = positions.to(torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[None, None], emb.sin().to(x.dtype)[None, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, positions)
        return self.lm_head(self.norm(x))
