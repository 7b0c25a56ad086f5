"""The mpsk backend: how torch.compile finds it, what it accepts, what it refuses."""

import subprocess
import sys
import warnings

import pytest
import torch

import mps_inductor_ext as mpsk
from mps_inductor_ext import backend


def norm(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def test_found_through_the_entry_point_without_an_import():
    code = (
        "import torch\n"
        "assert 'mpsk' in torch._dynamo.list_backends()\n"
        "f = torch.compile(lambda x: x * 2 + 1, backend='mpsk')\n"
        "assert torch.equal(f(torch.ones(3)), torch.full((3,), 3.0))\n"
        "import sys; assert 'mps_inductor_ext' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_registered_by_import():
    assert "mpsk" in torch._dynamo.list_backends()


def test_inductor_options_and_mode_pass_through():
    torch._dynamo.reset()
    x = torch.randn(4, 8)
    with mpsk.config.patch(emulate_metal=True):
        got = torch.compile(norm, backend="mpsk", options={"epilogue_fusion": False})(x)
        torch._dynamo.reset()
        got2 = torch.compile(norm, backend="mpsk", mode="reduce-overhead")(x)
    torch.testing.assert_close(got, norm(x))
    torch.testing.assert_close(got2, norm(x))


@pytest.mark.parametrize(
    "options,match",
    [
        ({"no_such_inductor_option": 1}, "unknown Inductor option"),
        ({"pre_grad_custom_pass": None}, "cannot be overridden"),
    ],
)
def test_bad_options_fail_at_compile_time(options, match):
    torch._dynamo.reset()
    with pytest.raises(Exception, match=match):
        torch.compile(norm, backend="mpsk", options=options)(torch.randn(2, 4))


def test_bad_pattern_names_fail_at_compile_time():
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=True):
        mpsk.config.patterns["rmsnorm"] = False  # in place, past assignment's validation
        try:
            with pytest.raises(Exception, match="unknown pattern name"):
                torch.compile(norm, backend="mpsk")(torch.randn(2, 4))
        finally:
            del mpsk.config.patterns["rmsnorm"]
    with pytest.raises(ValueError, match="unknown pattern name"):
        mpsk.config.patterns = {"rmsnorm": True}


def test_warns_once_when_no_metal_kernel_can_run(monkeypatch):
    monkeypatch.setattr(backend, "_warned", False)
    torch._dynamo.reset()
    with mpsk.config.patch(emulate_metal=False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = torch.compile(norm, backend="mpsk")
        f(torch.randn(2, 4))
        torch._dynamo.reset()
        torch.compile(norm, backend="mpsk")(torch.randn(3, 4))
    hits = [w for w in caught if issubclass(w.category, mpsk.MetalKernelsNotUsedWarning)]
    assert len(hits) == 1
    assert "not in use" in str(hits[0].message)


def test_counters_accumulate_and_reset():
    mpsk.reset_counters()
    with mpsk.config.patch(emulate_metal=True):
        for n in (2, 3):
            torch._dynamo.reset()
            torch.compile(norm, backend="mpsk")(torch.randn(n, 8))
    assert mpsk.counters == {"rms_norm": 2}
    counters = mpsk.counters
    mpsk.reset_counters()
    assert counters is mpsk.counters and not counters


def test_pass_uuid_follows_the_settings():
    from mps_inductor_ext.passes import MpskGraphPass

    base = MpskGraphPass().uuid()
    assert MpskGraphPass().uuid() == base
    with mpsk.config.patch(emulate_metal=not mpsk.config.emulate_metal):
        assert MpskGraphPass().uuid() != base
    with mpsk.config.patch(patterns={"softmax": False}):
        assert MpskGraphPass().uuid() != base
