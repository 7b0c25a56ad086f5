"""`python -m mps_inductor_ext doctor`: every mpsk op's kernel against its reference, on the emulator."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mps_inductor_ext.__main__ import main
from mps_inductor_ext.diagnostics import doctor


def run_doctor(*args, code=None):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "mps_inductor_ext", "doctor", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def case_lines(out: str, op: str) -> list[str]:
    block = out.split(f"\n{op}: ", 1)[1].split("\n\n", 1)[0]
    return [ln.strip() for ln in block.splitlines()[1:]]


def test_norm_kernels_pass_on_the_emulator():
    proc = run_doctor("--backend", "cpu", "--op", "rms_norm", "--op", "layer_norm")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "shader backend: cpu (emulated" in out
    for op in ("rms_norm", "layer_norm"):
        lines = case_lines(out, op)
        assert len(lines) >= 15 and all(ln.startswith("PASS") and "max abs error" in ln for ln in lines)
        assert any("bfloat16" in ln for ln in lines) and any("float16" in ln for ln in lines)
    assert f"emulator compiler cache: {doctor.emulator_cache.cache_dir()}" in out
    assert "OK:" in out


def test_injected_fault_fails_only_that_op_with_nonzero_exit():
    proc = run_doctor("--backend", "cpu", "--op", "rms_norm", "--op", "layer_norm", "--inject-fault", "rms_norm")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert all(ln.startswith("FAIL") for ln in case_lines(proc.stdout, "rms_norm"))
    assert all(ln.startswith("PASS") for ln in case_lines(proc.stdout, "layer_norm"))
    assert "FAILED:" in proc.stdout


def test_every_registered_op_is_listed_and_an_unchecked_op_fails():
    """A new op under torch.ops.mpsk with no registered check must fail the doctor, not be skipped."""
    code = textwrap.dedent("""
        import sys, torch
        import mps_inductor_ext
        from mps_inductor_ext.__main__ import main

        @torch.library.custom_op("mpsk::doctor_selftest_unchecked", mutates_args=())
        def unchecked(x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        sys.exit(main(["doctor", "--backend", "cpu", "--op", "doctor_selftest_unchecked", "--op", "rms_norm"]))
    """)
    proc = run_doctor(code=code)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = case_lines(proc.stdout, "doctor_selftest_unchecked")
    assert line.startswith("FAIL") and "no check registered" in line
    assert "doctor_selftest_unchecked" in proc.stdout.split("ops under torch.ops.mpsk:", 1)[1].splitlines()[0]


def test_full_run_covers_every_op_and_exit_status_matches(tmp_path):
    proc = run_doctor("--backend", "cpu")
    listed = proc.stdout.split("ops under torch.ops.mpsk:", 1)[1].splitlines()[0]
    for op in doctor.registered_ops():
        assert op in listed and f"\n{op}: " in proc.stdout
    # Every kernel is right on the emulator: the run passes, and says so line by line.
    assert not any(ln.lstrip().startswith("FAIL") for ln in proc.stdout.splitlines()), proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_arguments(capsys):
    assert main(["doctor", "--op", "not_an_op"]) == 2
    assert "no op(s) ['not_an_op']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no op"):
        doctor.run("cpu", inject_fault="nope")
    with pytest.raises(ValueError, match="backend must be one of"):
        doctor.run("cuda")


def test_compare_catches_nan_shape_and_tolerance():
    ref = torch.ones(3, dtype=torch.float16)
    assert doctor.compare("op", "c", ref.clone(), ref, None).ok
    assert not doctor.compare("op", "c", torch.tensor([1, float("nan"), 1], dtype=torch.float16), ref, None).ok
    assert not doctor.compare("op", "c", torch.ones(4, dtype=torch.float16), ref, None).ok
    off = doctor.compare("op", "c", ref + 0.01, ref, None)
    assert not off.ok and off.max_error == pytest.approx(0.01, rel=0.1) and off.tol == 2e-3
    assert doctor.compare("op", "c", ref + 0.01, ref, 0.05).ok


def test_check_registry_validates():
    assert doctor.get_check("mpsk::rms_norm") is doctor.get_check("rms_norm") is not None
    with pytest.raises(ValueError, match="already registered"):
        doctor.register_check("rms_norm", list, list)
    with pytest.raises(TypeError, match="callable"):
        doctor.register_check("fresh_op", None, list)
    with pytest.raises(ValueError, match="op name"):
        doctor.register_check("", list, list)
