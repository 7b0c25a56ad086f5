"""Low-bit weights: `quantize(model)` swaps `nn.Linear` layers for `QuantizedLinear`.

Small-batch decoding reads every weight once per token, so its speed is the bytes of the weights:
4-bit weights are a quarter of fp16's. The scheme is affine per group of `group_size` consecutive
weights along the input dimension (one row of the weight, K = in_features):

    w[n, k] = scales[n, k // G] * q[n, k] + biases[n, k // G]      q in [0, 2**bits - 1]

Packing layout (`w_packed`, int32, shape (N, K * bits / 32)): word i of row n holds the
32 / bits values q[n, i * 32/bits + j] for j = 0, 1, ..., value j in bits [bits * j, bits * (j + 1)),
lowest bits first. The words are stored as int32 (PyTorch's shifts and masks serve them; bit 31 is
a sign bit to PyTorch and an ordinary bit to the kernels, which read the buffer as uint). Byte
order is little-endian, as on every Apple GPU and x86-64: read as bytes, a 4-bit row is two values
per byte, low nibble first. `scales` and `biases` have shape (N, K / G) and the layer's dtype.

`QuantizedLinear.forward` is plain PyTorch (unpack, dequantize, `F.linear`), so a quantized model
runs on any device, exports, and round-trips through `state_dict`; under `backend="mpsk"` that
subgraph becomes one `torch.ops.mpsk.quantized_linear` call (patterns/quantized_linear.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_format(bits: object, group_size: object) -> None:
    """A clear error for a width or group size the format (and the kernels) do not take."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")


def quantize_weight(weight: torch.Tensor, group_size: int = 64, bits: int = 4
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_packed, scales, biases) of a (N, K) weight: each group's minimum is its bias and its range
    spread over the 2**bits levels; q is rounded against the scale and bias as stored (rounded to
    the weight's dtype), so dequantizing adds no second rounding error."""
    check_format(bits, group_size)
    if weight.dim() != 2:
        raise ValueError(f"the weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if weight.dtype not in DTYPES:
        raise TypeError(f"the weight is {weight.dtype}; float32, float16 and bfloat16 weights can be quantized")
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
    levels = 2**bits - 1
    groups = weight.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = groups.amin(-1), groups.amax(-1)
    scales = ((hi - lo) / levels).to(weight.dtype)
    biases = lo.to(weight.dtype)
    step = scales.float().unsqueeze(-1)
    step = torch.where(step > 0, step, torch.ones_like(step))  # a constant group: q = 0, w = bias
    q = ((groups - biases.float().unsqueeze(-1)) / step).round().clamp(0, levels).to(torch.int64)
    return pack(q.reshape(n, k), bits), scales, biases


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, K) integers in [0, 2**bits) -> (N, K * bits / 32) int32 words, value j of a word at bits
    [bits * j, bits * (j + 1))."""
    n, k = q.shape
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, device=q.device)
    words = (q.to(torch.int64).reshape(n, k // per_word, per_word) << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the uint32 bit pattern


def unpack(w_packed: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, W) int32 words -> (N, W * 32 / bits) int32 values in [0, 2**bits)."""
    n, k = w_packed.shape[0], w_packed.shape[1] * (32 // bits)
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=w_packed.device)
    return ((w_packed.unsqueeze(-1) >> shifts) & (2**bits - 1)).reshape(n, k)


def dequantize(w_packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int,
               bits: int) -> torch.Tensor:
    """The (N, K) weight in the scales' dtype. The `backend="mpsk"` pattern matches exactly these
    operations (unpack's included), so a change here is a change to patterns/quantized_linear.py."""
    n, k = w_packed.shape[0], w_packed.shape[1] * (32 // bits)
    q = unpack(w_packed, bits).reshape(n, k // group_size, group_size).to(scales.dtype)
    w = q * scales.unsqueeze(-1) + biases.unsqueeze(-1)
    return w.reshape(n, k)


class QuantizedLinear(nn.Module):
    """`nn.Linear` with `bits`-bit weights in groups of `group_size` (see the module docstring for
    the layout). Its buffers (`w_packed`, `scales`, `biases`, `bias`) are frozen: the layer is for
    inference; gradients flow to its input."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 64,
                 bits: int = 4, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        check_format(bits, group_size)
        if in_features % group_size:
            raise ValueError(f"QuantizedLinear: in_features {in_features} is not a multiple of group_size {group_size}")
        if dtype not in DTYPES:
            raise TypeError(f"QuantizedLinear: dtype must be float32, float16 or bfloat16, got {dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.bits = group_size, bits
        groups = in_features // group_size
        self.register_buffer("w_packed", torch.zeros(out_features, in_features * bits // 32, dtype=torch.int32,
                                                     device=device))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("biases", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64, bits: int = 4) -> QuantizedLinear:
        """The layer quantized (on the linear's device, in its dtype)."""
        if isinstance(linear, QuantizedLinear):
            raise TypeError("this layer is already a QuantizedLinear")
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"only nn.Linear layers can be quantized, got {type(linear).__name__}")
        weight = linear.weight
        if weight.dtype not in DTYPES:
            raise TypeError(f"the layer's weight is {weight.dtype}; float32, float16 and bfloat16 can be quantized")
        if linear.in_features % group_size:
            raise ValueError(f"in_features {linear.in_features} is not a multiple of group_size {group_size}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, bits,
                    weight.dtype, weight.device)
        w_packed, scales, biases = quantize_weight(weight, group_size, bits)
        layer.w_packed.copy_(w_packed)
        layer.scales.copy_(scales)
        layer.biases.copy_(biases)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The (out_features, in_features) weight the layer computes with."""
        return dequantize(self.w_packed, self.scales, self.biases, self.group_size, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear: x has {x.shape[-1]} features, the layer takes {self.in_features}")
        if x.dtype != self.scales.dtype:
            raise TypeError(f"QuantizedLinear: x is {x.dtype} but the layer was quantized in {self.scales.dtype}")
        w = dequantize(self.w_packed, self.scales, self.biases, self.group_size, self.bits)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, bits={self.bits}")


Selection = Iterable[str] | Callable[[str, nn.Module], bool] | None


def quantize(model: nn.Module, bits: int = 4, group_size: int = 64, modules: Selection = None) -> nn.Module:
    """Replaces `nn.Linear` layers of `model` by `QuantizedLinear` in place, and returns the model
    (a bare `nn.Linear` is returned as its `QuantizedLinear`).

    `modules`: None for every `nn.Linear`; a list of qualified names (`"layers.0.mlp.up_proj"`);
    or a predicate `(name, module) -> bool` over the linear layers. Errors name the layer: a
    width or group size the format lacks, in_features not a multiple of the group size, a weight
    dtype other than float32/16 or bfloat16, a layer (or a model, when `modules` is None) that is
    already quantized, a name that is not a linear layer.
    """
    check_format(bits, group_size)
    if isinstance(model, QuantizedLinear):
        raise TypeError("quantize: the model is already a QuantizedLinear")
    if isinstance(model, nn.Linear):
        return _quantized(model, "the model", group_size, bits)
    chosen = _select(model, modules)
    for name in chosen:  # check every layer before replacing any
        _check_layer(model.get_submodule(name), name, group_size)
    for name in chosen:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, _quantized(model.get_submodule(name), name, group_size, bits))
    return model


def _select(model: nn.Module, modules: Selection) -> list[str]:
    named = dict(model.named_modules(remove_duplicate=False))
    if modules is None:
        done = [n for n, m in named.items() if isinstance(m, QuantizedLinear)]
        if done:
            raise TypeError(f"quantize: the model is already quantized ({', '.join(done[:3])}"
                            f"{', ...' if len(done) > 3 else ''}); pass modules= to quantize other layers")
        return [n for n, m in named.items() if isinstance(m, nn.Linear)]
    if callable(modules):
        return [n for n, m in named.items() if isinstance(m, nn.Linear) and modules(n, m)]
    if isinstance(modules, str):
        raise TypeError("quantize: modules must be a list of names, not one string")
    names = list(modules)
    for name in names:
        if name not in named or not name:
            raise ValueError(f"quantize: the model has no submodule {name!r}")
        if isinstance(named[name], QuantizedLinear):
            raise TypeError(f"quantize: {name} is already quantized")
        if not isinstance(named[name], nn.Linear):
            raise TypeError(f"quantize: {name} is a {type(named[name]).__name__}, not an nn.Linear")
    return names


def _check_layer(layer: nn.Module, name: str, group_size: int) -> None:
    weight = layer.weight
    if weight.dtype not in DTYPES:
        raise TypeError(f"quantize: {name}'s weight is {weight.dtype}; float32, float16 and bfloat16 can be quantized")
    if layer.in_features % group_size:
        raise ValueError(f"quantize: {name} has in_features {layer.in_features}, not a multiple of "
                         f"group_size {group_size}")


def _quantized(layer: nn.Linear, name: str, group_size: int, bits: int) -> QuantizedLinear:
    _check_layer(layer, name, group_size)
    return QuantizedLinear.from_linear(layer, group_size, bits)
