"""An AOTInductor package exported on the emulated mps device: the C++ program a Mac would load.

Its generated C++ launches Inductor's Metal kernels and the mpsk kernels through the AOTI MPS shim
and calls ATen fallbacks through c_shim_mps.h; here both are the emulated device's. The package is
loaded in a fresh process (no model code) and must match eager on the CPU at two sequence lengths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import MODEL_TOLERANCE

import mps_inductor_ext as mpsk
from mps_inductor_ext.models import TinyLlama

LENGTHS = (9, 5)
TOL = MODEL_TOLERANCE  # the demo's model tolerance: a dozen float32 ops, each within 1e-5

RUN = textwrap.dedent("""
    import json, sys, torch
    import mps_inductor_ext as mpsk
    package, data = sys.argv[1], torch.load(sys.argv[2])
    model = mpsk.aoti_load_package(package)
    report = []
    for ids, expected in data:
        with mpsk.count_launches() as n:
            out = model(ids.to("mps"))
        report.append(dict(device=out.device.type, error=(out.cpu() - expected).abs().max().item(),
                           inductor=n.inductor_kernels, mpsk=n.mpsk_kernels, aten=dict(n.aten)))
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aoti_mps")
    torch.manual_seed(0)
    model = TinyLlama().eval()
    data = []
    for i, n in enumerate(LENGTHS):
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            data.append((ids, model(ids)))
    torch.save(data, tmp / "data.pt")
    model.to("mps")
    mpsk.reset_counters()
    seq = torch.export.Dim("seq", min=2, max=64)
    path = mpsk.aoti_compile_and_package(model, (data[0][0].to("mps"),), tmp / "tiny_llama_mps.pt2",
                                         dynamic_shapes=({1: seq},))
    return path, tmp / "data.pt", dict(mpsk.counters), model.expected_replacements()


def run_fresh(package, data, emulate: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPSK_EMULATE_MPS": "1" if emulate else "0"}
    return subprocess.run([sys.executable, "-c", RUN, str(package), str(data)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


@pytest.mark.slow
def test_package_runs_in_a_fresh_process_and_matches_eager(package):
    path, data, counts, expected = package
    assert counts == expected
    proc = run_fresh(path, data, emulate=True)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report) == len(LENGTHS)
    for r in report:
        assert r["device"] == "mps" and r["error"] < TOL, r
        # Each replaced op is one mpsk launch; Inductor's own kernels do the rest; the replaced
        # attention left no ATen attention behind (a dead SDPA node would run as an extern call).
        assert r["mpsk"] == sum(expected.values()) and r["inductor"] > 0, r
        assert not [op for op in r["aten"] if "attention" in op], r
        assert r["aten"]["aten::mm.out"] == 7 * 2 + 1, r  # 7 linear layers per layer, and the LM head


@pytest.mark.slow
def test_package_for_mps_needs_the_device_here(package):
    path, data, _, _ = package
    proc = run_fresh(path, data, emulate=False)
    assert proc.returncode != 0
    assert "was compiled for the mps device" in proc.stderr and "emulate_mps_device()" in proc.stderr
