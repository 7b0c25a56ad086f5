"""A local mapping for the `kernels` package's `kernelize()`: transformers' hub-kernel layers on mpsk ops.

transformers decorates layers with `use_kernel_forward_from_hub(name)` (each modeling file's
`*RMSNorm` as "RMSNorm", and from 5.25 its `apply_rotary_pos_emb` as "rotary_pos_emb"). With a
mapping registered (`kernels.use_kernel_mapping(kernel_mapping())`), `kernelize(model, mode=...,
device="mps")` swaps their forwards for the layers here; nothing is downloaded: a mapping entry is
any object with `load() -> nn.Module class`, and ours returns a class defined in this module.

kernels requires a replacement layer to be stateless (no constructor, no members beyond nn.Module's)
with the forward signature of the layer it replaces (for a decorated function, the function's own,
here transformers' `(q, k, cos, sin, unsqueeze_dim=1)`; kernelize refuses a model whose function has
another), so each forward reads the replaced module's own attributes and calls a module-level
function. Whatever the op cannot take (another dtype or form) runs the math the layer had: Llama's
RMSNorm, or the function the rotary wrapper holds.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..ops.common import METAL_DTYPES
from . import rotary

DEVICE = "mps"


def _rms_norm(module: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm (every transformers layer registered as "RMSNorm" computes it) on mpsk::rms_norm."""
    weight, eps = module.weight, module.variance_epsilon
    if (hidden_states.dtype in METAL_DTYPES and weight.dtype == hidden_states.dtype and weight.dim() == 1
            and weight.shape[0] == hidden_states.shape[-1] and weight.device == hidden_states.device):
        return torch.ops.mpsk.rms_norm(hidden_states, weight, float(eps), 0.0)
    dtype = hidden_states.dtype
    h = hidden_states.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


@functools.cache
def _rope_spec(fn) -> rotary.RopeSpec | str:
    return rotary.recognize(fn)


def _rope(module: nn.Module, q, k, cos, sin, unsqueeze_dim: int):
    """transformers' apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim) on mpsk::rope when the wrapped
    function computes a rotation the op has (probed once per function) and the call is one it takes."""
    fn = rotary.hub_kernel_function(module)
    spec = _rope_spec(fn) if fn is not module else "not a kernels hub wrapper"
    if isinstance(spec, rotary.RopeSpec) and unsqueeze_dim == 1 and rotary.takes(q, k, cos, sin, spec):
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return torch.ops.mpsk.rope(q, cos, sin, spec.interleaved), torch.ops.mpsk.rope(k, cos, sin, spec.interleaved)
    return fn(q, k, cos, sin, unsqueeze_dim)


class MpskRMSNorm(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states):
        return _rms_norm(self, hidden_states)


class MpskRotaryPosEmb(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, q, k, cos, sin, unsqueeze_dim=1):
        return _rope(self, q, k, cos, sin, unsqueeze_dim)


class LocalLayer:
    """A `kernels` repository entry that loads a layer class of this package (no download)."""

    def __init__(self, layer: type[nn.Module]):
        if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
            raise TypeError(f"LocalLayer needs an nn.Module class, got {layer!r}")
        self.layer = layer
        self.layer_name = layer.__name__

    def load(self) -> type[nn.Module]:
        return self.layer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalLayer) and other.layer is self.layer

    def __hash__(self) -> int:
        return hash(self.layer)

    def __str__(self) -> str:
        return f"mps_inductor_ext layer `{self.layer_name}`"


def kernel_mapping() -> dict[str, dict[str, LocalLayer]]:
    """The mapping for `kernels.use_kernel_mapping` / `register_kernel_mapping`: transformers' "RMSNorm"
    and "rotary_pos_emb" layers on the "mps" device, every mode (the ops have autograd and compile)."""
    return {"RMSNorm": {DEVICE: LocalLayer(MpskRMSNorm)},
            "rotary_pos_emb": {DEVICE: LocalLayer(MpskRotaryPosEmb)}}
