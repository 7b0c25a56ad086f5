"""`h = x + residual; y = rms_norm(h)` -> mpsk::add_rms_norm (patterns/residual_norm.py), for every
RMSNorm form the rms_norm pattern recognizes (HF Llama / Mistral / Qwen / Gemma's weight offset,
nn.RMSNorm, F.rms_norm)."""

from __future__ import annotations

import torch
from torch.fx import Node

from . import NearMiss, Rewrite
from .residual_norm import fuse
from .rms_norm import find

KIND = "add_rms_norm"


def match(node: Node) -> Rewrite | NearMiss | None:
    return fuse(find(node), KIND, torch.ops.mpsk.add_rms_norm.default)
