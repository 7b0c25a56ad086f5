"""Runs tests/mps_device, the tests on the emulated mps device, in a process of their own.

Installing the device changes the whole process (torch.backends.mps.is_available() turns True, so the
shader runtime's "auto" backend becomes "mps"), so they cannot share this one. Their own report,
every failure with its traceback, is printed here when they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mps_inductor_ext as mpsk

SUITE = Path(__file__).parent / "mps_device"


def test_emulated_mps_device_suite():
    env = {**os.environ, "MPSK_EMULATE_MPS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUITE)],
        capture_output=True, text=True, env=env, cwd=SUITE.parent.parent, check=False,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    print(f"tests/mps_device: {summary}")
    assert proc.returncode == 0, f"tests/mps_device failed:\n{proc.stdout[-20000:]}\n{proc.stderr[-5000:]}"
    assert " passed" in summary and "skipped" not in summary, summary


def test_refuses_a_torch_with_its_own_mps(monkeypatch):
    # Checked before anything is built or loaded, so this process stays without the device.
    monkeypatch.setattr(torch._C, "_has_mps", True)
    with pytest.raises(RuntimeError, match="built with its own MPS backend"):
        mpsk.emulate_mps_device()
    assert not mpsk.emulated_mps.installed()


def test_count_launches_needs_the_device():
    with pytest.raises(RuntimeError, match="needs the emulated mps device"), mpsk.count_launches():
        pass


def test_installing_after_libtorch_read_its_hooks_warns():
    late = ("import warnings, torch\ntorch.backends.mps.is_available()\nimport mps_inductor_ext as mpsk\n"
            "with warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
            "    mpsk.emulate_mps_device()\nprint(mpsk.emulated_mps.hooks_active(), [str(x.message) for x in w])")
    proc = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, check=False,
                          env={**os.environ, "MPSK_EMULATE_MPS": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("False") and "had already read its MPS hooks" in proc.stdout
