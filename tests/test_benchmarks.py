"""The benchmark scripts run end to end (tiny settings) and say emulator times are not GPU times."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run(script, *args, tmp_path):
    env = {**os.environ, "MPSK_CACHE_DIR": str(tmp_path / "cache" / "emulator")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_emulator_throughput(tmp_path):
    out = run("emulator_throughput.py", "--repeats", "1", "--rows", "4", "--cols", "256", tmp_path=tmp_path)
    assert "not GPU times" in out
    assert out.count("row_sum_squares_float") == 3


@pytest.mark.slow
def test_ops_vs_native_writes_csv(tmp_path):
    target = tmp_path / "ops.csv"
    out = run("ops_vs_native.py", "--repeats", "1", "--warmup", "0", "--csv", str(target), tmp_path=tmp_path)
    assert "not GPU times" in out
    rows = list(csv.DictReader(target.open()))
    assert {r["op"] for r in rows} == {
        "rms_norm", "layer_norm", "softmax", "rope", "attention prefill", "attention decode"
    }
    assert all(float(r["mpsk_ms"]) > 0 and float(r["native_ms"]) > 0 for r in rows)
    assert not (tmp_path / "cache" / "tuning.json").exists()  # emulator sweeps are not recorded


@pytest.mark.slow
def test_compile_time_ratio(tmp_path):
    import re

    from mps_inductor_ext.models import TinyLlamaConfig

    out = run("compile_time.py", "--runs", "1", "--models", "tiny_llama", tmp_path=tmp_path)
    n = TinyLlamaConfig().num_layers
    mpsk_row = next(line for line in out.splitlines() if line.startswith("tiny_llama  mpsk"))
    assert mpsk_row.endswith(f"attention {n}, rms_norm {2 * n + 1}, rope {2 * n}")  # the patterns fired
    ratio = re.search(r"ratio mpsk/inductor compile time, tiny_llama: ([\d.]+) \((meets|misses)", out)
    assert ratio and float(ratio.group(1)) > 0
    assert "not GPU times" in out
