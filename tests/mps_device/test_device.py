"""The emulated mps device itself: what `device="mps"` means in the CPU build once it is installed."""

from __future__ import annotations

import os

import pytest
import torch

import mps_inductor_ext as mpsk
from mps_inductor_ext import emulated_mps
from mps_inductor_ext.emulated_mps import count_launches, install, launches


def test_torch_sees_an_mps_device():
    assert torch.backends.mps.is_available() and torch.backends.mps.is_built()
    assert torch.mps.is_available() and torch.mps.device_count() == 1
    mac = emulated_mps.mac()
    assert torch.backends.mps.get_core_count() == emulated_mps.MACS[mac] == 8  # Apple M1, 8-core GPU
    assert mac in torch.backends.mps.get_name() and "emulated" in torch.backends.mps.get_name()
    assert torch.backends.mps.is_macos_or_newer(15, 0) and not torch.backends.mps.is_macos_or_newer(15, 1)
    # libtorch's own view: its MPS hooks, the accelerator API and the device guard.
    assert emulated_mps.hooks_active()
    assert torch.accelerator.current_accelerator().type == "mps"
    # Inductor picks its GPU helpers (device interface, C++ wrapper driver header) by this.
    assert torch._inductor.utils.get_gpu_type() == "mps"
    with torch.device("mps"):
        assert torch.empty(1).device == torch.device("mps", 0)
    torch.mps.synchronize()


def test_eager_ops_run_the_cpu_kernels_on_host_memory():
    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    x, y = a.to("mps"), b.to("mps")
    assert x.device.type == "mps" and x.untyped_storage().device.type == "mps"
    out = torch.softmax(x @ y, -1).sum(0)
    assert out.device.type == "mps"
    assert torch.equal(out.cpu(), torch.softmax(a @ b, -1).sum(0))


def test_views_share_the_device_storage():
    x = torch.arange(12.0, device="mps").reshape(3, 4)
    row = x[1]
    row.mul_(0)  # through a view: the base sees it
    assert x.cpu()[1].eq(0).all() and x.cpu()[0].eq(torch.arange(4.0)).all()
    t = x.t()
    assert t.data_ptr() == x.data_ptr() and not t.is_contiguous()
    c = t.contiguous()
    assert c.data_ptr() != x.data_ptr() and torch.equal(c.cpu(), x.cpu().t())
    assert x.add_(1) is x  # an in-place op hands back the tensor it changed


def test_out_arguments_resized_by_the_kernel_keep_their_device():
    a = torch.arange(6.0, device="mps")
    out = torch.empty(0, device="mps")
    torch.add(a, a, out=out)
    assert out.device.type == "mps" and out.shape == (6,)
    assert torch.equal(out.cpu(), torch.arange(6.0) * 2)


def test_copies_between_devices():
    host = torch.arange(8, dtype=torch.float16).reshape(2, 4)
    dev = host.to("mps")
    assert dev.dtype == torch.float16 and torch.equal(dev.cpu(), host)
    dst = torch.zeros(4, 2, device="mps")
    dst.copy_(dev.t())  # mps -> mps, strided, with a dtype change
    assert torch.equal(dst.cpu(), host.t().float())
    back = torch.empty(4, 2)
    back.copy_(dst)
    assert torch.equal(back, host.t().float())


def test_random_numbers_come_from_the_cpu_generator():
    torch.manual_seed(3)
    on_mps = torch.randn(4, device="mps")
    torch.manual_seed(3)
    assert torch.equal(on_mps.cpu(), torch.randn(4))
    torch.mps.manual_seed(5)  # the mps generator is the CPU's
    first = torch.rand(3, device="mps").cpu()
    torch.manual_seed(5)
    assert torch.equal(first, torch.rand(3))


SCALE = """
#include <metal_stdlib>
using namespace metal;
kernel void scale(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                  constant float& a [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  out[i] = a * x[i];
}
"""


def test_compile_shader_runs_on_the_emulator_with_mps_argument_rules():
    lib = torch.mps.compile_shader(SCALE)
    x = torch.arange(6.0, device="mps")
    out = torch.full((6,), float("nan"), device="mps")
    with count_launches() as n:
        lib.scale(out, x, 2.5)
    assert torch.equal(out.cpu(), torch.arange(6.0) * 2.5)
    assert (n.inductor_kernels, n.mpsk_kernels, n.aten_calls) == (1, 0, 0)
    # A 0-dim CPU tensor binds as its value; a float64 one is downcast to float, as torch's encoder does.
    lib.scale(out, x, torch.tensor(0.5, dtype=torch.float64))
    assert torch.equal(out.cpu(), torch.arange(6.0) * 0.5)
    with pytest.raises(RuntimeError, match="Passed CPU tensor to MPS op"):
        lib.scale(out, torch.arange(6.0), 1.0)
    with pytest.raises(SyntaxError):
        torch.mps.compile_shader("kernel void broken(")


def test_compile_shader_includes_no_host_file():
    """torch's own compile_shader inlines any file a path names before the source reaches the
    emulator; on the emulated device the include check comes first, and the error quotes nothing."""
    with pytest.raises(SyntaxError, match="'#include' of '/etc/hostname'") as err:
        torch.mps.compile_shader('#include "/etc/hostname"\n' + SCALE)
    if os.path.isfile("/etc/hostname"):
        with open("/etc/hostname") as f:
            name = f.read().strip()
        assert len(name) < 6 or name not in str(err.value)


def test_inductor_compiles_for_mps_and_its_metal_runs():
    def f(x, y):
        return torch.relu(x @ y) * 2 + 1

    torch.manual_seed(0)
    a, b = torch.randn(16, 32), torch.randn(32, 8)
    compiled = torch.compile(f, backend="inductor")
    compiled(a.to("mps"), b.to("mps"))
    x, y = a.to("mps"), b.to("mps")
    with count_launches() as n:
        out = compiled(x, y)
    torch.testing.assert_close(out.cpu(), f(a, b))
    # The matmul is an extern ATen call; relu, * and + fuse into one generated Metal kernel.
    assert n.inductor_kernels == 1 and n.mpsk_kernels == 0 and dict(n.aten) == {"aten::mm.out": 1}, n.summary()


def test_mpsk_ops_take_the_mps_shader_backend():
    torch.manual_seed(0)
    x, w = torch.randn(4, 64), torch.randn(64)
    with count_launches() as n:
        got = torch.ops.mpsk.rms_norm(x.to("mps"), w.to("mps"), 1e-6)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-5)
    assert n.mpsk_kernels >= 1 and n.inductor_kernels == 0, n.summary()
    assert mpsk.shaders.ShaderLibrary(SCALE, backend="auto").backend == "mps"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="mac must be one of"):
        mpsk.emulate_mps_device(mac="M9")
    with pytest.raises(ValueError, match="macos must be one of"):
        mpsk.emulate_mps_device(macos=(13, 0))
    with pytest.raises(RuntimeError, match="already installed as an Apple M1"):
        mpsk.emulate_mps_device(mac="M3 Max")
    mpsk.emulate_mps_device()  # the same settings again: nothing to do


def test_count_launches_needs_the_device(monkeypatch):
    monkeypatch.setattr(install, "_installed", {})
    with pytest.raises(RuntimeError, match="needs the emulated mps device"), launches.count_launches():
        pass
