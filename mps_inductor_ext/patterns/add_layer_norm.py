"""`h = x + residual; y = layer_norm(h)` -> mpsk::add_layer_norm (patterns/residual_norm.py), for
every LayerNorm the layer_norm pattern recognizes (nn.LayerNorm, F.layer_norm; GPT-2's ln_2, ln_1
after the first block, ln_f)."""

from __future__ import annotations

import torch
from torch.fx import Node

from . import NearMiss, Rewrite
from .layer_norm import find
from .residual_norm import fuse

KIND = "add_layer_norm"


def match(node: Node) -> Rewrite | NearMiss | None:
    return fuse(find(node), KIND, torch.ops.mpsk.add_layer_norm.default)
