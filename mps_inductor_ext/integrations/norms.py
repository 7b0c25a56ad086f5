"""Recognizing last-dimension norm modules by what they compute, and their forwards on mpsk ops.

torch's nn.LayerNorm and nn.RMSNorm are known by class. Any other leaf module with a 1-D `weight`
and a float eps attribute (`variance_epsilon`, `eps`, `epsilon`: the HF `*RMSNorm`s, Gemma's
`1 + w` form, T5LayerNorm, Cohere-style bias-free LayerNorms) is run once on a small fp32 probe
with random weights and compared with the ops' reference math, which decides the op and the
weight offset: a class name alone would not tell Gemma's `(1 + w)` from Llama's `w`, and a
module that only looks like a norm is reported instead of silently replaced.

The probe is fp32: where a module rounds in half precision at a different step than the kernel
(Llama casts before multiplying by the weight, the kernel rounds once), half-precision outputs
differ by that rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.common import METAL_DTYPES
from ..ops.norm import layer_norm_reference, rms_norm_reference
from .swap import original_forward

EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")
PROBE_TOL = 1e-5


@dataclass(frozen=True)
class NormSpec:
    """How a recognized norm maps onto an op: which op, where its eps lives, Gemma's offset."""

    kind: str  # "rms_norm" or "layer_norm"
    eps_attr: str
    weight_offset: float = 0.0

    def describe(self) -> str:
        offset = f", weight_offset={self.weight_offset:g}" if self.weight_offset else ""
        return f"mpsk.{self.kind}(eps from .{self.eps_attr}{offset})"


def _is_float(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _dtype_reason(*tensors: torch.Tensor | None) -> str | None:
    for t in tensors:
        if t is not None and t.dtype not in METAL_DTYPES:
            return f"parameters are {t.dtype}, which has no Metal kernel"
    return None


def _torch_norm(module: nn.Module, kind: str) -> NormSpec | str:
    if len(module.normalized_shape) != 1:
        return f"normalizes over the last {len(module.normalized_shape)} dimensions; the kernel takes one"
    if not (module.eps is None and kind == "rms_norm") and not _is_float(module.eps):
        return f"eps is a {type(module.eps).__name__}, not a float"
    return _dtype_reason(module.weight, getattr(module, "bias", None)) or NormSpec(kind, "eps")


def _probe(module: nn.Module, eps: float, has_bias: bool) -> NormSpec | str:
    """Runs the module's own forward on fp32 random data and names the op whose math it matches."""
    n = module.weight.numel()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, n, generator=gen) * 2 + 0.5  # a non-zero mean tells layer_norm from rms_norm
    params = {"weight": torch.randn(n, generator=gen)}
    if has_bias:
        params["bias"] = torch.randn(n, generator=gen)
    try:
        with torch.no_grad():
            got = torch.func.functional_call(module, params, (x,))
    except Exception as exc:  # the module is not a one-argument norm: report it, do not patch
        return f"probe call failed ({type(exc).__name__}: {exc})"
    if not isinstance(got, torch.Tensor) or got.shape != x.shape or got.dtype != x.dtype:
        return "its output is not a tensor shaped and typed like its input"
    eps_attr = next(a for a in EPS_ATTRS if hasattr(module, a))
    candidates = [NormSpec("layer_norm", eps_attr)]
    refs = [layer_norm_reference(x, params["weight"], params.get("bias"), eps)]
    if not has_bias:
        candidates += [NormSpec("rms_norm", eps_attr), NormSpec("rms_norm", eps_attr, 1.0)]
        refs += [rms_norm_reference(x, params["weight"], eps, 0.0), rms_norm_reference(x, params["weight"], eps, 1.0)]
    for spec, ref in zip(candidates, refs, strict=True):
        if torch.allclose(got, ref, rtol=PROBE_TOL, atol=PROBE_TOL):
            return spec
    return "computes neither rms_norm (weight or 1 + weight) nor layer_norm over the last dimension"


def recognize(module: nn.Module) -> NormSpec | str | None:
    """A NormSpec for a norm the ops compute; a reason for a norm-like module left alone; None otherwise."""
    if isinstance(module, nn.LayerNorm):
        return _torch_norm(module, "layer_norm")
    if isinstance(module, nn.RMSNorm):
        return _torch_norm(module, "rms_norm")
    if type(module).__module__.startswith("torch.nn") or next(module.children(), None) is not None:
        return None
    eps_attr = next((a for a in EPS_ATTRS if hasattr(module, a)), None)
    weight = getattr(module, "weight", None)
    if eps_attr is None or not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    eps = getattr(module, eps_attr)
    if not _is_float(eps):
        return f"eps (.{eps_attr}) is a {type(eps).__name__}, not a float"
    bias = getattr(module, "bias", None)
    bias = bias if isinstance(bias, torch.Tensor) else None
    return _dtype_reason(weight, bias) or _probe(module, float(eps), bias is not None)


def _takes(x: object, n: int, *params: torch.Tensor | None) -> bool:
    """Whether the op computes what the module would for this call (else the original forward runs)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in METAL_DTYPES or x.dim() == 0 or x.shape[-1] != n:
        return False
    return all(p is None or (p.dtype == x.dtype and p.device == x.device) for p in params)


def patched_forward(spec: NormSpec):
    """The forward that replaces a recognized norm's: weight, bias and eps are read from the module at
    each call (so training, .to() and edits to eps are seen); anything the op does not take (mixed
    dtypes under autocast, float64, extra arguments) runs the original forward."""

    def forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        weight = self.weight
        bias = getattr(self, "bias", None) if spec.kind == "layer_norm" else None
        bias = bias if isinstance(bias, torch.Tensor) else None
        eps = getattr(self, spec.eps_attr)
        n = weight.numel() if weight is not None else getattr(self, "normalized_shape", (None,))[-1]
        if args or kwargs or not _takes(x, n, weight, bias):
            return original_forward(self)(x, *args, **kwargs)
        if eps is None:  # nn.RMSNorm(eps=None): the input dtype's machine epsilon, as F.rms_norm
            eps = torch.finfo(x.dtype).eps
        if spec.kind == "rms_norm":
            return torch.ops.mpsk.rms_norm(x, weight, eps, spec.weight_offset)
        return torch.ops.mpsk.layer_norm(x, weight, bias, eps)

    return forward
