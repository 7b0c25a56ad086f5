"""The attention function transformers calls under `attn_implementation="mpsk"`.

It takes what transformers' SDPA integration takes (module, q, k, v in (B, H, S, D), the mask
built by the mask function registered under the same name, dropout, scaling, is_causal, T5's
position_bias, the sliding window, Gemma 2's logit softcap) and runs `mpsk::attention`: GQA by index (k/v keep their own
heads, nothing is repeated), the causal flag when no mask is needed, and a boolean or additive mask
read in place through its broadcast strides (padding, sliding window, bias). What the kernel
cannot take runs transformers' SDPA integration instead (dropout), or the model's own eager attention
for what SDPA cannot take either (attention weights, sinks); each reason is noted once.
"""

from __future__ import annotations

import logging
import sys

import torch

from ..ops.attention import MAX_HEAD_DIM
from ..ops.common import METAL_DTYPES

NAME = "mpsk"
log = logging.getLogger(__name__)
_noted: set[str] = set()
calls = {"kernel": 0, "fallback": 0}  # how often each path ran (tests read it)


def _note_once(reason: str, target: str) -> None:
    if reason not in _noted:
        _noted.add(reason)
        log.warning("mpsk attention: %s; using %s attention for such calls", reason, target)


def _kernel_refusal(query, key, value, attention_mask, dropout, kwargs) -> str | None:
    """Why mpsk::attention cannot compute this call as transformers means it, or None."""
    if dropout and dropout > 0:
        return "attention dropout > 0 (training with attention_dropout) has no kernel"
    if query.dtype not in METAL_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"q/k/v dtypes {query.dtype}/{key.dtype}/{value.dtype} have no kernel"
    if max(query.shape[-1], value.shape[-1]) > MAX_HEAD_DIM:
        return f"head dims above {MAX_HEAD_DIM} have no kernel"
    if key.shape[1] == 0 or query.shape[1] % key.shape[1]:
        return "q heads are not a multiple of k/v heads"
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        return f"a {type(attention_mask).__name__} mask has no kernel"
    return None


def _eager_only(kwargs) -> str | None:
    if kwargs.get("output_attentions"):
        return "output_attentions=True needs the attention weights, which neither the kernel nor SDPA returns"
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        return "attention sinks have no kernel (nor SDPA)"
    return None


def _fallback(reason: str, module, *args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls["fallback"] += 1
    if _eager_only(kwargs):
        eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if eager is not None:
            _note_once(reason, "the model's eager")
            return eager(module, *args, **kwargs)
    _note_once(reason, "SDPA")
    return sdpa_attention_forward(module, *args, **kwargs)


def mpsk_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention-interface signature; returns the (B, S, H, Dv) output and None (the
    eager fallback returns the attention weights there)."""
    reason = _eager_only(kwargs) or _kernel_refusal(query, key, value, attention_mask, dropout, kwargs)
    if reason is not None:
        return _fallback(reason, module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                         is_causal=is_causal, position_bias=position_bias, **kwargs)
    calls["kernel"] += 1
    q_len = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # As transformers' SDPA path: the causal flag only without a mask and for more than one query (the
    # kernel's causal mask is top-left aligned, right when Sq == Skv); a prefill into an empty static
    # cache crops the keys to the queries.
    is_causal = bool(q_len > 1 and attention_mask is None and is_causal)
    if is_causal and key.shape[2] > q_len:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        position_bias = None if position_bias is None else position_bias[..., :q_len]
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal, query, key)
        is_causal = False
    window = kwargs.get("sliding_window")
    # With a mask the window is already in it (transformers' sliding-window mask function); without one
    # the keys are no more than the window (else no mask is skipped), so the flag changes nothing there.
    window = int(window) if is_causal and isinstance(window, int) and window > 0 else -1
    softcap = float(kwargs.get("softcap") or 0.0)  # Gemma 2: cap * tanh(scores / cap) before the mask
    out = torch.ops.mpsk.attention(query, key, value, attention_mask, scaling, is_causal, window, softcap)
    return out.transpose(1, 2).contiguous(), None
