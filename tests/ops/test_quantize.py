"""quantize() and QuantizedLinear: the documented packing layout, the affine groups, the plain-PyTorch
forward, state_dict round trips and the input checks."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import dequantize_from_bytes
from torch import nn

import mps_inductor_ext as mpsk
from mps_inductor_ext.quantization import QuantizedLinear, pack, quantize_weight, unpack


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weights_from_bytes(layer: QuantizedLinear) -> torch.Tensor:
    return dequantize_from_bytes(layer.w_packed, layer.scales, layer.biases, layer.group_size, layer.bits)


@pytest.mark.parametrize("bits", [4, 8])
def test_layout_is_little_endian_low_bits_first(bits):
    levels = 2**bits
    q = torch.randint(0, levels, (3, 64), generator=gen(0))
    q[0, : 32 // bits] = levels - 1  # the top value in the word's top bits: a negative int32
    packed = pack(q, bits)
    assert packed.dtype == torch.int32 and packed.shape == (3, 64 * bits // 32)
    assert (packed[0, 0] < 0).item()
    raw = packed.view(torch.uint8).to(torch.int64)
    if bits == 4:
        assert torch.equal(raw, q[:, 0::2] | (q[:, 1::2] << 4))
    else:
        assert torch.equal(raw, q)
    assert torch.equal(unpack(packed, bits).to(torch.int64), q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_groups_are_affine_and_round_to_nearest(group_size, bits, dtype):
    w = torch.randn(6, 256, generator=gen(1)).to(dtype)
    w_packed, scales, biases = quantize_weight(w, group_size, bits)
    assert scales.shape == biases.shape == (6, 256 // group_size) and scales.dtype == dtype
    layer = QuantizedLinear(256, 6, bias=False, group_size=group_size, bits=bits, dtype=dtype)
    layer.w_packed.copy_(w_packed), layer.scales.copy_(scales), layer.biases.copy_(biases)
    got = weights_from_bytes(layer)
    # Each weight took the level nearest to it among bias + scale * q, q = 0 .. 2**bits - 1, as stored.
    levels = biases.double()[..., None] + scales.double()[..., None] * torch.arange(2**bits, dtype=torch.float64)
    groups = w.double().reshape(6, -1, group_size)
    nearest = (groups[..., None] - levels[:, :, None, :]).abs().min(-1).values.reshape(6, 256)
    assert ((got - w.double()).abs() <= nearest + 1e-6 * w.double().abs().max()).all()
    # The levels span the group: level 0 is its minimum, the top level its maximum (up to dtype rounding).
    torch.testing.assert_close(levels[..., 0], groups.amin(-1).to(dtype).double())
    torch.testing.assert_close(levels[..., -1].to(dtype), groups.amax(-1).to(dtype), rtol=0.02, atol=0.02)
    # Computed in dtype: q * scale and + bias each round, by at most an ulp of the group's magnitude.
    atol = 2 * torch.finfo(dtype).eps * w.double().abs().max().item() * 2
    torch.testing.assert_close(layer.dequantized_weight().double(), got, rtol=0, atol=atol)


def test_constant_group_is_exact():
    w = torch.full((2, 64), 0.25)
    layer = QuantizedLinear.from_linear(_linear(w), group_size=32)
    assert torch.equal(layer.scales, torch.zeros(2, 2)) and torch.equal(weights_from_bytes(layer).float(), w)


def _linear(w: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


@pytest.mark.parametrize("bits", [4, 8])
def test_forward_is_linear_with_the_dequantized_weight(bits):
    w, b = torch.randn(40, 128, generator=gen(2)), torch.randn(40, generator=gen(3))
    layer = QuantizedLinear.from_linear(_linear(w, b), group_size=64, bits=bits)
    x = torch.randn(2, 3, 128, generator=gen(4))
    want = x.double() @ weights_from_bytes(layer).T + b.double()
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.block = nn.Sequential(nn.Linear(96, 64, bias=False), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.norm = nn.LayerNorm(64)

    def forward(self, x):
        return self.head(self.norm(self.block(self.up(x))))


def test_quantize_replaces_every_linear_in_place():
    torch.manual_seed(0)
    net = Net()
    out = mpsk.quantize(net, bits=4, group_size=32)
    assert out is net
    kinds = {n: type(m) for n, m in net.named_modules()}
    assert kinds["up"] is kinds["block.0"] is kinds["head"] is QuantizedLinear
    assert net.up.group_size == 32 and net.up.bits == 4 and net.block[0].bias is None
    assert net(torch.randn(2, 64)).shape == (2, 10)


def test_quantize_chosen_modules_by_name_or_predicate():
    torch.manual_seed(0)
    net = mpsk.quantize(Net(), group_size=32, modules=["up", "block.0"])
    assert isinstance(net.up, QuantizedLinear) and isinstance(net.block[0], QuantizedLinear)
    assert type(net.head) is nn.Linear
    net = mpsk.quantize(Net(), group_size=32, modules=lambda name, m: m.out_features >= 64)
    assert isinstance(net.up, QuantizedLinear) and type(net.head) is nn.Linear
    layer = mpsk.quantize(nn.Linear(64, 8))
    assert isinstance(layer, QuantizedLinear)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    net = mpsk.quantize(Net(), group_size=32)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    torch.manual_seed(1)  # other weights: loading must overwrite all of them
    other = mpsk.quantize(Net(), group_size=32)
    x = torch.randn(3, 64)
    assert not torch.equal(other(x), net(x))
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other(x), net(x))
    assert set(net.state_dict()) >= {"up.w_packed", "up.scales", "up.biases", "up.bias", "block.0.w_packed"}
    assert "block.0.bias" not in net.state_dict()


def test_input_checks():
    with pytest.raises(ValueError, match="bits must be one of"):
        mpsk.quantize(Net(), bits=3)
    with pytest.raises(ValueError, match="group_size must be one of"):
        mpsk.quantize(Net(), group_size=48)
    with pytest.raises(ValueError, match="block.0 has in_features 96, not a multiple of group_size 64"):
        mpsk.quantize(Net())  # checked before anything is replaced:
    net = Net()
    with pytest.raises(ValueError):
        mpsk.quantize(net)
    assert type(net.up) is nn.Linear
    with pytest.raises(TypeError, match="float64"):
        mpsk.quantize(nn.Linear(64, 8, dtype=torch.float64))
    quantized = mpsk.quantize(Net(), group_size=32)
    with pytest.raises(TypeError, match="already quantized"):
        mpsk.quantize(quantized, group_size=32)
    with pytest.raises(TypeError, match="up is already quantized"):
        mpsk.quantize(quantized, group_size=32, modules=["up"])
    with pytest.raises(TypeError, match="already a QuantizedLinear"):
        mpsk.quantize(quantized.up)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        mpsk.quantize(Net(), modules=["nope"])
    with pytest.raises(TypeError, match="norm is a LayerNorm, not an nn.Linear"):
        mpsk.quantize(Net(), modules=["norm"])
    with pytest.raises(TypeError, match="x is torch.float16 but the layer was quantized in torch.float32"):
        quantized.up(torch.randn(2, 64).half())
    with pytest.raises(ValueError, match="x has 63 features, the layer takes 64"):
        quantized.up(torch.randn(2, 63))
