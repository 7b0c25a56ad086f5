"""The emulated device's c_shim_mps (mps_inductor_ext.emulated_mps.c_shim): the `aoti_torch_mps_*` ATen
fallbacks an AOTInductor model for `mps` calls, which libtorch defines only on macOS."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest
import torch

from mps_inductor_ext.aoti import emulated_shim
from mps_inductor_ext.emulated_mps import c_shim, count_launches

HEADER = (Path(torch.__file__).parent / "include" / "torch" / "csrc" / "inductor" / "aoti_torch" / "generated"
          / "c_shim_mps.h")
P = ctypes.c_void_p


def header_functions() -> set[str]:
    # Every declaration, including those under `#if TORCH_FEATURE_VERSION >= ...`.
    return set(re.findall(r"\bAOTITorchError\s+(aoti_torch_mps_\w+)\s*\(", HEADER.read_text()))


def exported_functions(path: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    return {parts[2] for parts in map(str.split, out.splitlines())
            if len(parts) == 3 and parts[1] == "T" and parts[2].startswith("aoti_torch_mps_")}


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    return c_shim.load()


def fn(lib: ctypes.CDLL, name: str, *argtypes) -> ctypes._CFuncPtr:
    f = getattr(lib, name)
    f.argtypes, f.restype = list(argtypes), ctypes.c_int32
    return f


def take(handle: int) -> torch.Tensor:
    """The tensor of a handle the shim returned (a new reference), releasing the handle."""
    t = emulated_shim.borrow_tensor(handle)
    assert emulated_shim._libtorch().aoti_torch_delete_tensor_object(handle) == 0
    return t


def test_defines_exactly_the_functions_the_header_declares(lib):
    declared = header_functions()
    assert len(declared) > 100 and "aoti_torch_mps_mm_out" in declared
    assert exported_functions(c_shim.build()) == declared
    # Loaded RTLD_GLOBAL: a model library loaded later finds them in the global scope.
    assert all(hasattr(ctypes.CDLL(None), name) for name in declared)
    assert c_shim.load() is lib


def test_source_refuses_a_header_it_does_not_match(monkeypatch):
    monkeypatch.setattr(c_shim, "declared_names", lambda: header_functions() | {"aoti_torch_mps_not_an_op"})
    with pytest.raises(RuntimeError, match="declared but not defined.*aoti_torch_mps_not_an_op"):
        c_shim.source.__wrapped__()


def test_load_refuses_without_the_emulated_device(monkeypatch):
    monkeypatch.setattr(c_shim, "_loaded", None)
    monkeypatch.setattr(c_shim, "installed", lambda: False)
    with pytest.raises(RuntimeError, match="needs the emulated mps device"):
        c_shim.load()


def test_mm_out_runs_on_the_emulated_device(lib):
    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    x, y, out = a.to("mps"), b.to("mps"), torch.empty(5, 3, device="mps")
    mm_out = fn(lib, "aoti_torch_mps_mm_out", P, P, P)
    with count_launches() as n, emulated_shim.tensor_handles(out, x, y) as (h_out, h_x, h_y):
        assert mm_out(h_out, h_x, h_y) == 0, c_shim.last_error()
    assert n.aten["aten::mm.out"] == 1  # through the dispatcher to the device's MPS kernel
    assert out.device.type == "mps"
    assert torch.equal(out.cpu(), a @ b)


def test_scalar_arguments_addmm_out(lib):
    torch.manual_seed(1)
    bias, a, b = torch.randn(4, 3), torch.randn(4, 6), torch.randn(6, 3)
    out = torch.empty(4, 3, device="mps")
    addmm_out = fn(lib, "aoti_torch_mps_addmm_out", P, P, P, P, ctypes.c_double, ctypes.c_double)
    with emulated_shim.tensor_handles(out, bias.to("mps"), a.to("mps"), b.to("mps")) as handles:
        assert addmm_out(*handles, 0.5, -2.0) == 0, c_shim.last_error()
    assert torch.equal(out.cpu(), torch.addmm(bias, a, b, beta=0.5, alpha=-2.0))


def test_list_optional_and_returned_tensors_fused_rms_norm(lib):
    torch.manual_seed(2)
    x, w = torch.randn(3, 4, 8), torch.randn(4, 8)
    shape = (ctypes.c_int64 * 2)(4, 8)
    eps = ctypes.c_double(1e-3)
    rms_norm = fn(lib, "aoti_torch_mps__fused_rms_norm", P, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64,
                  ctypes.POINTER(P), ctypes.POINTER(ctypes.c_double), ctypes.POINTER(P), ctypes.POINTER(P))
    expected = torch.ops.aten._fused_rms_norm(x, [4, 8], w, 1e-3)
    expected_unweighted = torch.ops.aten._fused_rms_norm(x, [4, 8], None, None)
    with emulated_shim.tensor_handles(x.to("mps"), w.to("mps")) as (h_x, h_w):
        ret0, ret1 = P(), P()
        assert rms_norm(h_x, shape, 2, ctypes.byref(P(h_w)), ctypes.byref(eps), ctypes.byref(ret0),
                        ctypes.byref(ret1)) == 0, c_shim.last_error()
        got = take(ret0.value), take(ret1.value)
        # Both optionals absent (NULL).
        assert rms_norm(h_x, shape, 2, None, None, ctypes.byref(ret0), ctypes.byref(ret1)) == 0, c_shim.last_error()
        got_unweighted = take(ret0.value), take(ret1.value)
    for results, reference in ((got, expected), (got_unweighted, expected_unweighted)):
        assert all(t.device.type == "mps" for t in results)
        torch.testing.assert_close(results[0].cpu(), reference[0])
        torch.testing.assert_close(results[1].cpu(), reference[1])


def test_method_only_op_view_dtype(lib):
    # view.dtype has no at:: function; it is called through at::_ops::view_dtype::call.
    x = torch.arange(6, dtype=torch.float32, device="mps")
    view_dtype = fn(lib, "aoti_torch_mps_view_dtype", P, ctypes.c_int32, ctypes.POINTER(P))
    ret0 = P()
    with emulated_shim.tensor_handles(x) as (h_x,):
        assert view_dtype(h_x, 3, ctypes.byref(ret0)) == 0, c_shim.last_error()  # 3: ScalarType::Int
    v = take(ret0.value)
    assert v.dtype == torch.int32 and v.device.type == "mps" and v.data_ptr() == x.data_ptr()
    assert torch.equal(v.cpu(), x.cpu().view(torch.int32))


def test_a_failing_call_returns_an_error_code(lib):
    x, y = torch.ones(2, 3, device="mps"), torch.ones(4, 5, device="mps")
    out = torch.empty(2, 5, device="mps")
    mm_out = fn(lib, "aoti_torch_mps_mm_out", P, P, P)
    with emulated_shim.tensor_handles(out, x, y) as handles:
        assert mm_out(*handles) != 0
    assert "cannot be multiplied" in c_shim.last_error()
    assert torch.equal(out.cpu(), torch.empty(2, 5).copy_(out.cpu()))  # out is still usable
